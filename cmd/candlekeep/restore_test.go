package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/backuptest"
	"github.com/candlekeep/candlekeep/services/writer"
)

// restoreRig is `candlekeep up` in-process with the simulator (its clock
// stopped at exchangeNow) and the tiers given.
type restoreRig struct {
	t       *testing.T
	sim     *sim.Sim
	dataDir string
	dbPath  string
	url     string
	ev      *events
	logs    *lockedBuffer
}

var (
	restoreFrom = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	restoreMid  = time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	restoreTo   = time.Date(2024, 4, 1, 0, 0, 0, 0, time.UTC)
	// The exchange's clock: the candle of 00:00 is still open, so a gap
	// audit finds nothing new to add to the truth.
	exchangeNow = restoreTo.Add(30 * time.Minute)
	restorePair = []string{"BTCUSDT", "ETHUSDT"}
)

func newRestoreRig(t *testing.T, bc backupConfig) *restoreRig {
	t.Helper()
	clock := testclock.New(exchangeNow)
	s, simURL := startSim(t, sim.Options{Now: clock.Now})
	r := &restoreRig{t: t, sim: s, dataDir: t.TempDir(), logs: logsOnFailure(t)}
	r.dbPath = filepath.Join(r.dataDir, databaseFile)
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = restorePair, []string{"1h"}
	wo := writer.DefaultOptions()
	// The damage is found within a moment, not minutes.
	wo.QuickCheckEvery, wo.CheckpointEvery = 200*time.Millisecond, 100*time.Millisecond
	bc.HotRetention, bc.WarmRetention, bc.ColdRetention = backup.DefaultHotRetention, backup.DefaultWarmRetention, backup.DefaultColdRetention
	bc.Schedule, bc.MinInterval = "off", time.Hour
	if bc.DrillSchedule == "" {
		bc.DrillSchedule = "off"
	}
	if bc.S3Class == "" {
		bc.S3Class = "STANDARD"
	}
	bc.resolve(r.dataDir)
	if err := bc.validate(); err != nil {
		t.Fatal(err)
	}
	cfg := upConfig{DataDir: r.dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo, Writer: wo, Backup: bc}
	r.url = startUpConfig(t, cfg, slog.New(slog.NewJSONHandler(r.logs, nil)))
	r.ev = watchEvents(t, connect(t, r.url))
	return r
}

// sync runs a sync of [from, to) and waits for it.
func (r *restoreRig) sync(from, to time.Time) {
	r.t.Helper()
	nc := connect(r.t, r.url)
	acc := requestSync(r.t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), to.Format(time.RFC3339)))
	var done candles.SyncCompleted
	r.ev.wait(r.t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	if done.PairsOK != 2 {
		r.t.Fatalf("sync.completed = %+v", done)
	}
}

// backfillAndBackUp fills [restoreFrom, restoreMid), waits for the backup
// that sync starts in every tier, then fills [restoreMid, restoreTo): the
// batches a restore must bring back from the stream. It returns the
// backup's watermark.
func (r *restoreRig) backfillAndBackUp(tiers int) uint64 {
	r.t.Helper()
	r.sync(restoreFrom, restoreMid)
	var wm uint64
	checkfor.Check(r.t, time.Minute, 20*time.Millisecond, func() error {
		got := map[string]bool{}
		for _, raw := range r.ev.of(candles.KindBackupCompleted, "") {
			var bc candles.BackupCompleted
			if json.Unmarshal(raw, &bc) == nil && bc.Verified {
				got[bc.Tier], wm = true, bc.Watermark
			}
		}
		if len(got) != tiers {
			return fmt.Errorf("backup.completed in %v, want %d tiers", got, tiers)
		}
		return nil
	})
	r.sync(restoreMid, restoreTo)
	return wm
}

func (r *restoreRig) truth() map[candles.Pair][]candles.Candle {
	return truth(r.sim, restorePair, "1h", restoreFrom, restoreTo)
}

// The first demonstration: the database destroyed under the
// running `candlekeep up` in three ways recovers by itself from the
// newest backup, and every candle acknowledged after the backup comes
// back from the CANDLES replay: the database ends equal to the exchange.
func TestUpRestoresItselfAfterDamage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		destroy func(t *testing.T, path string)
	}{
		{"deleted", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{"pages overwritten", func(t *testing.T, path string) {
			// The checkpoint CorruptCandles needs waits for a moment
			// without readers.
			checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
				_, err := storetest.CorruptCandles(path, 4)
				return err
			})
		}},
		{"truncated", func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRestoreRig(t, backupConfig{AutoRestore: true})
			backupWM := r.backfillAndBackUp(1)
			want := r.truth()
			assertSame(t, readDB(t, r.dbPath), want)
			st, err := readWatermark(r.dbPath)
			if err != nil {
				t.Fatal(err)
			}
			if st <= backupWM {
				t.Fatalf("watermark %d after the second sync, not past the backup's %d", st, backupWM)
			}

			tc.destroy(t, r.dbPath)
			var failed candles.IntegrityFailed
			r.ev.wait(t, candles.KindIntegrityFailed, "", time.Minute, &failed)
			var done candles.RestoreCompleted
			r.ev.wait(t, candles.KindRestoreCompleted, "", 2*time.Minute, &done)
			if done.Reason != backup.ReasonAuto || done.Tier != backup.TierHot || done.Watermark != backupWM ||
				done.ReplayedTo < st || done.BatchesReplayed < st-backupWM || done.RTOSeconds <= 0 ||
				!strings.Contains(done.Incident, failed.DetectedAt.Format(time.RFC3339Nano)) {
				t.Errorf("restore.completed = %+v, want auto from hot at %d, replayed to ≥ %d", done, backupWM, st)
			}
			if done.CandlesReplayed <= 0 {
				t.Errorf("restore.completed says %d candles came back from the replay, want the second sync's", done.CandlesReplayed)
			}
			// The damaged file (or what was left of it) is kept.
			aside, _ := filepath.Glob(r.dbPath + ".corrupt-*")
			if len(aside) == 0 {
				t.Error("nothing of the damaged database was kept aside")
			}
			if done.SyncRunID != "" {
				var sc candles.SyncCompleted
				r.ev.wait(t, candles.KindSyncCompleted, done.SyncRunID, 2*time.Minute, &sc)
			}
			assertSame(t, readDB(t, r.dbPath), want)
			t.Logf("%s: restored from %s, RTO %.2fs from the damage's detection, %d batches replayed",
				tc.name, done.Tier, done.RTOSeconds, done.BatchesReplayed)
			// Once per incident.
			if n := len(r.ev.of(candles.KindRestoreCompleted, "")); n != 1 {
				t.Errorf("%d restore.completed events, want 1", n)
			}
		})
	}
}

func readWatermark(path string) (uint64, error) {
	st, err := store.OpenReadOnly(context.Background(), path)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	return st.Watermark(context.Background(), candles.StreamCandles)
}

// The fallback: hot copies corrupted → the warm one is used (the hot one
// reported as skipped); hot and warm gone → the cold one (on a real
// S3-protocol server); nothing valid anywhere → exit 1 and the database
// left as it was.
func TestRestoreFallsBackThroughTiers(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "candlekeep-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "candlekeep-test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	s3srv := backuptest.StartS3(t, "candles")
	warmDir := t.TempDir()
	r := newRestoreRig(t, backupConfig{WarmDir: warmDir, S3URL: "s3://candles/prod", S3Endpoint: s3srv.URL})
	backupWM := r.backfillAndBackUp(3)
	want := r.truth()
	hotDir := filepath.Join(r.dataDir, "backups", "hot")

	restore := func(args ...string) (backup.RestoreReport, int, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"restore", "--nats-url", r.url, "--json"}, args...), &out, &errOut, noEnv)
		var rep backup.RestoreReport
		if code == 0 {
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("restore --json: %v\n%s", err, out.String())
			}
		}
		return rep, code, errOut.String()
	}

	// Hot: the copy's bytes damaged in the middle (its manifest intact).
	hotCopies, _ := filepath.Glob(filepath.Join(hotDir, "*.db.zst"))
	if len(hotCopies) != 1 {
		t.Fatalf("hot tier holds %v", hotCopies)
	}
	damage(t, hotCopies[0])
	rep, code, errOut := restore()
	if code != 0 || rep.Tier != backup.TierWarm || rep.Watermark != backupWM || len(rep.Skipped) != 1 || rep.Skipped[0].Tier != backup.TierHot ||
		!strings.Contains(rep.Skipped[0].Reason, "checksum mismatch") {
		t.Fatalf("restore with the hot copy damaged: exit %d %+v\n%s", code, rep, errOut)
	}
	checkfor.Check(t, time.Minute, 50*time.Millisecond, func() error {
		if n, w := rowCount(t, r.dbPath), count(want); n != w {
			return fmt.Errorf("%d of %d candles", n, w)
		}
		return nil
	})
	assertSame(t, readDB(t, r.dbPath), want)

	// A copy named by its path (a disk brought from elsewhere), and --at
	// before any copy: nothing to restore.
	warmCopies, _ := filepath.Glob(filepath.Join(warmDir, "*.db.zst"))
	if len(warmCopies) != 1 {
		t.Fatalf("warm tier holds %v", warmCopies)
	}
	rep, code, errOut = restore("--from", warmCopies[0])
	if code != 0 || rep.Tier != "path" || rep.Backup != filepath.Base(warmCopies[0]) || rep.Watermark != backupWM {
		t.Fatalf("restore --from %s: exit %d %+v\n%s", warmCopies[0], code, rep, errOut)
	}
	assertSame(t, readDB(t, r.dbPath), want)
	if _, code, errOut = restore("--at", "2020-01-01"); code != 1 || !strings.Contains(errOut, "no valid copy to restore") {
		t.Fatalf("restore --at before every copy: exit %d\n%s", code, errOut)
	}

	// Hot and warm gone: cold.
	for _, dir := range []string{hotDir, warmDir} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.db.zst*"))
		for _, f := range files {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep, code, errOut = restore()
	if code != 0 || rep.Tier != backup.TierCold || rep.Watermark != backupWM || rep.BatchesReplayed == 0 {
		t.Fatalf("restore with hot and warm gone: exit %d %+v\n%s", code, rep, errOut)
	}
	assertSame(t, readDB(t, r.dbPath), want)

	// Nothing valid: the cold copy tampered with (size kept, bytes changed).
	list, err := s3srv.Tier(t, "candles", "prod").List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cold := s3srv.Tier(t, "candles", "prod")
	for _, o := range list {
		if strings.HasSuffix(o.Name, ".db.zst") {
			rd, err := cold.Open(context.Background(), o.Name)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			buf.ReadFrom(rd)
			rd.Close()
			b := buf.Bytes()
			b[len(b)/2] ^= 0xff
			if err := cold.Put(context.Background(), o.Name, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := readDB(t, r.dbPath)
	aside, _ := filepath.Glob(r.dbPath + ".corrupt-*")
	_, code, errOut = restore()
	if code != 1 || !strings.Contains(errOut, "no valid copy to restore") || !strings.Contains(errOut, "left in place") ||
		!strings.Contains(errOut, "skipped cold") {
		t.Fatalf("restore with no valid copy: exit %d, stderr:\n%s", code, errOut)
	}
	assertSame(t, readDB(t, r.dbPath), before)
	if now, _ := filepath.Glob(r.dbPath + ".corrupt-*"); len(now) != len(aside) {
		t.Errorf("a restore that restored nothing moved the database aside: %v", now)
	}
	var failed candles.RestoreFailed
	r.ev.wait(t, candles.KindRestoreFailed, "", 10*time.Second, &failed)
}

// damage flips bytes in the middle of a copy, keeping its size.
func damage(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 2; i < len(b)/2+16 && i < len(b); i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A drill restores the newest copy of each tier into scratch, publishes
// drill.completed, and leaves production untouched.
func TestDrillLeavesProductionUntouched(t *testing.T) {
	warmDir := t.TempDir()
	r := newRestoreRig(t, backupConfig{WarmDir: warmDir})
	backupWM := r.backfillAndBackUp(2)
	before := readDB(t, r.dbPath)
	wmBefore, err := readWatermark(r.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"drill", "--nats-url", r.url, "--json"}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("drill: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	var rep candles.DrillCompleted
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || len(rep.Tiers) != 2 {
		t.Fatalf("drill = %+v", rep)
	}
	for _, dt := range rep.Tiers {
		// The copies predate the second sync: every pair is behind the live
		// database, none missing, and the replay would bring the rest.
		if !dt.OK || dt.Watermark != backupWM || dt.Candles == 0 || dt.LiveCandles != int64(count(before)) ||
			dt.PairsBehind != 2 || dt.PairsMissing != 0 {
			t.Errorf("drill tier %+v", dt)
		}
	}
	var ev candles.DrillCompleted
	r.ev.wait(t, candles.KindDrillCompleted, "", 10*time.Second, &ev)
	if !ev.OK || len(ev.Tiers) != 2 {
		t.Errorf("drill.completed = %+v", ev)
	}
	assertSame(t, readDB(t, r.dbPath), before)
	if wm, _ := readWatermark(r.dbPath); wm != wmBefore {
		t.Errorf("watermark moved from %d to %d", wmBefore, wm)
	}
	if aside, _ := filepath.Glob(r.dbPath + ".corrupt-*"); len(aside) != 0 {
		t.Errorf("the drill moved the database: %v", aside)
	}
	if left, _ := filepath.Glob(filepath.Join(r.dataDir, "backups", ".scratch", "drill-*")); len(left) != 0 {
		t.Errorf("the drill left %v", left)
	}
	if len(r.ev.of(candles.KindRestoreCompleted, "")) != 0 {
		t.Error("the drill published restore.completed")
	}
}

// --auto-restore=false only alerts: the incident is recorded as alerted
// and nothing is restored. An integrity.failed delivered again for an
// incident already handled (a restart, a redelivery) restores nothing more.
func TestAutoRestoreOnceAndOff(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprintf("auto-restore=%v", auto), func(t *testing.T) {
			r := newRestoreRig(t, backupConfig{AutoRestore: auto})
			r.backfillAndBackUp(1)
			if err := os.Remove(r.dbPath); err != nil {
				t.Fatal(err)
			}
			var failed candles.IntegrityFailed
			r.ev.wait(t, candles.KindIntegrityFailed, "", time.Minute, &failed)
			nc := connect(t, r.url)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			state := func(want string) {
				t.Helper()
				checkfor.Check(t, 2*time.Minute, 20*time.Millisecond, func() error {
					kv, err := js.KeyValue(ctx, backup.IncidentsBucket)
					if err != nil {
						return err
					}
					e, err := kv.Get(ctx, backup.IncidentKey(failed))
					if err != nil {
						return err
					}
					if string(e.Value()) != want {
						return fmt.Errorf("incident %s", e.Value())
					}
					return nil
				})
			}
			if !auto {
				state(backup.IncidentAlerted)
				if n := len(r.ev.of(candles.KindRestoreStarted, "")); n != 0 {
					t.Fatalf("%d restore.started with --auto-restore=false", n)
				}
				if aside, _ := filepath.Glob(r.dbPath + "*.corrupt-*"); len(aside) != 0 {
					t.Fatalf("files moved aside with --auto-restore=false: %v", aside)
				}
				return
			}
			state(backup.IncidentCompleted)
			// The same incident again: handled once the consumer has acked
			// it, and still one restore.
			again := failed
			if err := candles.PublishEvent(ctx, js, &again, "again", failed.DetectedAt); err != nil {
				t.Fatal(err)
			}
			stream, err := js.Stream(ctx, candles.StreamEvents)
			if err != nil {
				t.Fatal(err)
			}
			last := stream.CachedInfo().State.LastSeq
			if info, err := stream.Info(ctx); err == nil {
				last = info.State.LastSeq
			}
			checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
				c, err := js.Consumer(ctx, candles.StreamEvents, "backup-auto-restore")
				if err != nil {
					return err
				}
				info, err := c.Info(ctx)
				if err != nil {
					return err
				}
				if info.AckFloor.Stream < last && info.NumPending+uint64(info.NumAckPending) > 0 {
					return fmt.Errorf("auto-restore consumer acked to %d, pending %d/%d", info.AckFloor.Stream, info.NumPending, info.NumAckPending)
				}
				return nil
			})
			if n := len(r.ev.of(candles.KindRestoreStarted, "")); n != 1 {
				t.Errorf("%d restore.started for one incident delivered twice, want 1", n)
			}
			if !strings.Contains(r.logs.String(), "integrity.failed already handled") {
				t.Error("the second delivery was not reported as already handled")
			}
		})
	}
}

// The same through the real binary: bin/candlekeep up, the database file
// deleted under it, and it recovers by itself from its hot copy, with the
// batches written after the backup replayed from CANDLES.
func TestBinaryUpRestoresItselfAfterDelete(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	clock := testclock.New(exchangeNow)
	s, simURL := startSim(t, sim.Options{Now: clock.Now})
	nc, ev, dbPath := binaryUp(t, simURL, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h", "--catch-up=false",
		"--backup-schedule", "off", "--drill-schedule", "off")
	natsUntil(t, nc.ConnectedUrl(), "candlekeep-backup", "micro", "ls")
	syncRange := func(from, to time.Time) {
		t.Helper()
		acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), to.Format(time.RFC3339)))
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	}
	syncRange(restoreFrom, restoreMid)
	var bc candles.BackupCompleted
	ev.wait(t, candles.KindBackupCompleted, "", time.Minute, &bc)
	syncRange(restoreMid, restoreTo)
	want := truth(s, restorePair, "1h", restoreFrom, restoreTo)
	assertSame(t, readDB(t, dbPath), want)

	if err := os.Remove(dbPath); err != nil {
		t.Fatal(err)
	}
	var done candles.RestoreCompleted
	ev.wait(t, candles.KindRestoreCompleted, "", 2*time.Minute, &done)
	if done.Reason != backup.ReasonAuto || done.Watermark != bc.Watermark || done.BatchesReplayed == 0 || done.CandlesReplayed <= 0 {
		t.Errorf("restore.completed = %+v, want an automatic restore of the copy at %d with a replay", done, bc.Watermark)
	}
	if done.SyncRunID != "" {
		var sc candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, done.SyncRunID, 2*time.Minute, &sc)
	}
	assertSame(t, readDB(t, dbPath), want)
	t.Logf("restore from hot after the file was deleted: RTO %.2fs, %d batches replayed", done.RTOSeconds, done.BatchesReplayed)
}

// Split mode: `candlekeep backup` runs as its own service beside the
// writer (here the one inside `up`, which runs no backup service), and
// `candlekeep restore` goes through it and the writer's swap endpoint.
// CANDLES has lost most batches after the copy: the restore says so, and
// its gap-audit sync brings their candles back from the exchange.
func TestRestoreWithTheBackupServiceApart(t *testing.T) {
	clock := testclock.New(exchangeNow)
	s, simURL := startSim(t, sim.Options{Now: clock.Now})
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = restorePair, []string{"1h"}
	url := startUp(t, dataDir, fo)
	svcCtx, cancel := context.WithCancel(context.Background())
	ctx := context.Background()
	done := make(chan int, 1)
	var svcErr lockedBuffer
	go func() {
		done <- run(svcCtx, []string{"backup", "--nats-url", url, "--data-dir", dataDir, "--backup-schedule", "off",
			"--drill-schedule", "off", "--log-format", "json"}, io.Discard, &svcErr, noEnv)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("backup service exit %d:\n%s", code, svcErr.String())
		}
	})
	nc := connect(t, url)
	checkfor.Check(t, 20*time.Second, 50*time.Millisecond, func() error {
		_, err := nc.Request(candles.SubjectAPIBackupList, nil, time.Second)
		return err
	})
	ev := watchEvents(t, nc)
	syncRange := func(from, to time.Time) {
		t.Helper()
		acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), to.Format(time.RFC3339)))
		var sc candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &sc)
	}
	syncRange(restoreFrom, restoreMid)
	var bc candles.BackupCompleted
	ev.wait(t, candles.KindBackupCompleted, "", time.Minute, &bc)
	syncRange(restoreMid, restoreTo)
	want := truth(s, restorePair, "1h", restoreFrom, restoreTo)
	// CANDLES loses every batch but the last (as if its retention had been
	// cut below the guarantee): those cannot be replayed, and the
	// gap-audit sync after the restore fetches them again.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(info.State.LastSeq)); err != nil {
		t.Fatal(err)
	}

	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"restore", "--nats-url", url, "--json"}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("restore: exit %d\n%s%s\n%s", code, out.String(), errOut.String(), svcErr.String())
	}
	var rep backup.RestoreReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	lost := info.State.LastSeq - bc.Watermark - 1
	if rep.Backup != filepath.Base(bc.Location) || rep.Tier != backup.TierHot || rep.Watermark != bc.Watermark ||
		rep.BatchesNotInStream != lost || rep.RPOSeconds <= 0 || rep.SyncRunID == "" ||
		!strings.HasPrefix(rep.MovedAside, dbPath+".corrupt-") {
		t.Fatalf("restore = %+v, want the hot copy at %d, %d batches not in the stream, a gap-audit sync", rep, bc.Watermark, lost)
	}
	var sc candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, rep.SyncRunID, 2*time.Minute, &sc)
	assertSame(t, readDB(t, dbPath), want)
}

// --drill-schedule runs drills by itself: a JetStream message schedule
// ticks, the backup service drills and publishes drill.completed.
func TestDrillOnSchedule(t *testing.T) {
	r := newRestoreRig(t, backupConfig{DrillSchedule: "@every 1s"})
	backupWM := r.backfillAndBackUp(1)
	var ev candles.DrillCompleted
	r.ev.waitMatch(t, candles.KindDrillCompleted, time.Minute, &ev, func() bool {
		return len(ev.Tiers) == 1 && ev.Tiers[0].Watermark == backupWM
	})
	if !ev.OK || ev.Tiers[0].Tier != backup.TierHot || !ev.Tiers[0].OK {
		t.Errorf("scheduled drill.completed = %+v", ev)
	}
}
