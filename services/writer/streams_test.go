package writer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/writer"
)

// EVENTS deleted while the writer runs: the writer creates it again
// (resource.recreated), finds that its EVENTS watermark counted in the old
// stream (stream.replaced, watermark reset to 0), so a run started on the
// new stream, whose sync.started has a sequence below the old watermark,
// is tracked and completes.
func TestEventsStreamReplacedWhileRunning(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	// Enough run events that the old watermark is well past the first
	// sequences of the new stream.
	for i := range 20 {
		failed := candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, "run-0"),
			Symbol: "SOLUSDT", Interval: "4h", Reason: fmt.Sprint("attempt ", i)}
		h.event(&failed, "")
	}
	last := h.lastSeq(candles.EventSubject(candles.KindPairFailed))
	eventually(t, "the run events handled", func() bool { return h.watermark(candles.StreamEvents) >= last })

	if err := h.js.DeleteStream(context.Background(), candles.StreamEvents); err != nil {
		t.Fatal(err)
	}
	var replaced candles.StreamReplaced
	eventually(t, "stream.replaced for EVENTS", func() bool {
		if _, err := h.js.Stream(context.Background(), candles.StreamEvents); err != nil {
			return false
		}
		evs := h.events(candles.KindStreamReplaced)
		return len(evs) == 1 && json.Unmarshal(evs[0], &replaced) == nil
	})
	if replaced.Stream != candles.StreamEvents || replaced.OldWatermark != last || replaced.NewIdentity == replaced.OldIdentity {
		t.Fatalf("stream.replaced = %+v, want EVENTS with the old watermark %d", replaced, last)
	}
	recreated := map[string]bool{}
	for _, raw := range h.events(candles.KindResourceRecreated) {
		var ev candles.ResourceRecreated
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		recreated[ev.Resource] = ev.Service == writer.ServiceName
	}
	if !recreated["stream EVENTS"] {
		t.Fatalf("resource.recreated = %v, want the EVENTS stream from the writer", recreated)
	}

	btc := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-1"),
		Pairs: []candles.Pair{btc}, PairsTotal: 1}
	h.event(&started, "sync.started:run-1")
	if seq := h.lastSeq(candles.EventSubject(candles.KindSyncStarted)); seq >= last {
		t.Fatalf("sync.started at %d, not below the old watermark %d: the test proves nothing", seq, last)
	}
	h.publish(batch("run-1", "BTCUSDT", 0, true, series(t0, 3, 0)), "")
	eventually(t, "sync.completed of run-1", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	h.assertDB()
}
