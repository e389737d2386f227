package backup_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/backup"
)

func TestDebounceAfterSyncCompleted(t *testing.T) {
	d := newDB(t)
	d.write(t, 2, 10)
	nc, js, _ := startNATS(t)
	hot := fileTier(t, "hot", filepath.Join(t.TempDir(), "hot"))
	clock := testclock.New(t0)
	o := options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, clock.Now)
	o.Conn, o.Schedule, o.Poll = nc, backup.ScheduleOff, 10*time.Millisecond
	s := newService(t, o)
	runService(t, s)
	waitForService(t, nc)

	syncCompleted := func(runID string) {
		t.Helper()
		ev := &candles.SyncCompleted{EventHeader: candles.NewHeader(candles.KindSyncCompleted, runID)}
		if err := candles.PublishEvent(context.Background(), js, ev, "", clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
	copies := func(want int) func() error {
		return func() error {
			if n := len(complete(t, hot)); n != want {
				return fmt.Errorf("%d copies, want %d", n, want)
			}
			return nil
		}
	}
	// The first sync.completed backs up at once.
	syncCompleted("run-1")
	checkfor.Check(t, 10*time.Second, 10*time.Millisecond, copies(1))

	// Three more within the min interval: taken in, held back, one pending.
	for i := 2; i <= 4; i++ {
		syncCompleted(fmt.Sprintf("run-%d", i))
	}
	checkfor.Check(t, 10*time.Second, 10*time.Millisecond, func() error {
		if pending, seen := s.Pending(); seen != 4 || !pending {
			return fmt.Errorf("seen %d sync.completed, pending %v; want 4 and a pending backup", seen, pending)
		}
		return nil
	})
	// The loop has looked at the clock since, and still holds back.
	reads := clock.Reads()
	checkfor.Check(t, 5*time.Second, 10*time.Millisecond, func() error {
		if clock.Reads() < reads+3 {
			return errors.New("the debounce has not looked at the clock again")
		}
		return nil
	})
	if err := copies(1)(); err != nil {
		t.Fatalf("within the min interval: %v", err)
	}
	// Once the min interval has passed, the pending backup runs: one, not three.
	d.write(t, 1, 10)
	clock.Add(backup.DefaultMinInterval)
	checkfor.Check(t, 10*time.Second, 10*time.Millisecond, copies(2))
	checkfor.Check(t, 5*time.Second, 10*time.Millisecond, func() error {
		if pending, _ := s.Pending(); pending {
			return errors.New("still pending")
		}
		return nil
	})
	if got := complete(t, hot)[1].Watermark; got != 3 {
		t.Fatalf("debounced copy at watermark %d, want 3", got)
	}
}

// waitForService waits until candlekeep-backup answers: Run has created
// its consumers by then.
func waitForService(t testing.TB, nc *nats.Conn) {
	t.Helper()
	checkfor.Check(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := nc.Request(candles.SubjectAPIBackupList, nil, time.Second)
		return err
	})
}

func TestAPIBackupAndList(t *testing.T) {
	d := newDB(t)
	d.write(t, 3, 10)
	nc, _, _ := startNATS(t)
	root := t.TempDir()
	hot := fileTier(t, "hot", filepath.Join(root, "hot"))
	warm := fileTier(t, "warm", filepath.Join(root, "warm"))
	clock := testclock.New(t0)
	o := options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}, {Tier: warm, Retention: backup.DefaultWarmRetention}}, clock.Now)
	o.Conn, o.Schedule = nc, backup.ScheduleOff
	// A crash mid-backup left a snapshot in the scratch directory.
	scratch := filepath.Join(filepath.Dir(d.path), "backups", ".scratch")
	leftover := filepath.Join(scratch, "snapshot-1764813600000000000.db")
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(leftover, []byte("half a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	runService(t, newService(t, o))

	var rep backup.Report
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		msg, err := nc.Request(candles.SubjectAPIBackup, nil, 10*time.Second)
		if err != nil {
			return err
		}
		return json.Unmarshal(msg.Data, &rep)
	})
	if !rep.OK() || rep.Trigger != backup.TriggerRequest || rep.Watermark != 3 || len(rep.Tiers) != 2 {
		t.Fatalf("backup reply %+v", rep)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover snapshot is still there (%v)", err)
	}
	msg, err := nc.Request(candles.SubjectAPIBackupList, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var l backup.Listing
	if err := json.Unmarshal(msg.Data, &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Tiers) != 2 {
		t.Fatalf("ls: %+v", l)
	}
	for _, tl := range l.Tiers {
		if tl.Error != "" || len(tl.Copies) != 1 || !tl.Copies[0].Complete() || tl.Copies[0].Name != rep.Name ||
			tl.Copies[0].Watermark != 3 || tl.Copies[0].Bytes != rep.Tiers[0].Bytes {
			t.Errorf("ls %s: %+v", tl.Tier, tl)
		}
	}
}

func TestScheduleTakesBackups(t *testing.T) {
	d := newDB(t)
	d.write(t, 1, 10)
	nc, js, _ := startNATS(t)
	hot := fileTier(t, "hot", filepath.Join(t.TempDir(), "hot"))
	var clock atomic.Int64
	clock.Store(t0.Unix())
	now := func() time.Time { return time.Unix(clock.Add(1), 0).UTC() } // a new second per call: distinct names
	o := options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, now)
	o.Conn, o.Schedule = nc, "@every 1s"
	o.Streams.CandlesMaxAge = time.Hour * 24
	runService(t, newService(t, o))
	// The schedule is a message in SYNC that the server fires; no sync
	// completes here, so every copy comes from a tick.
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		stream, err := js.Stream(context.Background(), candles.StreamSync)
		if err != nil {
			return err
		}
		m, err := stream.GetLastMsgForSubject(context.Background(), candles.SubjectBackupSchedule)
		if err != nil {
			return err
		}
		if m.Header.Get("Nats-Schedule") != "@every 1s" || m.Header.Get("Nats-Schedule-Target") != candles.SubjectBackupRequest {
			return fmt.Errorf("schedule headers %v", m.Header)
		}
		return nil
	})
	checkfor.Check(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := len(complete(t, hot)); n < 2 {
			return fmt.Errorf("%d scheduled copies, want 2", n)
		}
		return nil
	})
}

func TestStartRefusesShortCandlesRetention(t *testing.T) {
	for _, tc := range []struct {
		name, schedule string
		minInterval    time.Duration
		maxAge         time.Duration
		ok             bool
	}{
		{"daily backups, 30 days of stream", "0 0 2 * * *", time.Hour, 30 * 24 * time.Hour, true},
		{"daily backups, 2 days of stream", "0 0 2 * * *", time.Hour, 48 * time.Hour, false},
		{"daily backups, exactly 2x+1h", "0 0 2 * * *", time.Hour, 49 * time.Hour, false},
		{"weekly backups, 14 days", "@weekly", time.Hour, 14 * 24 * time.Hour, false},
		{"weekly backups, 15 days", "@weekly", time.Hour, 15 * 24 * time.Hour, true},
		{"schedule off, min interval 6h, 12h", "off", 6 * time.Hour, 12 * time.Hour, false},
		{"schedule off, min interval 6h, 14h", "off", 6 * time.Hour, 14 * time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := backup.CheckRetention(tc.schedule, tc.minInterval, tc.maxAge, t0)
			if tc.ok != (err == nil) {
				t.Fatalf("CheckRetention: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "candles-max-age") {
				t.Fatalf("error does not name the setting: %v", err)
			}
		})
	}
	// Run refuses to start with it.
	d := newDB(t)
	nc, _, _ := startNATS(t)
	o := options(d, []backup.TierConfig{{Tier: fileTier(t, "hot", t.TempDir()), Retention: backup.DefaultHotRetention}}, time.Now)
	o.Conn, o.Streams.CandlesMaxAge = nc, 24*time.Hour
	err := newService(t, o).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "candlekeep config set candles-max-age=") {
		t.Fatalf("Run: %v, want a refusal naming candles-max-age", err)
	}
}

func TestSnapshotDoesNotBlockTheWriter(t *testing.T) {
	d := newDB(t)
	d.write(t, 200, 1000)
	hot := fileTier(t, "hot", filepath.Join(t.TempDir(), "hot"))
	s := newService(t, options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, testclock.New(t0).Now))

	// The writer commits small batches for as long as the backup runs.
	var commits atomic.Int64
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if err := d.apply(10); err != nil {
				writerDone <- err
				return
			}
			commits.Add(1)
		}
	}()
	// Let the writer get going before the backup starts.
	checkfor.Check(t, 10*time.Second, time.Millisecond, func() error {
		if commits.Load() < 3 {
			return errors.New("writer not committing yet")
		}
		return nil
	})
	before := commits.Load()
	rep := s.Backup(context.Background(), backup.TriggerRequest)
	during := commits.Load() - before
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatalf("the writer failed during the backup: %v", err)
	}
	if !rep.OK() {
		t.Fatalf("backup: %+v", rep)
	}
	if during < 3 {
		t.Fatalf("the writer committed %d batches during the backup, want it to keep going", during)
	}
	// The copy is one consistent point: its watermark is a batch the
	// writer committed during the backup, and it holds exactly the candles
	// of the batches up to it.
	if rep.Watermark < 200+uint64(before) || rep.Candles != 200*1000+int64(rep.Watermark-200)*10 {
		t.Fatalf("copy at watermark %d with %d candles; the writer was at %d when it began", rep.Watermark, rep.Candles, 200+before)
	}
	t.Logf("writer committed %d batches during a backup of %d candles", during, rep.Candles)
}

func TestTriggerConsumerHealsItself(t *testing.T) {
	d := newDB(t)
	d.write(t, 1, 10)
	nc, js, _ := startNATS(t)
	hot := fileTier(t, "hot", filepath.Join(t.TempDir(), "hot"))
	clock := testclock.New(t0)
	o := options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, clock.Now)
	o.Conn, o.Schedule, o.Poll = nc, backup.ScheduleOff, 10*time.Millisecond
	runService(t, newService(t, o))
	waitForService(t, nc)
	ctx := context.Background()
	if err := js.DeleteConsumer(ctx, candles.StreamEvents, "backup-sync-completed"); err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 15*time.Second, 20*time.Millisecond, func() error {
		_, err := js.Consumer(ctx, candles.StreamEvents, "backup-sync-completed")
		return err
	})
	ev := &candles.SyncCompleted{EventHeader: candles.NewHeader(candles.KindSyncCompleted, "run-after-heal")}
	if err := candles.PublishEvent(ctx, js, ev, "", clock.Now()); err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 15*time.Second, 20*time.Millisecond, func() error {
		if n := len(complete(t, hot)); n != 1 {
			return fmt.Errorf("%d copies after a sync.completed on the recreated consumer, want 1", n)
		}
		return nil
	})
}
