package writer_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/writer"
)

// swappable lets the writer reopen its database, as serveWriter does.
func (h *harness) swappable(mod func(*writer.Options)) func(*writer.Options) {
	return func(o *writer.Options) {
		o.DatabasePath = h.dbPath
		o.Reopen = func(ctx context.Context, path string) (writer.Store, error) { return store.Open(ctx, path) }
		o.CheckpointEvery = 50 * time.Millisecond
		if mod != nil {
			mod(o)
		}
	}
}

// swap asks the running writer over NATS to swap in restored.
func (h *harness) swap(restored string) (candles.SwapResult, string) {
	h.t.Helper()
	data, _ := json.Marshal(candles.SwapRequest{Restored: restored, Reason: "test"})
	resp, err := h.nc.Request(candles.SubjectAPIWriterSwap, data, 30*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return candles.SwapResult{}, code + " " + resp.Header.Get(micro.ErrorHeader)
	}
	var res candles.SwapResult
	if err := json.Unmarshal(resp.Data, &res); err != nil {
		h.t.Fatal(err)
	}
	return res, ""
}

// A restore over NATS: the writer swaps a copy taken earlier in place of
// its live file, keeps the live file aside, and replays the batches the
// copy lacks and those published during and after the swap, each once.
func TestSwapOverNATS(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	r := h.start(h.swappable(nil))
	page := 0
	publish := func(symbol string, n int) uint64 {
		b := batch("", symbol, page, false, series(t0+int64(page*10)*h4, n, float64(page)))
		page++
		return h.publish(b, "").Sequence
	}
	h.waitApplied(publish("BTCUSDT", 10))
	restored := filepath.Join(filepath.Dir(h.dbPath), "restore-1.db")
	if err := r.store.Snapshot(ctx, restored); err != nil {
		t.Fatal(err)
	}
	copyWM := h.watermark(candles.StreamCandles)
	publish("BTCUSDT", 10)
	h.waitApplied(publish("ETHUSDT", 10))

	// Refused: a file outside the directory, and a missing one.
	if _, e := h.swap(filepath.Join(t.TempDir(), "x.db")); e == "" {
		t.Error("a copy outside the database's directory was accepted")
	}
	if _, e := h.swap(filepath.Join(filepath.Dir(h.dbPath), "missing.db")); e == "" {
		t.Error("a missing copy was accepted")
	}

	res, e := h.swap(restored)
	if e != "" {
		t.Fatalf("swap: %s", e)
	}
	if res.Watermark != copyWM || res.StreamLast < copyWM+2 || res.Database != h.dbPath {
		t.Errorf("swap result %+v, want watermark %d, stream_last ≥ %d", res, copyWM, copyWM+2)
	}
	if _, err := os.Stat(res.MovedAside); err != nil {
		t.Errorf("the previous file was not kept aside: %v", err)
	}
	if _, err := os.Stat(restored); !os.IsNotExist(err) {
		t.Errorf("the prepared copy is still there under its name: %v", err)
	}
	h.waitApplied(publish("ETHUSDT", 5))
	r.stop()
	h.assertDB()
}

// A database file deleted under the running writer is found (SQLite
// itself goes on writing to the unlinked file): integrity.failed with
// check "file", and writes stop.
func TestDeletedFileIsDamage(t *testing.T) {
	h := newHarness(t)
	h.start(h.swappable(nil))
	h.waitApplied(h.publish(batch("", "BTCUSDT", 0, false, series(t0, 10, 0)), "").Sequence)
	if err := os.Remove(h.dbPath); err != nil {
		t.Fatal(err)
	}
	eventually(t, "integrity.failed", func() bool { return len(h.events(candles.KindIntegrityFailed)) == 1 })
	var ev candles.IntegrityFailed
	if err := json.Unmarshal(h.events(candles.KindIntegrityFailed)[0], &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Check != "file" || ev.Database != h.dbPath {
		t.Errorf("integrity.failed = check %q database %q, want file %s", ev.Check, ev.Database, h.dbPath)
	}
}

// A database file truncated under the running writer is found by its size
// (SQLite never shrinks it by itself): integrity.failed with check "file".
// Nothing else reads the file meanwhile (the deadline watcher's query
// would find the cut pages too, as check "query").
func TestTruncatedFileIsDamage(t *testing.T) {
	h := newHarness(t)
	h.start(h.swappable(func(o *writer.Options) { o.DeadlineEvery = time.Hour }))
	var last uint64
	for i := range 5 {
		last = h.publish(batch("", "BTCUSDT", i, false, series(t0+int64(i*200)*h4, 200, 0)), "").Sequence
	}
	h.waitApplied(last)
	var size int64
	eventually(t, "the WAL checkpointed into the file", func() bool {
		fi, err := os.Stat(h.dbPath)
		size = fi.Size()
		return err == nil && size > 16384
	})
	if err := os.Truncate(h.dbPath, size/2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "integrity.failed", func() bool { return len(h.events(candles.KindIntegrityFailed)) == 1 })
	var ev candles.IntegrityFailed
	if err := json.Unmarshal(h.events(candles.KindIntegrityFailed)[0], &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Check != "file" {
		t.Errorf("integrity.failed check %q (%v), want file", ev.Check, ev.Problems)
	}
}
