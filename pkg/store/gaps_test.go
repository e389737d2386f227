package store_test

import (
	"context"
	"database/sql"
	"reflect"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// slot is the open time of the i-th 4h candle from t0.
func slot(i int) int64 { return t0 + int64(i)*h4 }

// at4h returns the 4h candles of the given slots, in order.
func at4h(slots ...int) []candles.Candle {
	out := make([]candles.Candle, len(slots))
	for i, s := range slots {
		out[i] = series(slot(s), 1, float64(s))[0]
	}
	return out
}

// slots returns the slot numbers [from, to).
func slots(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// spanned is a batch of BTCUSDT/4h candles that covers the slots [from, to).
func spanned(from, to int, cs []candles.Candle) candles.Batch {
	b := batch("", "BTCUSDT", false, cs)
	b.From, b.Until = slot(from), slot(to)
	return b
}

// r4h is the range of 4h slots [from, to).
func r4h(from, to int) candles.Range { return candles.Range{From: slot(from), Until: slot(to)} }

// gapsOf reads known_gaps of a pair directly.
func gapsOf(t *testing.T, db *sql.DB, symbol, interval string) []candles.Range {
	t.Helper()
	rs, err := db.Query(`SELECT from_time, until_time FROM known_gaps WHERE symbol = ? AND interval = ? ORDER BY from_time`, symbol, interval)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []candles.Range
	for rs.Next() {
		var r candles.Range
		if err := rs.Scan(&r.From, &r.Until); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestKnownGaps(t *testing.T) {
	type step struct {
		b            candles.Batch
		gapsRecorded int
		gapsFilled   int
	}
	tests := []struct {
		name  string
		steps []step
		want  []candles.Range
	}{{
		name:  "empty slots of the covered span are recorded",
		steps: []step{{spanned(0, 10, at4h(0, 1, 2, 5, 6, 8, 9)), 3, 0}},
		want:  []candles.Range{r4h(3, 5), r4h(7, 8)},
	}, {
		name:  "a span with every slot records nothing (fast path)",
		steps: []step{{spanned(0, 10, at4h(slots(0, 10)...)), 0, 0}},
	}, {
		name: "slots stored by earlier batches are not gaps",
		steps: []step{
			{batch("", "BTCUSDT", false, at4h(3, 4)), 0, 0},
			{spanned(0, 6, at4h(0, 1, 2, 5)), 0, 0},
		},
	}, {
		name:  "slots before the pair's first candle precede the listing",
		steps: []step{{spanned(0, 8, at4h(3, 4, 6, 7)), 1, 0}},
		want:  []candles.Range{r4h(5, 6)},
	}, {
		name:  "a span without any candle of a pair with none records nothing",
		steps: []step{{spanned(0, 8, nil), 0, 0}},
	}, {
		name:  "trailing empty slots are gaps",
		steps: []step{{spanned(0, 6, at4h(0, 1, 2, 3)), 2, 0}},
		want:  []candles.Range{r4h(4, 6)},
	}, {
		name: "adjacent gaps merge",
		steps: []step{
			{spanned(0, 5, at4h(0, 1, 2)), 2, 0},
			{spanned(5, 8, at4h(6, 7)), 1, 0},
		},
		want: []candles.Range{r4h(3, 6)},
	}, {
		name: "overlapping spans count each slot once",
		steps: []step{
			{spanned(0, 6, at4h(0, 1, 5)), 3, 0},
			{spanned(1, 9, at4h(1, 5, 8)), 2, 0},
		},
		want: []candles.Range{r4h(2, 5), r4h(6, 8)},
	}, {
		name: "a gap bridging two known gaps merges all three",
		steps: []step{
			{spanned(0, 2, at4h(0)), 1, 0},
			{batch("", "BTCUSDT", false, at4h(5)), 0, 0},
			{spanned(4, 5, nil), 1, 0},
			{spanned(2, 4, nil), 2, 0},
		},
		want: []candles.Range{r4h(1, 5)},
	}, {
		name: "a candle inside a gap splits it",
		steps: []step{
			{spanned(0, 10, at4h(0, 1, 2, 8, 9)), 5, 0},
			{batch("", "BTCUSDT", false, at4h(5)), 0, 1},
		},
		want: []candles.Range{r4h(3, 5), r4h(6, 8)},
	}, {
		name: "candles at a gap's edges shrink it",
		steps: []step{
			{spanned(0, 10, at4h(0, 1, 2, 8, 9)), 5, 0},
			{batch("", "BTCUSDT", false, at4h(3, 7)), 0, 2},
		},
		want: []candles.Range{r4h(4, 7)},
	}, {
		name: "a repaired range removes its gap, and the repair's own span records nothing new",
		steps: []step{
			{spanned(0, 10, at4h(0, 1, 2, 8, 9)), 5, 0},
			{spanned(3, 8, at4h(slots(3, 8)...)), 0, 5},
		},
	}, {
		name: "a candle between two gaps leaves both alone",
		steps: []step{
			{spanned(0, 7, at4h(0, 2, 4, 6)), 3, 0},
			{batch("", "BTCUSDT", false, at4h(2, 4)), 0, 0},
		},
		want: []candles.Range{r4h(1, 2), r4h(3, 4), r4h(5, 6)},
	}, {
		name:  "an unaligned span counts only whole slots inside it",
		steps: []step{{func() candles.Batch { b := spanned(0, 6, at4h(1, 2, 4)); b.From += 1000; b.Until -= 1000; return b }(), 2, 0}},
		want:  []candles.Range{r4h(3, 4), r4h(5, 6)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempDB(t)
			s := openStore(t, path)
			ctx := context.Background()
			for i, st := range tt.steps {
				a, err := s.ApplyBatch(ctx, "CANDLES", uint64(i+1), st.b)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if a.GapsRecorded != st.gapsRecorded || a.GapsFilled != st.gapsFilled {
					t.Errorf("step %d: recorded %d, filled %d; want %d, %d", i, a.GapsRecorded, a.GapsFilled, st.gapsRecorded, st.gapsFilled)
				}
			}
			if got := gapsOf(t, rawDB(t, path), "BTCUSDT", "4h"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("known gaps = %v, want %v", got, tt.want)
			}
		})
	}
}

// month returns the 1M candle opening on the first of the month.
func month(y int, m time.Month) candles.Candle {
	open := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	next := open.AddDate(0, 1, 0)
	return candles.Candle{OpenTime: open.UnixMilli(), CloseTime: next.UnixMilli() - 1,
		Open: 1, High: 2, Low: 1, Close: 2, Volume: 1, QuoteVolume: 1, Trades: 1}
}

func ms(y int, m time.Month) int64 { return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC).UnixMilli() }

// Calendar months differ in length: slots come from Interval.Next, never a
// fixed step.
func TestKnownGapsMonthly(t *testing.T) {
	path := tempDB(t)
	s := openStore(t, path)
	ctx := context.Background()
	b := candles.Batch{V: candles.Version, Symbol: "BTCUSDT", Interval: "1M",
		From: ms(2023, time.December), Until: ms(2024, time.July),
		Candles: []candles.Candle{month(2023, time.December), month(2024, time.January), month(2024, time.February),
			month(2024, time.April), month(2024, time.June)}}
	a, err := s.ApplyBatch(ctx, "CANDLES", 1, b)
	if err != nil {
		t.Fatal(err)
	}
	want := []candles.Range{{From: ms(2024, time.March), Until: ms(2024, time.April)}, {From: ms(2024, time.May), Until: ms(2024, time.June)}}
	if got := gapsOf(t, rawDB(t, path), "BTCUSDT", "1M"); !reflect.DeepEqual(got, want) || a.GapsRecorded != 2 {
		t.Errorf("known gaps = %v (%d recorded), want %v (2)", got, a.GapsRecorded, want)
	}
	// May shows up after all: the second gap goes.
	if _, err := s.ApplyBatch(ctx, "CANDLES", 2, candles.Batch{V: candles.Version, Symbol: "BTCUSDT", Interval: "1M",
		Candles: []candles.Candle{month(2024, time.May)}}); err != nil {
		t.Fatal(err)
	}
	// January goes missing from the database (not from the exchange).
	if _, err := rawDB(t, path).Exec(`DELETE FROM candles WHERE open_time = ?`, ms(2024, time.January)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Coverage(ctx, candles.CoverageRequest{Gaps: true})
	if err != nil {
		t.Fatal(err)
	}
	wantCov := []candles.PairCoverage{{Symbol: "BTCUSDT", Interval: "1M", First: ms(2023, time.December), Last: ms(2024, time.June),
		Count: 5, Expected: 7, KnownGaps: want[:1], Missing: []candles.Range{{From: ms(2024, time.January), Until: ms(2024, time.February)}}}}
	if !reflect.DeepEqual(got, wantCov) {
		t.Errorf("Coverage:\n got %+v\nwant %+v", got, wantCov)
	}
}

func TestCoverageLedger(t *testing.T) {
	clk := newClock()
	path := tempDB(t)
	s := openStore(t, path, store.WithNow(clk.Now))
	ctx := context.Background()
	btc4h := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	if _, err := s.RegisterRun(ctx, "r1", []candles.Pair{btc4h}, epoch, "daily", time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	// 20 slots; the exchange has no 15 and 16.
	b := spanned(0, 20, at4h(append(slots(0, 15), slots(17, 20)...)...))
	b.RunID, b.Final = "r1", true
	syncedAt := epoch.Add(90 * time.Second)
	clk.Set(syncedAt)
	if _, err := s.ApplyBatch(ctx, "CANDLES", 1, b); err != nil {
		t.Fatal(err)
	}
	// Rows lost from the database: holes to re-fetch.
	if _, err := rawDB(t, path).Exec(`DELETE FROM candles WHERE open_time IN (?, ?, ?)`, slot(5), slot(6), slot(12)); err != nil {
		t.Fatal(err)
	}
	// A pair whose rows are all gone still shows its known gap.
	eth := spanned(0, 4, at4h(0, 1, 3))
	eth.Symbol = "ETHUSDT"
	if _, err := s.ApplyBatch(ctx, "CANDLES", 2, eth); err != nil {
		t.Fatal(err)
	}
	if _, err := rawDB(t, path).Exec(`DELETE FROM candles WHERE symbol = 'ETHUSDT'`); err != nil {
		t.Fatal(err)
	}

	ledger := candles.PairCoverage{Symbol: "BTCUSDT", Interval: "4h", First: slot(0), Last: slot(19), Count: 15, Expected: 20,
		KnownGaps: []candles.Range{r4h(15, 17)}, LastSync: syncedAt}
	withMissing := ledger
	withMissing.Missing = []candles.Range{r4h(5, 7), r4h(12, 13)}
	// Its expected start stays: the batch answered from slot 0.
	ethLedger := candles.PairCoverage{Symbol: "ETHUSDT", Interval: "4h", ExpectedFrom: slot(0), KnownGaps: []candles.Range{r4h(2, 3)}}
	tests := []struct {
		name string
		req  candles.CoverageRequest
		want []candles.PairCoverage
	}{
		{"without gaps: no scan, no missing", candles.CoverageRequest{Pairs: []candles.Pair{btc4h}}, []candles.PairCoverage{ledger}},
		{"with gaps: the holes that are not known gaps", candles.CoverageRequest{Pairs: []candles.Pair{btc4h}, Gaps: true}, []candles.PairCoverage{withMissing}},
		{"all pairs, including one with known gaps only", candles.CoverageRequest{Gaps: true}, []candles.PairCoverage{withMissing, ethLedger}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Coverage(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Coverage:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Hole detection must stay fast for long series: about a second per
// million rows is the budget. Under the race detector the pair is smaller
// and only the result is checked.
func TestCoverageGapsScale(t *testing.T) {
	n := 500_000
	if raceEnabled || testing.Short() {
		n = 20_000
	}
	path := tempDB(t)
	s := openStore(t, path)
	ctx := context.Background()
	const minute = 60_000
	db := rawDB(t, path)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	st, err := tx.Prepare(`INSERT INTO candles VALUES ('BTCUSDT', '1m', ?, ?, 1, 1, 1, 1, 1, 1, 1, 1, 1)`)
	if err != nil {
		t.Fatal(err)
	}
	holes := map[int]bool{1000: true, 1001: true, n / 2: true, n - 2: true}
	for i := 0; i < n; i++ {
		if holes[i] {
			continue
		}
		open := t0 + int64(i)*minute
		if _, err := st.Exec(open, open+minute-1); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	got, err := s.Coverage(ctx, candles.CoverageRequest{Gaps: true})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	m := func(i, j int) candles.Range {
		return candles.Range{From: t0 + int64(i)*minute, Until: t0 + int64(j)*minute}
	}
	want := []candles.Range{m(1000, 1002), m(n/2, n/2+1), m(n-2, n-1)}
	if len(got) != 1 || !reflect.DeepEqual(got[0].Missing, want) || got[0].Expected != int64(n) || got[0].Count != int64(n-4) {
		t.Fatalf("Coverage = %+v, want missing %v", got, want)
	}
	// Reported, not asserted: tests do not judge wall-clock time (make
	// test runs the container tests beside this one).
	t.Logf("coverage with gaps of %d rows: %s", n, took)
}

func TestUpsertLeavesWatermarkAndRunsAlone(t *testing.T) {
	path := tempDB(t)
	s := openStore(t, path)
	ctx := context.Background()
	if _, err := s.RegisterRun(ctx, "r1", []candles.Pair{btc}, epoch, "", time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyBatch(ctx, "CANDLES", 7, batch("", "BTCUSDT", false, at4h(0, 1))); err != nil {
		t.Fatal(err)
	}
	b := spanned(0, 5, at4h(0, 1, 3))
	b.RunID, b.Final = "r1", true
	b.Candles[0].Close += 0.5 // a revised candle
	b.Candles[0].High += 0.5
	a, err := s.Upsert(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.Applied{Inserted: 1, Updated: 1, Unchanged: 1, GapsRecorded: 2}); a != want {
		t.Errorf("Upsert = %+v, want %+v", a, want)
	}
	if again, err := s.Upsert(ctx, b); err != nil || again != (store.Applied{Unchanged: 3}) {
		t.Errorf("second Upsert = %+v, %v; want 3 unchanged and nothing new", again, err)
	}
	if w, err := s.Watermark(ctx, "CANDLES"); err != nil || w != 7 {
		t.Errorf("watermark %d, %v; want 7", w, err)
	}
	if p, err := s.RunProgress(ctx); err != nil || len(p) != 1 || p[0].Candles != 0 || p[0].PairsDone != 0 {
		t.Errorf("run progress %+v, %v; want r1 untouched", p, err)
	}
	db := rawDB(t, path)
	if got := rows(t, db, "BTCUSDT", "4h"); !reflect.DeepEqual(got, b.Candles) {
		t.Errorf("rows = %+v, want %+v", got, b.Candles)
	}
	if got := gapsOf(t, db, "BTCUSDT", "4h"); !reflect.DeepEqual(got, []candles.Range{r4h(2, 3), r4h(4, 5)}) {
		t.Errorf("known gaps = %v", got)
	}
}
