package writer_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// A restore under a running writer: pause it, put an older copy of the
// database in place, resume with the reopened file. The batches the copy
// lacks and those published during the pause are applied once each, in
// order, and the run completes once with every candle counted once.
func TestPauseSwapResume(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-restore"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}, PairsTotal: 2}
	h.event(&started, "")
	r := h.start(nil)
	page := 0
	publish := func(symbol string, n int, final bool) uint64 {
		b := batch("run-restore", symbol, page, final, series(t0+int64(page*10)*h4, n, float64(page)))
		page++
		return h.publish(b, "").Sequence
	}
	h.waitApplied(publish("BTCUSDT", 10, false))

	// The backup: a snapshot at the watermark so far.
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := r.store.Snapshot(ctx, backup); err != nil {
		t.Fatal(err)
	}
	publish("BTCUSDT", 10, false)
	h.waitApplied(publish("BTCUSDT", 10, true))
	before := h.watermark(candles.StreamCandles)

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resume, err := r.w.Pause(pctx)
	if err != nil {
		t.Fatal(err)
	}
	// Pause returned: nothing uses the database and requests are refused.
	var last uint64
	for range 3 {
		last = publish("ETHUSDT", 10, false)
	}
	last = max(last, publish("ETHUSDT", 5, true))
	if got := h.watermark(candles.StreamCandles); got != before {
		t.Fatalf("watermark moved from %d to %d after Pause returned", before, got)
	}
	resp, err := h.nc.Request(candles.SubjectAPICoverage, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "503" || !strings.Contains(resp.Header.Get(micro.ErrorHeader), "paused") {
		t.Errorf("coverage while paused: code %q %q, want 503 naming the pause", code, resp.Header.Get(micro.ErrorHeader))
	}

	// The restore: close, put the older copy in place, reopen, resume.
	if err := r.store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Remove(h.dbPath + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if err := os.Rename(backup, h.dbPath); err != nil {
		t.Fatal(err)
	}
	restored, err := store.Open(ctx, h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	r.store = restored // stop closes it
	if wm, _ := restored.Watermark(ctx, candles.StreamCandles); wm >= before {
		t.Fatalf("the restored copy is at %d, want older than %d", wm, before)
	}
	if err := resume(restored); err != nil {
		t.Fatal(err)
	}
	if err := resume(restored); err == nil {
		t.Error("a second resume was accepted")
	}

	h.waitApplied(last)
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	r.stop()
	h.assertDB()
	if got := h.runCandles("run-restore"); got != 65 {
		t.Errorf("run counted %d candles, want 65 (each of 7 batches once)", got)
	}
	done := h.onlyCompleted()
	if done.Candles != 65 || done.PairsOK != 2 {
		t.Errorf("sync.completed = %+v, want 65 candles, 2 pairs ok", done)
	}
	// The consumer was ahead of the restored copy (its ack floor, or
	// messages still in flight when the pause began, whichever it finds
	// first): it is rebuilt at the restored watermark.
	if !strings.Contains(h.logs.String(), "recreating consumer at the database watermark") {
		t.Error("the writer did not recreate its consumer at the restored watermark")
	}
}
