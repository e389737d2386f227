package writer_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/writer"
)

func pairCompleted(h *harness, runID, symbol string) bool {
	for _, e := range h.events(candles.KindPairCompleted) {
		var pc candles.PairCompleted
		if json.Unmarshal(e, &pc) == nil && pc.RunID == runID && pc.Symbol == symbol {
			return true
		}
	}
	return false
}

func TestRunDeadlineTimesOutOnce(t *testing.T) {
	h := newHarness(t)
	clk := testclock.New(time.Now())
	fast := func(o *writer.Options) { o.Now, o.DeadlineEvery = clk.Now, 20*time.Millisecond }
	w := h.start(fast)
	deadline := clk.Now().Add(time.Hour)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-late"),
		Pairs:      []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}, {Symbol: "SOLUSDT", Interval: "4h"}},
		PairsTotal: 3, Deadline: deadline}
	h.event(&started, "")
	h.publish(batch("run-late", "BTCUSDT", 0, true, series(t0, 3, 0)), "")
	failed := candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, "run-late"),
		Symbol: "ETHUSDT", Interval: "4h", Reason: "HTTP 500"}
	h.event(&failed, "")
	h.publish(batch("run-late", "SOLUSDT", 0, false, series(t0, 2, 0)), "")
	lastEvent := h.lastSeq(candles.EventSubject(candles.KindPairFailed))
	eventually(t, "the run events handled", func() bool { return h.watermark(candles.StreamEvents) >= lastEvent })
	eventually(t, "BTCUSDT completed", func() bool { return pairCompleted(h, "run-late", "BTCUSDT") })
	// Barrier: the deadline watcher (every 20ms, reading the clock each
	// time) has looked at the registered run several times.
	reads := clk.Reads()
	eventually(t, "several deadline checks", func() bool { return clk.Reads() >= reads+10 })
	if n := len(h.events(candles.KindSyncTimeout)); n != 0 {
		t.Fatalf("%d sync.timeout events before the deadline", n)
	}

	clk.Add(2 * time.Hour)
	eventually(t, "sync.timeout", func() bool { return len(h.events(candles.KindSyncTimeout)) > 0 })
	var got candles.SyncTimeout
	if err := json.Unmarshal(h.events(candles.KindSyncTimeout)[0], &got); err != nil {
		t.Fatal(err)
	}
	if got.Kind != candles.KindSyncTimeout || got.RunID != "run-late" || !got.Deadline.Equal(time.UnixMilli(deadline.UnixMilli())) ||
		len(got.OpenPairs) != 1 || got.OpenPairs[0] != (candles.Pair{Symbol: "SOLUSDT", Interval: "4h"}) ||
		got.PairsOK != 1 || got.PairsFailed != 1 || got.V != candles.Version {
		t.Errorf("sync.timeout = %+v", got)
	}
	// The line is logged once the event is out, so wait for it too.
	eventually(t, "the timeout logged at Warn with the run and its open pairs", func() bool {
		return strings.Contains(h.logs.String(), `level=WARN msg="sync timed out" run_id=run-late`) &&
			strings.Contains(h.logs.String(), `open_pairs=[SOLUSDT/4h]`)
	})

	// The last final batch arrives late: written, but the run stays closed.
	last := h.publish(batch("run-late", "SOLUSDT", 1, true, series(t0+2*h4, 2, 0)), "")
	h.waitApplied(last.Sequence)
	eventually(t, "SOLUSDT completed", func() bool { return pairCompleted(h, "run-late", "SOLUSDT") })
	w.stop()        // returns after the announce that followed the late batch
	h.restart(fast) // a restart announces nothing again
	if n := len(h.events(candles.KindSyncTimeout)); n != 1 {
		t.Errorf("%d sync.timeout events, want 1", n)
	}
	if n := len(h.events(candles.KindSyncCompleted)); n != 0 {
		t.Errorf("%d sync.completed events for a timed-out run, want 0", n)
	}
	h.assertDB()
	if got := h.runCandles("run-late"); got != 7 {
		t.Errorf("run counted %d candles, want 7 (late ones included)", got)
	}
}

// Batches published before the deadline but applied after it (the writer
// was down) complete the run: a timeout is only declared once everything
// JetStream stored before the deadline has been applied.
func TestQueuedBatchesBeatTheDeadline(t *testing.T) {
	h := newHarness(t)
	w := h.start(func(o *writer.Options) { o.DeadlineEvery = 20 * time.Millisecond })
	deadline := time.Now().Add(3 * time.Second)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-q"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}, PairsTotal: 2, Deadline: deadline}
	h.event(&started, "")
	seq := h.lastSeq(candles.EventSubject(candles.KindSyncStarted))
	eventually(t, "the run registered", func() bool { return h.watermark(candles.StreamEvents) >= seq })
	w.stop()
	for i, s := range []string{"BTCUSDT", "ETHUSDT"} {
		for p := 0; p < 20; p++ {
			h.publish(batch("run-q", s, p, p == 19, series(t0+int64(p*50)*h4, 50, float64(i))), "")
		}
	}
	if time.Now().After(deadline) {
		t.Fatal("the test was too slow to publish before the deadline")
	}
	time.Sleep(time.Until(deadline) + 200*time.Millisecond)
	h.start(func(o *writer.Options) { o.DeadlineEvery = 20 * time.Millisecond })
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	// No wait needed: a run that completed can no longer time out, and one
	// that timed out would never have completed.
	if n := len(h.events(candles.KindSyncTimeout)); n != 0 {
		t.Errorf("%d sync.timeout events for a run whose batches were all published in time", n)
	}
	h.assertDB()
}
