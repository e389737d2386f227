package store_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// The watermark belongs to one stream: the first identity seen is adopted
// with the watermark as it is, the same identity changes nothing (also
// after reopening), and another identity (the stream created again) resets
// the watermark to 0 and marks a full audit due in the same transaction.
// The flag stays until a run that started after it was set completes.
func TestStreamIdentity(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	path := tempDB(t)
	s := openStore(t, path, store.WithNow(clk.Now))
	if _, err := s.ApplyBatch(ctx, "CANDLES", 278, spanned(0, 2, at4h(0, 1))); err != nil {
		t.Fatal(err)
	}
	const first, second = "2026-12-04T10:00:00.123Z", "2026-12-04T11:00:00.456Z"

	steps := []struct {
		name     string
		identity string
		want     store.StreamBinding
		wm       uint64
		reopen   bool
	}{
		{"a database without an identity adopts the stream's", first,
			store.StreamBinding{Adopted: true, OldWatermark: 278}, 278, false},
		{"the same stream changes nothing", first,
			store.StreamBinding{Previous: first, OldWatermark: 278}, 278, true},
		{"a stream created again resets the watermark", second,
			store.StreamBinding{Replaced: true, Previous: first, OldWatermark: 278}, 0, false},
		{"and is then the stream", second,
			store.StreamBinding{Previous: second}, 0, true},
	}
	for _, st := range steps {
		if st.reopen {
			s.Close()
			s = openStore(t, path, store.WithNow(clk.Now))
		}
		got, err := s.BindStream(ctx, "CANDLES", st.identity)
		if err != nil || got != st.want {
			t.Fatalf("%s: BindStream = %+v, %v; want %+v", st.name, got, err, st.want)
		}
		if wm, err := s.Watermark(ctx, "CANDLES"); err != nil || wm != st.wm {
			t.Fatalf("%s: watermark %d, %v; want %d", st.name, wm, err, st.wm)
		}
		if id, err := s.StreamIdentity(ctx, "CANDLES"); err != nil || id != st.identity {
			t.Fatalf("%s: identity %q, %v; want %q", st.name, id, err, st.identity)
		}
	}
	// EVENTS has its own identity and watermark.
	if b, err := s.BindStream(ctx, "EVENTS", first); err != nil || !b.Adopted {
		t.Fatalf("EVENTS: %+v, %v", b, err)
	}

	due, err := s.FullAuditDue(ctx)
	if err != nil || !due.Equal(epoch) {
		t.Fatalf("FullAuditDue = %v, %v; want %v", due, err, epoch)
	}
	// The flag is cleared only by a run that started after it was set
	// and completed every pair the database holds.
	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	ethBatch := spanned(0, 1, at4h(0))
	ethBatch.Symbol = "ETHUSDT"
	if _, err := s.ApplyBatch(ctx, "CANDLES", 1, ethBatch); err != nil {
		t.Fatal(err)
	}
	runs := []struct {
		id      string
		started time.Time
		pairs   []candles.Pair
		clears  bool
	}{
		{"planned-before", epoch.Add(-time.Minute), []candles.Pair{btc, eth}, false},
		{"one-pair", epoch.Add(time.Minute), []candles.Pair{btc}, false},
		{"audit", epoch.Add(2 * time.Minute), []candles.Pair{btc, eth}, true},
	}
	for i, r := range runs {
		if _, err := s.RegisterRun(ctx, r.id, r.pairs, r.started, "", time.Time{}, nil); err != nil {
			t.Fatal(err)
		}
		for j, p := range r.pairs {
			b := batch(r.id, p.Symbol, true, nil)
			if _, err := s.ApplyBatch(ctx, "CANDLES", uint64(10+10*i+j), b); err != nil {
				t.Fatal(err)
			}
		}
		if cleared, err := s.ClearFullAudit(ctx, r.id); err != nil || cleared != r.clears {
			t.Fatalf("run %s: ClearFullAudit = %v, %v; want %v", r.id, cleared, err, r.clears)
		}
	}
	if due, err := s.FullAuditDue(ctx); err != nil || !due.IsZero() {
		t.Fatalf("FullAuditDue after the audit = %v, %v", due, err)
	}
}

// Coverage measures a pair from where its history should start: the
// earliest span a batch answered for (a request's start, or for "listing"
// the first candle the exchange returned), not the first stored candle. A
// pair whose early history is missing is then incomplete, and its Missing
// names the early slots for the gap audit to re-fetch.
func TestCoverageFromExpectedStart(t *testing.T) {
	ctx := context.Background()
	btc := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	tests := []struct {
		name    string
		batches []candles.Batch
		// lost are rows that never reached the database.
		lost []int
		want candles.PairCoverage
	}{{
		name:    "history from its first candle: complete",
		batches: []candles.Batch{spanned(0, 10, at4h(slots(0, 10)...))},
		want:    candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(0), Last: slot(9), Count: 10, Expected: 10},
	}, {
		name: "early history lost, later pages stored: the early slots are missing",
		batches: []candles.Batch{
			spanned(0, 5, at4h(slots(0, 5)...)),
			spanned(5, 10, at4h(slots(5, 10)...)),
		},
		lost: slots(0, 5),
		want: candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(5), Last: slot(9), ExpectedFrom: slot(0),
			Count: 5, Expected: 10, Missing: []candles.Range{r4h(0, 5)}},
	}, {
		name: "a later request from an earlier start widens the range",
		batches: []candles.Batch{
			spanned(3, 10, at4h(slots(3, 10)...)),
			spanned(1, 3, at4h(1, 2)),
		},
		lost: []int{1, 2},
		want: candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(3), Last: slot(9), ExpectedFrom: slot(1),
			Count: 7, Expected: 9, Missing: []candles.Range{r4h(1, 3)}},
	}, {
		name: "known gaps before the first stored candle are not missing",
		batches: []candles.Batch{
			spanned(0, 6, at4h(0, 3, 4, 5)),
		},
		lost: []int{0},
		want: candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(3), Last: slot(5), ExpectedFrom: slot(0),
			Count: 3, Expected: 6, KnownGaps: []candles.Range{r4h(1, 3)}, Missing: []candles.Range{r4h(0, 1)}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempDB(t)
			s := openStore(t, path)
			for i, b := range tt.batches {
				if _, err := s.ApplyBatch(ctx, "CANDLES", uint64(i+1), b); err != nil {
					t.Fatal(err)
				}
			}
			for _, i := range tt.lost {
				if _, err := rawDB(t, path).Exec(`DELETE FROM candles WHERE open_time = ?`, slot(i)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.Coverage(ctx, candles.CoverageRequest{Pairs: []candles.Pair{btc}, Gaps: true})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, []candles.PairCoverage{tt.want}) {
				t.Errorf("Coverage:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// A run fetching a pair from its listing leaves the pair "listing pending"
// until the run's first page of it is applied; if that page is lost (a
// replaced stream), later pages or other runs do not make the pair look
// complete from a later candle. A first page applied before the run's
// sync.started was handled has done its part already.
func TestListingPending(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempDB(t))
	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	pending := func(p candles.Pair) bool {
		t.Helper()
		cov, err := s.Coverage(ctx, candles.CoverageRequest{Pairs: []candles.Pair{p}})
		if err != nil {
			t.Fatal(err)
		}
		return cov[0].ListingPending
	}
	page := func(seq uint64, runID, symbol string, n int, from, to int) {
		t.Helper()
		b := spanned(from, to, at4h(slots(from, to)...))
		b.RunID, b.Symbol, b.Page = runID, symbol, n
		if _, err := s.ApplyBatch(ctx, "CANDLES", seq, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RegisterRun(ctx, "lost", []candles.Pair{btc, eth}, epoch, "", time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	// ETH's first page is applied before the run's sync.started is handled.
	page(1, "lost", "ETHUSDT", 0, 0, 5)
	if err := s.ExpectListing(ctx, "lost", []candles.Pair{btc, eth}); err != nil {
		t.Fatal(err)
	}
	if !pending(btc) || pending(eth) {
		t.Fatalf("after sync.started: pending BTC %v ETH %v; want BTC only", pending(btc), pending(eth))
	}
	// BTC's first page is lost; its second page and an incremental run's
	// page arrive: still pending.
	page(2, "lost", "BTCUSDT", 1, 5, 10)
	page(3, "incremental", "BTCUSDT", 0, 10, 12)
	if !pending(btc) {
		t.Fatal("BTC not pending after its first page was lost")
	}
	// The next run from the listing brings its first page.
	if err := s.ExpectListing(ctx, "again", []candles.Pair{btc}); err != nil {
		t.Fatal(err)
	}
	page(4, "again", "BTCUSDT", 0, 0, 5)
	if pending(btc) {
		t.Fatal("BTC still pending after the first page of a listing run")
	}
}
