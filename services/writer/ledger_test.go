package writer_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// A run's covered spans record known gaps, its repair pages count as
// repaired, sync.completed sums both, and candles.api.coverage shows the
// ledger: expected count, known gaps, last sync and, when asked, the holes.
func TestGapLedgerThroughTheStream(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	slot := func(i int) int64 { return t0 + int64(i)*h4 }
	pick := func(slots ...int) []candles.Candle {
		var out []candles.Candle
		for _, s := range slots {
			out = append(out, series(slot(s), 1, 0)...)
		}
		return out
	}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-gaps"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}, PairsTotal: 1}
	h.event(&started, "")
	// Page 0 covers slots [0, 10): 4 and 5 are an exchange outage.
	p0 := batch("run-gaps", "BTCUSDT", 0, false, pick(0, 1, 2, 3, 6, 7, 8, 9))
	p0.From, p0.Until = slot(0), slot(10)
	// A repair page refills slots 12 and 13 (lost from the database
	// earlier, say); page 2 covers [10, 16) and ends the pair.
	p1 := batch("run-gaps", "BTCUSDT", 1, false, pick(12, 13))
	p1.Repair = true
	p2 := batch("run-gaps", "BTCUSDT", 2, true, pick(10, 11, 12, 13, 14, 15))
	p2.From, p2.Until = slot(10), slot(16)
	for _, b := range []candles.Batch{p0, p1, p2} {
		h.publish(b, "")
	}
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	var done candles.SyncCompleted
	if err := json.Unmarshal(h.events(candles.KindSyncCompleted)[0], &done); err != nil {
		t.Fatal(err)
	}
	if done.Repaired != 2 || done.GapsRecorded != 2 || done.Candles != 16 {
		t.Errorf("sync.completed = %+v, want repaired 2, gaps_recorded 2, candles 16", done)
	}
	h.exec(`DELETE FROM candles WHERE open_time = ?`, slot(8))

	resp, err := h.nc.Request(candles.SubjectAPICoverage, []byte(`{"pairs":[{"symbol":"BTCUSDT","interval":"4h"}],"gaps":true}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got candles.CoverageResponse
	if err := json.Unmarshal(resp.Data, &got); err != nil {
		t.Fatalf("reply %s: %v", resp.Data, err)
	}
	if len(got.Pairs) != 1 {
		t.Fatalf("coverage = %s", resp.Data)
	}
	c := got.Pairs[0]
	if c.LastSync.IsZero() || time.Since(c.LastSync) > time.Minute {
		t.Errorf("last_sync = %v, want about now", c.LastSync)
	}
	c.LastSync = time.Time{}
	want := candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(0), Last: slot(15), Count: 13, Expected: 16,
		KnownGaps: []candles.Range{{From: slot(4), Until: slot(6)}}, Missing: []candles.Range{{From: slot(8), Until: slot(9)}}}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("coverage = %+v, want %+v", c, want)
	}
}
