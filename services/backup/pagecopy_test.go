package backup_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/backup"
)

// TestSnapshotMethodsWhileWriting: with either snapshot method, a backup
// taken while a writer commits 50-candle batches without pause is the
// database as of one commit: it passes integrity_check, and it holds
// exactly 50 candles per batch up to its watermark.
func TestSnapshotMethodsWhileWriting(t *testing.T) {
	for _, method := range []backup.SnapshotMethod{backup.SnapshotBackupAPI, backup.SnapshotVacuumInto} {
		t.Run(string(method), func(t *testing.T) {
			d := newDB(t)
			d.write(t, 200, 50)
			hot := fileTier(t, backup.TierHot, filepath.Join(t.TempDir(), "hot"))
			o := options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, testclock.New(t0).Now)
			o.SnapshotMethod = method
			s := newService(t, o)

			stop := make(chan struct{})
			var wg sync.WaitGroup
			var writeErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if writeErr = d.apply(50); writeErr != nil {
						return
					}
				}
			}()
			rep := s.Backup(context.Background(), backup.TriggerRequest)
			close(stop)
			wg.Wait()
			if writeErr != nil {
				t.Fatal(writeErr)
			}
			if !rep.OK() {
				t.Fatalf("backup: %+v", rep)
			}
			if rep.Watermark < 200 || rep.Candles != int64(rep.Watermark)*50 {
				t.Fatalf("backup watermark %d candles %d: want >= 200 and 50 per batch", rep.Watermark, rep.Candles)
			}
			if d.seq <= 200 {
				t.Errorf("the writer committed nothing during the backup (sequence %d)", d.seq)
			}
			copies := complete(t, hot)
			if len(copies) != 1 {
				t.Fatalf("%d complete copies, want 1", len(copies))
			}
			dst := filepath.Join(t.TempDir(), "restored.db")
			if err := backup.Fetch(context.Background(), hot, *copies[0].Manifest, dst); err != nil {
				t.Fatal(err)
			}
			st, err := store.OpenReadOnly(context.Background(), dst)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			problems, err := st.IntegrityCheck(context.Background())
			if err != nil || len(problems) > 0 {
				t.Fatalf("integrity_check of the restored copy: %v %v", problems, err)
			}
			stats, err := st.Stats(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			w, err := st.Watermark(context.Background(), "CANDLES")
			if err != nil || w != rep.Watermark || stats.Candles != int64(w)*50 {
				t.Fatalf("restored copy: watermark %d (%v) candles %d; want %d and 50 per batch", w, err, stats.Candles, rep.Watermark)
			}
		})
	}
}
