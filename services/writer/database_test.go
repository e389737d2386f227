package writer_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/diskspace"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/writer"
)

// askDatabase sends body to candles.api.database and returns the reply, or
// the micro error code and message.
func (h *harness) askDatabase(body string) (health candles.DatabaseHealth, code, msg string) {
	h.t.Helper()
	resp, err := h.nc.Request(candles.SubjectAPIDatabase, []byte(body), 30*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return health, code, resp.Header.Get(micro.ErrorHeader)
	}
	if err := json.Unmarshal(resp.Data, &health); err != nil {
		h.t.Fatalf("reply %s: %v", resp.Data, err)
	}
	return health, "", ""
}

// database asks candles.api.database with an empty body and fails the test
// on an error answer.
func (h *harness) database() candles.DatabaseHealth {
	h.t.Helper()
	health, code, msg := h.askDatabase("")
	if code != "" {
		h.t.Fatalf("candles.api.database answered %s %s", code, msg)
	}
	return health
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// The database endpoint reports the file it owns exactly: its path and the
// lease holder, the sizes os.Stat gives, the candles stored, the schema
// version, the filesystem, a passing quick_check, the last integrity_check
// and the runs in progress.
func TestDatabaseEndpointReportsTheFile(t *testing.T) {
	h := newHarness(t)
	// No checkpoint moves the WAL into the file while the test compares
	// sizes; the integrity_check due at start still runs (never checked).
	h.start(func(o *writer.Options) {
		o.CheckpointEvery = time.Hour
		o.Active = &candles.WriterActive{EventHeader: candles.NewHeader(candles.KindWriterActive, ""),
			Holder: "writer-test-holder", Host: "test", PID: 1, Database: h.dbPath, Since: time.Now()}
	})
	h.fillBTC(5) // 500 candles

	startedAt := time.Date(2026, 12, 4, 17, 0, 0, 0, time.UTC)
	deadline := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "backfill"),
		Pairs: []candles.Pair{btc, eth}, PairsTotal: 2, Deadline: deadline}
	started.Time = startedAt
	h.event(&started, "")
	h.waitApplied(h.publish(batch("backfill", "ETHUSDT", 0, true, series(t0, 10, 0)), "").Sequence)

	// Wait for the writes still to come: the run's progress (the run
	// events have their own consumer) and the integrity_check's record.
	checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		got := h.database()
		if got.IntegrityCheckAt.IsZero() || len(got.Runs) != 1 || got.Runs[0].PairsDone != 1 {
			return fmt.Errorf("integrity_check at %v, runs %+v", got.IntegrityCheckAt, got.Runs)
		}
		return nil
	})

	got := h.database()
	var schema int
	var checked string
	h.query(func(db *sql.DB) error {
		if err := db.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&schema); err != nil {
			return err
		}
		return db.QueryRow(`SELECT value FROM meta WHERE key = 'checked:integrity_check'`).Scan(&checked)
	})
	checkedAt, err := time.Parse(time.RFC3339Nano, checked)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(h.dbPath)
	if got.V != candles.Version || got.Database != h.dbPath || got.Holder != "writer-test-holder" {
		t.Errorf("v %d, database %q, holder %q; want %d, %q, writer-test-holder", got.V, got.Database, got.Holder, candles.Version, h.dbPath)
	}
	if want := fileSize(t, h.dbPath); got.FileBytes != want || want == 0 {
		t.Errorf("file_bytes %d; os.Stat says %d", got.FileBytes, want)
	}
	if want := fileSize(t, h.dbPath+"-wal"); got.WALBytes != want {
		t.Errorf("wal_bytes %d; os.Stat says %d", got.WALBytes, want)
	}
	if got.Candles != 510 || int(got.Candles) != len(h.model) {
		t.Errorf("candles %d; want 510 (the model holds %d)", got.Candles, len(h.model))
	}
	if got.SchemaVersion != schema || schema == 0 {
		t.Errorf("schema_version %d; want %d", got.SchemaVersion, schema)
	}
	if size := diskspace.Size(dir); got.DiskSizeBytes != size || got.DiskFreeBytes == 0 || got.DiskFreeBytes > size {
		t.Errorf("disk free %d of %d; want the filesystem's %d bytes, some of them free", got.DiskFreeBytes, got.DiskSizeBytes, size)
	}
	if q := got.QuickCheck; !q.OK || len(q.Problems) != 0 || q.Seconds <= 0 || q.Seconds > 30 || q.At.IsZero() || q.At.After(got.At) {
		t.Errorf("quick_check %+v; want ok, no problems, measured at or before %v", q, got.At)
	}
	if !got.IntegrityCheckAt.Equal(checkedAt) {
		t.Errorf("integrity_check_at %v; the database recorded %v", got.IntegrityCheckAt, checkedAt)
	}
	if got.Damaged != nil {
		t.Errorf("damaged %+v on a sound file", got.Damaged)
	}
	wantRuns := []candles.RunProgress{{RunID: "backfill", PairsTotal: 2, PairsDone: 1, Candles: 10, StartedAt: startedAt, Deadline: deadline}}
	if !reflect.DeepEqual(got.Runs, wantRuns) {
		t.Errorf("runs %+v; want %+v", got.Runs, wantRuns)
	}

	t.Run("the request body", func(t *testing.T) {
		for _, tc := range []struct {
			body, code, msg string
		}{
			{"", "", ""},
			{"{}", "", ""},
			{"  { }\n", "", ""},
			{`{"gaps":true}`, "400", `"gaps": unknown field (candles.api.database takes no parameters`},
			{`[]`, "400", "want an empty body or {}"},
			{`null`, "400", "want an empty body or {}"},
			{`{} {}`, "400", "want an empty body or {}"},
			{`database please`, "400", "want an empty body or {}"},
		} {
			t.Run(tc.body, func(t *testing.T) {
				health, code, msg := h.askDatabase(tc.body)
				if code != tc.code || !strings.Contains(msg, tc.msg) {
					t.Errorf("answered %q %q; want %q containing %q", code, msg, tc.code, tc.msg)
				}
				if tc.code == "" && (health.Candles != 510 || !health.QuickCheck.OK) {
					t.Errorf("answered %+v", health)
				}
			})
		}
	})
}

// The candle count costs a read of the whole primary key, so it is made at
// most every 30 seconds (of the writer's clock); the sizes are current on
// every request.
func TestDatabaseEndpointCountsAtMostEvery30s(t *testing.T) {
	h := newHarness(t)
	clock := testclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	h.start(func(o *writer.Options) { o.Now = clock.Now })
	h.fillBTC(2)
	if got := h.database(); got.Candles != 200 {
		t.Fatalf("candles %d; want 200", got.Candles)
	}
	h.waitApplied(h.publish(batch("", "ETHUSDT", 0, false, series(t0, 50, 0)), "").Sequence)
	clock.Add(29 * time.Second)
	if got := h.database(); got.Candles != 200 {
		t.Errorf("candles %d 29s after the count; want the count of 200 again", got.Candles)
	}
	clock.Add(time.Second)
	if got := h.database(); got.Candles != 250 {
		t.Errorf("candles %d 30s after the count; want a new count of 250", got.Candles)
	}
}

// A damaged file answers with the damage rather than going silent: Damaged
// set, quick_check failed with SQLite's findings, and one integrity.failed,
// whether the damage was there at start or the endpoint's own quick_check
// is the first to find it.
func TestDatabaseEndpointReportsDamage(t *testing.T) {
	for _, tc := range []struct {
		name string
		// damage corrupts the file, the writer running (r) or not.
		damage func(h *harness, r *running) *running
	}{
		{"found at start", func(h *harness, r *running) *running {
			r.stop()
			if _, err := storetest.CorruptCandles(h.dbPath, 3); err != nil {
				h.t.Fatal(err)
			}
			r = h.start(func(o *writer.Options) { o.QuickCheckEvery, o.IntegrityCheckEvery = time.Hour, time.Hour })
			h.integrityFailed()
			return r
		}},
		{"found by the endpoint under a running writer", func(h *harness, r *running) *running {
			checkfor.Check(h.t, 30*time.Second, 50*time.Millisecond, func() error {
				_, err := storetest.CorruptCandles(h.dbPath, 3)
				return err
			})
			// A commit makes every connection drop the pages it cached
			// (TestWriterStopsWhenTheDatabaseGoesBad).
			h.waitApplied(h.publish(batch("", "ETHUSDT", 0, false, series(t0, 10, 0)), "").Sequence)
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			// The periodic checks wait an hour: only the start's check and
			// the endpoint's look at the file.
			r := h.start(func(o *writer.Options) { o.QuickCheckEvery, o.IntegrityCheckEvery = time.Hour, time.Hour })
			h.fillBTC(50)
			if got := h.database(); got.Candles != 5000 || !got.QuickCheck.OK {
				t.Fatalf("before the damage: %+v", got)
			}
			tc.damage(h, r)

			got := h.database()
			if got.Damaged == nil || got.Damaged.Check != "quick_check" || got.Damaged.Database != h.dbPath {
				t.Fatalf("damaged = %+v; want the quick_check's finding on %s", got.Damaged, h.dbPath)
			}
			if q := got.QuickCheck; q.OK || len(q.Problems) == 0 || len(q.Problems) > 10 {
				t.Errorf("quick_check %+v; want failed with SQLite's first findings", q)
			}
			if got.Database != h.dbPath || got.FileBytes != fileSize(t, h.dbPath) || got.FileBytes == 0 {
				t.Errorf("database %q, file_bytes %d; want %s of %d bytes", got.Database, got.FileBytes, h.dbPath, fileSize(t, h.dbPath))
			}
			ev := h.integrityFailed()
			h.assertDamageEvent(ev, "quick_check")
			if !reflect.DeepEqual(*got.Damaged, ev) {
				t.Errorf("damaged %+v; want the integrity.failed published: %+v", *got.Damaged, ev)
			}
			// Asked again, the damage is still there and still one event.
			if again := h.database(); again.Damaged == nil || again.QuickCheck.OK || !again.Damaged.DetectedAt.Equal(got.Damaged.DetectedAt) {
				t.Errorf("asked again: damaged %+v, quick_check %+v; want the same damage", again.Damaged, again.QuickCheck)
			}
			if n := len(h.events(candles.KindIntegrityFailed)); n != 1 {
				t.Errorf("%d integrity.failed events; want 1", n)
			}
		})
	}
}

// Only the writer holding the lease has the micro service, so one writer,
// the holder, answers for the database; the standby has no subscription
// on candles.api.database.
func TestDatabaseEndpointOnlyOnTheLeaseHolder(t *testing.T) {
	h := newHarness(t)
	lo := writer.DefaultLeaseOptions()
	lo.Conn, lo.TTL, lo.Refresh = h.nc, 3*time.Second, 300*time.Millisecond
	type contender struct {
		db    string
		logs  *logBuffer
		taken chan writer.Takeover
	}
	run := func(db string) *contender {
		c := &contender{db: db, logs: &logBuffer{}, taken: make(chan writer.Takeover, 1)}
		o := lo
		o.Database, o.Logger = db, slog.New(slog.NewTextHandler(c.logs, nil))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- writer.RunLeased(ctx, o, func(ctx context.Context, tk writer.Takeover) error {
				st, err := store.Open(ctx, db)
				if err != nil {
					return err
				}
				defer st.Close()
				wo := writer.DefaultOptions()
				wo.Conn, wo.Store, wo.Logger, wo.Active = h.nc, st, slog.New(slog.NewTextHandler(c.logs, nil)), tk.Event()
				wo.AllowUnplanned = true // batches without runs, as in harness.start
				w, err := writer.New(wo)
				if err != nil {
					return err
				}
				c.taken <- tk
				return w.Run(ctx)
			})
		}()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("RunLeased of %s returned %v", db, err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("RunLeased of %s did not return within 15s", db)
			}
			if t.Failed() {
				t.Logf("logs of %s:\n%s", db, c.logs)
			}
		})
		return c
	}
	a := run(h.dbPath)
	var holder writer.Takeover
	select {
	case holder = <-a.taken:
	case <-time.After(30 * time.Second):
		t.Fatal("the first writer did not take the lease")
	}
	b := run(filepath.Join(t.TempDir(), "candles.db"))
	eventually(t, "the second writer standing by", func() bool {
		return strings.Contains(b.logs.String(), "standing by: writer lease held by")
	})
	// The holder registers its service once its streams are in place.
	checkfor.Check(t, 15*time.Second, 20*time.Millisecond, func() error {
		_, err := h.nc.Request(candles.SubjectAPIDatabase, nil, 10*time.Second)
		return err
	})
	got := h.database()
	if got.Holder != holder.Holder.ID || got.Database != h.dbPath {
		t.Errorf("answered by %q for %q; want the lease holder %q for %q", got.Holder, got.Database, holder.Holder.ID, h.dbPath)
	}
	subs, err := h.ns.Subsz(&server.SubszOptions{Subscriptions: true, Test: candles.SubjectAPIDatabase})
	if err != nil {
		t.Fatal(err)
	}
	if subs.Total != 1 {
		t.Errorf("%d subscriptions on %s; want 1, the lease holder's", subs.Total, candles.SubjectAPIDatabase)
	}
	if len(b.taken) != 0 {
		t.Error("the standby served while the lease was held")
	}
}

// The full integrity_check runs at least daily unless configured otherwise.
func TestIntegrityCheckIsDailyByDefault(t *testing.T) {
	if every := writer.DefaultOptions().IntegrityCheckEvery; every <= 0 || every > 24*time.Hour {
		t.Errorf("default IntegrityCheckEvery %s; want at most 24h", every)
	}
}
