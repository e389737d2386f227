package store_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

var (
	btc = candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	eth = candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	sol = candles.Pair{Symbol: "SOLUSDT", Interval: "4h"}
)

// op is one step of a run scenario; it returns the "complete" it reports.
type op struct {
	name string
	do   func(ctx context.Context, s *store.Store, seq uint64) (bool, error)
}

func register(pairs ...candles.Pair) op {
	return op{"register", func(ctx context.Context, s *store.Store, _ uint64) (bool, error) {
		return s.RegisterRun(ctx, "r1", pairs, epoch, "daily", time.Time{}, nil)
	}}
}

func page(p candles.Pair, final bool, n int) op {
	return op{"batch " + p.String(), func(ctx context.Context, s *store.Store, seq uint64) (bool, error) {
		a, err := s.ApplyBatch(ctx, "CANDLES", seq, batch("r1", p.Symbol, final, series(t0+int64(seq)*1000*h4, n, 0)))
		return a.RunComplete, err
	}}
}

// pageFrom applies a page of n candles from slot first of the series, so
// pages can overlap.
func pageFrom(p candles.Pair, final bool, first int64, n int) op {
	return op{"batch " + p.String(), func(ctx context.Context, s *store.Store, seq uint64) (bool, error) {
		a, err := s.ApplyBatch(ctx, "CANDLES", seq, batch("r1", p.Symbol, final, series(t0+first*h4, n, 0)))
		return a.RunComplete, err
	}}
}

func fail(p candles.Pair, reason string) op {
	return op{"fail " + p.String(), func(ctx context.Context, s *store.Store, _ uint64) (bool, error) {
		return s.FailPair(ctx, "r1", p.Symbol, p.Interval, reason)
	}}
}

// at is the fake time of step i.
func at(i int) time.Time { return epoch.Add(time.Duration(i+1) * time.Minute) }

func TestRunTracking(t *testing.T) {
	type step struct {
		op       op
		complete bool
	}
	failedAt := func(i int, p candles.Pair, reason string) candles.PairFailed {
		h := candles.NewHeader(candles.KindPairFailed, "r1")
		h.Time = at(i)
		return candles.PairFailed{EventHeader: h, Symbol: p.Symbol, Interval: p.Interval, Reason: reason}
	}
	completed := func(finishedStep int, total, ok, failed int, n int64, fails ...candles.PairFailed) []candles.SyncCompleted {
		h := candles.NewHeader(candles.KindSyncCompleted, "r1")
		h.Time = at(finishedStep)
		return []candles.SyncCompleted{{EventHeader: h, PairsTotal: total, PairsOK: ok, PairsFailed: failed,
			Candles: n, CandlesNew: n, StartedAt: epoch, FinishedAt: at(finishedStep), Failed: fails}}
	}
	refetched := func(finishedStep int, n, fresh int64) []candles.SyncCompleted {
		ev := completed(finishedStep, 1, 1, 0, n)
		ev[0].CandlesNew, ev[0].CandlesRefetched = fresh, n-fresh
		return ev
	}
	tests := []struct {
		name  string
		steps []step
		want  []candles.SyncCompleted
	}{{
		name: "register before batches",
		steps: []step{
			{register(btc, eth, sol), false},
			{page(btc, false, 3), false},
			{page(btc, true, 2), false},
			{fail(eth, "HTTP 500"), false},
			{page(sol, true, 4), true},
		},
		want: completed(4, 3, 2, 1, 9, failedAt(3, eth, "HTTP 500")),
	}, {
		name: "batches and failures before register",
		steps: []step{
			{page(btc, true, 2), false},
			{fail(eth, "timeout"), false},
			{page(sol, false, 1), false},
			{page(sol, true, 0), false},
			{register(btc, eth, sol, btc), true},
		},
		want: completed(4, 3, 2, 1, 3, failedAt(1, eth, "timeout")),
	}, {
		name: "completion is reported once",
		steps: []step{
			{register(btc), false},
			{page(btc, true, 1), true},
			{page(btc, true, 1), false},
			{register(btc), false},
			{fail(btc, "late"), false},
		},
		want: completed(1, 1, 1, 0, 2),
	}, {
		name: "an ok pair stays ok, a failed pair keeps its first reason",
		steps: []step{
			{register(btc, eth), false},
			{page(btc, true, 1), false},
			{fail(btc, "late failure"), false},
			{fail(eth, "first"), true},
			{fail(eth, "second"), false},
		},
		want: completed(3, 2, 1, 1, 1, failedAt(3, eth, "first")),
	}, {
		name: "a failed pair stays failed when its final batch arrives",
		steps: []step{
			{register(btc), false},
			{fail(btc, "page rejected"), true},
			{page(btc, true, 2), false},
		},
		want: completed(1, 1, 0, 1, 2, failedAt(1, btc, "page rejected")),
	}, {
		name: "candles fetched again are told from new ones",
		steps: []step{
			{register(btc), false},
			{pageFrom(btc, false, 0, 3), false},
			{pageFrom(btc, true, 1, 4), true}, // slots 1, 2 again and 3, 4 new
		},
		want: refetched(2, 7, 5),
	}, {
		name:  "a run with no pairs completes when registered",
		steps: []step{{register(), true}},
		want:  completed(0, 0, 0, 0, 0),
	}, {
		name: "an unregistered run never completes",
		steps: []step{
			{page(btc, true, 1), false},
			{fail(eth, "x"), false},
		},
	}, {
		name: "a pending pair keeps the run open",
		steps: []step{
			{register(btc, eth), false},
			{page(btc, true, 1), false},
			{page(eth, false, 5), false},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			s := openStore(t, tempDB(t), store.WithNow(clk.Now))
			ctx := context.Background()
			for i, st := range tt.steps {
				clk.Set(at(i))
				got, err := st.op.do(ctx, s, uint64(i+1))
				if err != nil {
					t.Fatalf("step %d (%s): %v", i, st.op.name, err)
				}
				if got != st.complete {
					t.Errorf("step %d (%s): complete = %v, want %v", i, st.op.name, got, st.complete)
				}
			}
			got, err := s.PendingAnnouncements(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PendingAnnouncements:\n got %+v\nwant %+v", got, tt.want)
			}
			if len(got) == 0 {
				return
			}
			if err := s.MarkAnnounced(ctx, "r1"); err != nil {
				t.Fatal(err)
			}
			if got, err := s.PendingAnnouncements(ctx); err != nil || len(got) != 0 {
				t.Errorf("after MarkAnnounced: %+v, %v; want none", got, err)
			}
		})
	}
}

func TestPendingPairCompletions(t *testing.T) {
	clk := newClock()
	s := openStore(t, tempDB(t), store.WithNow(clk.Now))
	ctx := context.Background()
	steps := []op{register(btc, eth), page(btc, false, 3), page(btc, true, 2), page(eth, false, 1), page(btc, true, 1)}
	for i, o := range steps {
		clk.Set(at(i))
		if _, err := o.do(ctx, s, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	want := candles.PairCompleted{EventHeader: candles.NewHeader(candles.KindPairCompleted, "r1"), Symbol: "BTCUSDT", Interval: "4h", Candles: 6, CandlesNew: 6}
	want.Time = at(2)
	got, err := s.PendingPairCompletions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []candles.PairCompleted{want}) {
		t.Errorf("PendingPairCompletions:\n got %+v\nwant %+v", got, []candles.PairCompleted{want})
	}
	if err := s.MarkPairAnnounced(ctx, "r1", "BTCUSDT", "4h"); err != nil {
		t.Fatal(err)
	}
	// Another final page of an ok pair does not announce it again.
	if _, err := page(btc, true, 1).do(ctx, s, 10); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PendingPairCompletions(ctx); err != nil || len(got) != 0 {
		t.Errorf("after MarkPairAnnounced: %+v, %v; want none", got, err)
	}
}

func TestRunProgress(t *testing.T) {
	clk := newClock()
	s := openStore(t, tempDB(t), store.WithNow(clk.Now))
	ctx := context.Background()
	if _, err := s.RegisterRun(ctx, "r2", []candles.Pair{btc}, epoch.Add(-time.Hour), "", time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	for i, o := range []op{register(btc, eth, sol), page(btc, false, 3), page(btc, true, 2), fail(eth, "x"), page(sol, false, 4)} {
		if _, err := o.do(ctx, s, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.RunProgress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Progress{
		{RunID: "r2", PairsTotal: 1, PairsDone: 0, Candles: 0, StartedAt: epoch.Add(-time.Hour)},
		{RunID: "r1", PairsTotal: 3, PairsDone: 2, Candles: 9, StartedAt: epoch},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RunProgress:\n got %+v\nwant %+v", got, want)
	}
	if _, err := page(sol, true, 0).do(ctx, s, 20); err != nil {
		t.Fatal(err)
	}
	if got, err := s.RunProgress(ctx); err != nil || len(got) != 1 || got[0].RunID != "r2" {
		t.Errorf("after r1 completed: %+v, %v; want only r2", got, err)
	}
}

func TestCoverage(t *testing.T) {
	s := openStore(t, tempDB(t))
	ctx := context.Background()
	bnb := candles.Pair{Symbol: "BNBUSDT", Interval: "1d"}
	seq := uint64(0)
	for _, b := range []candles.Batch{
		batch("", "ETHUSDT", false, series(t0, 5, 0)),
		batch("", "BTCUSDT", false, series(t0+10*h4, 2, 0)),
		batch("", "BTCUSDT", false, series(t0+20*h4, 3, 0)),
		{V: 1, Symbol: "BTCUSDT", Interval: "1h", Candles: []candles.Candle{{OpenTime: t0, CloseTime: t0 + 3600000 - 1, Open: 1, High: 1, Low: 1, Close: 1}}},
	} {
		seq++
		if _, err := s.ApplyBatch(ctx, "CANDLES", seq, b); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		pairs []candles.Pair
		want  []candles.PairCoverage
	}{{
		name: "all stored pairs",
		want: []candles.PairCoverage{
			{Symbol: "BTCUSDT", Interval: "1h", First: t0, Last: t0, Count: 1, Expected: 1},
			{Symbol: "BTCUSDT", Interval: "4h", First: t0 + 10*h4, Last: t0 + 22*h4, Count: 5, Expected: 13},
			{Symbol: "ETHUSDT", Interval: "4h", First: t0, Last: t0 + 4*h4, Count: 5, Expected: 5},
		},
	}, {
		name:  "asked pairs in the order asked, empty ones with zeros",
		pairs: []candles.Pair{eth, bnb, btc},
		want: []candles.PairCoverage{
			{Symbol: "ETHUSDT", Interval: "4h", First: t0, Last: t0 + 4*h4, Count: 5, Expected: 5},
			{Symbol: "BNBUSDT", Interval: "1d"},
			{Symbol: "BTCUSDT", Interval: "4h", First: t0 + 10*h4, Last: t0 + 22*h4, Count: 5, Expected: 13},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Coverage(ctx, candles.CoverageRequest{Pairs: tt.pairs})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Coverage:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	empty := openStore(t, tempDB(t))
	if got, err := empty.Coverage(ctx, candles.CoverageRequest{}); err != nil || len(got) != 0 {
		t.Errorf("empty database: %+v, %v", got, err)
	}
}

func TestRunTimeouts(t *testing.T) {
	clk := newClock()
	s := openStore(t, tempDB(t), store.WithNow(clk.Now))
	ctx := context.Background()
	deadline := epoch.Add(30 * time.Minute)
	mustRegister := func(id string, pairs []candles.Pair, dl time.Time) {
		t.Helper()
		if _, err := s.RegisterRun(ctx, id, pairs, epoch, "daily", dl, nil); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(seq uint64, runID string, p candles.Pair, final bool) store.Applied {
		t.Helper()
		a, err := s.ApplyBatch(ctx, "CANDLES", seq, batch(runID, p.Symbol, final, series(t0+int64(seq)*10*h4, 2, 0)))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	mustRegister("r1", []candles.Pair{btc, eth, sol}, deadline)
	mustRegister("r2", []candles.Pair{btc}, epoch.Add(10*time.Minute))
	mustRegister("r3", []candles.Pair{eth}, time.Time{}) // no deadline
	if d, err := s.NextDeadline(ctx); err != nil || !d.Equal(epoch.Add(10*time.Minute)) {
		t.Errorf("NextDeadline = %v, %v; want r2's", d, err)
	}
	apply(1, "r1", btc, true)
	if _, err := s.FailPair(ctx, "r1", "ETHUSDT", "4h", "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	if a := apply(2, "r2", btc, true); !a.RunComplete {
		t.Fatal("r2 did not complete")
	}
	if d, err := s.NextDeadline(ctx); err != nil || !d.Equal(deadline) {
		t.Errorf("NextDeadline = %v, %v; want r1's (r2 completed)", d, err)
	}
	if n, err := s.TimeOutRuns(ctx, deadline); err != nil || n != 0 {
		t.Errorf("TimeOutRuns at the deadline = %d, %v; want 0 (only a deadline before the cutoff has passed)", n, err)
	}
	closedAt := deadline.Add(time.Second)
	clk.Set(closedAt)
	if n, err := s.TimeOutRuns(ctx, deadline.Add(time.Millisecond)); err != nil || n != 1 {
		t.Fatalf("TimeOutRuns = %d, %v; want 1", n, err)
	}
	h := candles.NewHeader(candles.KindSyncTimeout, "r1")
	h.Time = closedAt
	want := []candles.SyncTimeout{{EventHeader: h, Deadline: deadline, OpenPairs: []candles.Pair{sol}, PairsOK: 1, PairsFailed: 1}}
	check := func(when string) {
		t.Helper()
		got, err := s.PendingTimeouts(ctx)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: PendingTimeouts = %+v, %v\nwant %+v", when, got, err, want)
		}
	}
	check("after the timeout")

	// The late final batch of the open pair is written but completes nothing.
	if a := apply(3, "r1", sol, true); a.RunComplete || a.Inserted != 2 {
		t.Errorf("late batch = %+v, want 2 inserted and no completion", a)
	}
	check("after a late batch")
	if ann, err := s.PendingAnnouncements(ctx); err != nil || len(ann) != 1 || ann[0].RunID != "r2" {
		t.Errorf("PendingAnnouncements = %+v, %v; want only r2", ann, err)
	}
	if p, err := s.RunProgress(ctx); err != nil || len(p) != 1 || p[0].RunID != "r3" {
		t.Errorf("RunProgress = %+v, %v; want only r3", p, err)
	}
	if n, err := s.TimeOutRuns(ctx, closedAt.Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("second TimeOutRuns = %d, %v; want 0", n, err)
	}
	if err := s.MarkTimeoutAnnounced(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PendingTimeouts(ctx); err != nil || len(got) != 0 {
		t.Errorf("after MarkTimeoutAnnounced: %+v, %v; want none", got, err)
	}
	if d, err := s.NextDeadline(ctx); err != nil || !d.IsZero() {
		t.Errorf("NextDeadline = %v, %v; want none", d, err)
	}
}

func TestRunRepairAndGapCounts(t *testing.T) {
	s := openStore(t, tempDB(t))
	ctx := context.Background()
	if _, err := s.RegisterRun(ctx, "r1", []candles.Pair{btc, eth}, epoch, "", time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	steps := []candles.Batch{
		// BTC: slots 4 and 5 are an outage.
		spanned(0, 10, at4h(0, 1, 2, 3, 6, 7, 8, 9)),
		// The audit re-fetched holes: slot 2 was stored already, 11 and 12 are new.
		{V: candles.Version, Symbol: "BTCUSDT", Interval: "4h", Repair: true, Candles: at4h(2, 11, 12)},
		{V: candles.Version, Symbol: "BTCUSDT", Interval: "4h", Final: true},
		// ETH: slot 1 is an outage.
		func() candles.Batch { b := spanned(0, 4, at4h(0, 2, 3)); b.Symbol, b.Final = "ETHUSDT", true; return b }(),
	}
	for i, b := range steps {
		b.RunID = "r1"
		if _, err := s.ApplyBatch(ctx, "CANDLES", uint64(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	ann, err := s.PendingAnnouncements(ctx)
	if err != nil || len(ann) != 1 {
		t.Fatalf("PendingAnnouncements = %+v, %v", ann, err)
	}
	if got := ann[0]; got.Repaired != 2 || got.GapsRecorded != 3 || got.Candles != 14 || got.PairsOK != 2 {
		t.Errorf("sync.completed = %+v, want repaired 2, gaps_recorded 3, candles 14, 2 pairs ok", got)
	}
	// Each pair.completed carries the pair's share of those counts.
	pcs, err := s.PendingPairCompletions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, pc := range pcs {
		got = append(got, fmt.Sprintf("%s candles=%d new=%d refetched=%d repaired=%d", pc.Symbol, pc.Candles, pc.CandlesNew, pc.CandlesRefetched, pc.Repaired))
	}
	want := []string{
		// 8 + 3 candles; slot 2 of the repair batch was stored already.
		"BTCUSDT candles=11 new=10 refetched=1 repaired=2",
		"ETHUSDT candles=3 new=3 refetched=0 repaired=0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pair.completed:\n got %q\nwant %q", got, want)
	}
}
