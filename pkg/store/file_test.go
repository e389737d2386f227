package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

func openReadOnly(t *testing.T, path string) *store.Store {
	t.Helper()
	s, err := store.OpenReadOnly(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fill applies n batches of 100 4h candles for BTCUSDT at sequences 1..n.
func fill(t *testing.T, s *store.Store, n int) {
	t.Helper()
	for i := range n {
		b := batch("", "BTCUSDT", false, series(t0+int64(i*100)*h4, 100, 0))
		if _, err := s.ApplyBatch(context.Background(), candles.StreamCandles, uint64(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	t.Run("a missing file is refused, not created", func(t *testing.T) {
		path := tempDB(t)
		_, err := store.OpenReadOnly(ctx, path)
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want os.ErrNotExist", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("OpenReadOnly created %s", path)
		}
	})
	t.Run("a file no candlekeep migrated is refused", func(t *testing.T) {
		path := tempDB(t)
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := store.OpenReadOnly(ctx, path); !errors.Is(err, store.ErrNotCandlekeep) {
			t.Fatalf("err = %v, want ErrNotCandlekeep", err)
		}
	})
	t.Run("reads what the writer commits, writes nothing", func(t *testing.T) {
		path := tempDB(t)
		w := openStore(t, path)
		fill(t, w, 2)
		ro := openReadOnly(t, path)
		if wm, err := ro.Watermark(ctx, candles.StreamCandles); err != nil || wm != 2 {
			t.Fatalf("read-only watermark = %d, %v; want 2", wm, err)
		}
		fill(t, w, 3) // sequence 3 is new; 1 and 2 are skipped
		if wm, err := ro.Watermark(ctx, candles.StreamCandles); err != nil || wm != 3 {
			t.Fatalf("read-only watermark after another commit = %d, %v; want 3", wm, err)
		}
		cov, err := ro.Coverage(ctx, candles.CoverageRequest{Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}})
		if err != nil || len(cov) != 1 || cov[0].Count != 300 {
			t.Fatalf("read-only coverage = %+v, %v; want 300 candles", cov, err)
		}
		if _, err := ro.ApplyBatch(ctx, candles.StreamCandles, 4, batch("", "ETHUSDT", false, series(t0, 1, 0))); !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("ApplyBatch on a read-only store: err = %v, want ErrReadOnly", err)
		}
		if err := ro.Advance(ctx, candles.StreamEvents, 9); !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("Advance on a read-only store: err = %v, want ErrReadOnly", err)
		}
		if wm, _ := w.Watermark(ctx, candles.StreamCandles); wm != 3 {
			t.Fatalf("watermark moved to %d", wm)
		}
	})
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	w := openStore(t, path)
	fill(t, w, 5)
	for name, s := range map[string]*store.Store{"writable": w, "read-only": openReadOnly(t, path)} {
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		wal, _ := os.Stat(path + "-wal")
		want := store.Stats{FileBytes: fi.Size(), WALBytes: wal.Size(), Candles: 500, SchemaVersion: store.SchemaVersion()}
		if st != want || st.FileBytes == 0 {
			t.Errorf("%s: Stats = %+v, want %+v", name, st, want)
		}
	}
}

func TestChecksOnASoundFile(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	w := openStore(t, path)
	fill(t, w, 5)
	for name, s := range map[string]*store.Store{"writable": w, "read-only": openReadOnly(t, path)} {
		for check, run := range map[string]func(context.Context) ([]string, error){"quick": s.QuickCheck, "integrity": s.IntegrityCheck} {
			if problems, err := run(ctx); err != nil || len(problems) != 0 {
				t.Errorf("%s %s check: %q, %v; want no problems", name, check, problems, err)
			}
		}
	}
}

func TestChecksFindCorruption(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	w := openStore(t, path)
	fill(t, w, 50) // 5000 candles: many b-tree pages
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Overwrite the middle of a page deep in the file: cells of the candles
	// b-tree, which both checks walk.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	page := int64(4096)
	junk := make([]byte, 1024)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	for off := page * 4; off+page < fi.Size(); off += page * 3 {
		if _, err := f.WriteAt(junk, off+1000); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	ro := openReadOnly(t, path)
	for check, run := range map[string]func(context.Context) ([]string, error){"quick": ro.QuickCheck, "integrity": ro.IntegrityCheck} {
		problems, err := run(ctx)
		if len(problems) == 0 && err == nil {
			t.Errorf("%s check found nothing in a corrupted file", check)
		}
		if len(problems) > 0 && !strings.Contains(problems[0], "page") {
			t.Errorf("%s check: first problem %q does not name a page", check, problems[0])
		}
	}
}

func TestSnapshot(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	w := openStore(t, path)
	fill(t, w, 20)

	// The writer goes on while snapshots are taken: each snapshot holds one
	// commit exactly (its watermark and its rows agree), and the writer's
	// batches all land.
	dir := t.TempDir()
	var wg sync.WaitGroup
	wg.Add(1)
	writeErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		for i := 20; i < 60; i++ {
			b := batch("", "ETHUSDT", false, series(t0+int64(i*100)*h4, 100, 0))
			if _, err := w.ApplyBatch(ctx, candles.StreamCandles, uint64(i+1), b); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	ro := openReadOnly(t, path)
	var snaps []string
	for i := range 4 {
		src := w
		if i%2 == 1 {
			src = ro // the backup service snapshots through a read-only store
		}
		dst := filepath.Join(dir, "snap-"+string(rune('a'+i))+".db")
		if err := src.Snapshot(ctx, dst); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, dst)
	}
	wg.Wait()
	select {
	case err := <-writeErr:
		t.Fatal(err)
	default:
	}
	if wm, _ := w.Watermark(ctx, candles.StreamCandles); wm != 60 {
		t.Fatalf("writer watermark = %d, want 60", wm)
	}
	for _, dst := range snaps {
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != store.FileMode {
			t.Errorf("%s: mode %v, want %v", dst, fi.Mode().Perm(), store.FileMode)
		}
		s := openReadOnly(t, dst)
		if problems, err := s.IntegrityCheck(ctx); err != nil || len(problems) != 0 {
			t.Fatalf("%s: integrity %q, %v", dst, problems, err)
		}
		wm, err := s.Watermark(ctx, candles.StreamCandles)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Candles != int64(wm)*100 || wm < 20 {
			t.Errorf("%s: watermark %d with %d candles: not one commit", dst, wm, st.Candles)
		}
	}
	// The snapshot of the finished database is the database.
	last := filepath.Join(dir, "last.db")
	if err := w.Snapshot(ctx, last); err != nil {
		t.Fatal(err)
	}
	for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
		if got, want := rows(t, rawDB(t, last), sym, "4h"), rows(t, rawDB(t, path), sym, "4h"); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: snapshot has %d candles, database %d", sym, len(got), len(want))
		}
	}
	if err := w.Snapshot(ctx, last); !errors.Is(err, os.ErrExist) {
		t.Fatalf("snapshot over an existing file: err = %v, want os.ErrExist", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
