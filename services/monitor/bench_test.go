package monitor

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// BenchmarkScrape10000Pairs measures a /metrics scrape (collect, encode,
// serve over HTTP) with 10,000 configured pairs: 20,000 per-pair series.
// The target is < 100 ms per scrape.
func BenchmarkScrape10000Pairs(b *testing.B) {
	s := snapshotOf10000Pairs()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{d: newDescs(), state: func() (*snapshot, counters) { return s, newCounters() }})
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	scrape := func() int {
		resp, err := http.Get(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		n, _ := io.Copy(io.Discard, resp.Body)
		return int(n)
	}
	if n := scrape(); n < 20_000*40 {
		b.Fatalf("scrape of %d bytes: the per-pair series are missing", n)
	}
	b.ResetTimer()
	var worst time.Duration
	for b.Loop() {
		began := time.Now()
		scrape()
		worst = max(worst, time.Since(began))
	}
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}

// BenchmarkEvaluate10000Pairs measures an evaluation's own work with
// 10,000 pairs: the six checks and the Gather whose families go into the
// rules' History (the polls' network time excluded).
func BenchmarkEvaluate10000Pairs(b *testing.B) {
	base := snapshotOf10000Pairs()
	var cur *snapshot
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{d: newDescs(), state: func() (*snapshot, counters) { return cur, newCounters() }})
	for b.Loop() {
		s := *base // a new snapshot, as each evaluation makes
		s.Checks = runChecks(s)
		cur = &s
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// snapshotOf10000Pairs is a healthy snapshot of 10,000 1h pairs.
func snapshotOf10000Pairs() *snapshot {
	now := time.Now().UTC().Truncate(time.Second)
	iv, _ := candles.ParseInterval("1h")
	s := &snapshot{Now: now, MaxStaleness: candles.DefaultMaxStaleness, Coverage: map[candles.Pair]candles.PairCoverage{},
		DB: &candles.DatabaseHealth{Candles: 1, QuickCheck: candles.CheckRun{OK: true}}, DBAt: now, OwnerAnswering: true}
	for i := range 10_000 {
		p := candles.Pair{Symbol: fmt.Sprintf("S%05dUSDT", i), Interval: "1h"}
		s.Pairs = append(s.Pairs, p)
		last := iv.Align(now.UnixMilli()) - 2*iv.Duration().Milliseconds()
		s.Coverage[p] = candles.PairCoverage{Symbol: p.Symbol, Interval: p.Interval, First: last - 99*iv.Duration().Milliseconds(),
			Last: last, Count: 100, Expected: 100, LastSync: now}
	}
	s.Checks = runChecks(*s)
	return s
}
