package fetcher

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

var eth1h = candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}

// gate lets the first `free` klines requests through and holds the others
// until open is called (or the client gives up), so a test can keep a run
// in flight for as long as it needs.
type gate struct {
	free   int64
	n      atomic.Int64
	once   sync.Once
	opened chan struct{}
}

func newGate(free int64) *gate { return &gate{free: free, opened: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.opened) }) }

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v3/klines" && g.n.Add(1) > g.free {
			select {
			case <-g.opened:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// serveCoverage answers candles.api.coverage as the writer would for a
// database holding what cover says for each pair asked about.
func serveCoverage(t testing.TB, nc *nats.Conn, cover func(candles.Pair) candles.PairCoverage) {
	t.Helper()
	sub, err := nc.Subscribe(candles.SubjectAPICoverage, func(m *nats.Msg) {
		var req candles.CoverageRequest
		_ = json.Unmarshal(m.Data, &req)
		var resp candles.CoverageResponse
		for _, p := range req.Pairs {
			c := cover(p)
			c.Symbol, c.Interval = p.Symbol, p.Interval
			resp.Pairs = append(resp.Pairs, c)
		}
		data, _ := json.Marshal(resp)
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// emptyDB is the coverage of a database with nothing stored.
func emptyDB(candles.Pair) candles.PairCoverage { return candles.PairCoverage{} }

// publishRequest queues a sync request on the SYNC stream as
// candles.api.sync does, with runID.
func publishRequest(t testing.TB, js jetstream.JetStream, runID, body string) {
	t.Helper()
	msg := nats.NewMsg(candles.SubjectSyncRequest)
	msg.Header.Set(candles.HeaderRunID, runID)
	msg.Data = []byte(body)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// eventsFor decodes the events of kind in EVENTS, of runID ("" for all).
func eventsFor[E any](t testing.TB, js jetstream.JetStream, kind, runID string) []E {
	t.Helper()
	var out []E
	for _, data := range eventsOf(t, js, kind) {
		var h candles.EventHeader
		var ev E
		if err := json.Unmarshal(data, &h); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &ev); err != nil {
			t.Fatal(err)
		}
		if runID == "" || h.RunID == runID {
			out = append(out, ev)
		}
	}
	return out
}

// startStoppable runs a fetcher that the test stops itself (stop waits for
// Run to return).
func startStoppable(t testing.TB, o Options) (stop func()) {
	t.Helper()
	_, stop = startFetcher(t, o)
	return stop
}

// Issue 6 #1: requests "from the last stored candle" that find their pairs
// already being synced do not queue one more competing run: the busy pairs
// are skipped (sync.skipped names the run syncing them), a request whose
// pairs are all busy starts no run, and a request with some free pairs runs
// only those. An explicit range still runs, after the run in flight, without
// fetching its pages again.
func TestRunsCoalesce(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	g := newGate(1) // the backfill's first page, then everything waits
	url := serveSim(t, s, g.wrap)
	serveCoverage(t, nc, emptyDB)
	o := testOptions(nc, url)
	o.Symbols = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}
	runFetcher(t, o)

	start := time.Now().UTC().Add(-2500 * time.Hour).Format(time.RFC3339)
	backfill := `{"symbols":["BTCUSDT","ETHUSDT"],"intervals":["1h"],"start":"` + start + `","reason":"backfill"}`
	publishRequest(t, js, "backfill", backfill)
	waitFor(t, 10*time.Second, "the backfill to start", func() bool {
		return len(eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "backfill")) == 1
	})

	// Three ticks of the schedule during the backfill: nothing to start.
	for _, tick := range []string{"tick-1", "tick-2", "tick-3"} {
		publishRequest(t, js, tick, `{"symbols":["BTCUSDT","ETHUSDT"],"reason":"schedule"}`)
	}
	// One request with a free pair: it runs SOLUSDT only.
	publishRequest(t, js, "mixed", `{"reason":"manual"}`)
	// An operator's explicit range over the same pairs: it runs.
	publishRequest(t, js, "explicit", backfill)

	waitFor(t, 20*time.Second, "four sync.skipped and the explicit run", func() bool {
		return len(eventsFor[candles.SyncSkipped](t, js, candles.KindSyncSkipped, "")) == 4 &&
			len(eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "explicit")) == 1
	})
	for _, tick := range []string{"tick-1", "tick-2", "tick-3"} {
		sk := eventsFor[candles.SyncSkipped](t, js, candles.KindSyncSkipped, tick)
		if len(sk) != 1 || sk[0].PairsStarted != 0 || !slices.Equal(sk[0].SyncingRuns, []string{"backfill"}) ||
			!slices.Equal(sk[0].Pairs, []candles.Pair{btc1h, eth1h}) || sk[0].Reason == "" {
			t.Errorf("%s: sync.skipped %+v, want both pairs skipped for run backfill and no run started", tick, sk)
		}
		if st := eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, tick); len(st) != 0 {
			t.Errorf("%s: started a run of %v although every pair was busy", tick, st[0].Pairs)
		}
	}
	sk := eventsFor[candles.SyncSkipped](t, js, candles.KindSyncSkipped, "mixed")
	if len(sk) != 1 || sk[0].PairsStarted != 1 || !slices.Equal(sk[0].Pairs, []candles.Pair{btc1h, eth1h}) {
		t.Errorf("mixed: sync.skipped %+v, want BTCUSDT and ETHUSDT skipped, one pair started", sk)
	}
	waitFor(t, 10*time.Second, "the mixed run to start", func() bool {
		return len(eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "mixed")) == 1
	})
	st := eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "mixed")[0]
	sol := candles.Pair{Symbol: "SOLUSDT", Interval: "1h"}
	if !slices.Equal(st.Pairs, []candles.Pair{sol}) || st.PairsTotal != 1 {
		t.Errorf("mixed: sync.started pairs %v (total %d), want only %v", st.Pairs, st.PairsTotal, sol)
	}
	if sk := eventsFor[candles.SyncSkipped](t, js, candles.KindSyncSkipped, "explicit"); len(sk) != 0 {
		t.Errorf("explicit range: skipped %+v, want it to run", sk)
	}

	g.open()
	for _, run := range []string{"backfill", "explicit"} {
		for _, p := range []candles.Pair{btc1h, eth1h} {
			waitFor(t, 30*time.Second, run+" "+p.String(), func() bool { return finished(t, js, run, p) })
		}
	}
	waitFor(t, 30*time.Second, "the mixed run", func() bool { return finished(t, js, "mixed", sol) })
	st2 := s.Stats()
	for _, p := range []candles.Pair{btc1h, eth1h} {
		if got := st2.Klines[p.Symbol+"/1h"]; got != 3 {
			t.Errorf("%s: %d klines requests, want 3: the backfill's pages once, none again for the explicit run", p, got)
		}
		if bs := batches(t, js, "explicit", p); len(bs) != 1 || len(bs[0].Candles) != 0 {
			t.Errorf("%s: the explicit run published %d pages, want one empty final page", p, len(bs))
		}
	}

	// Once the backfill is done, a tick runs both pairs again.
	waitFor(t, 10*time.Second, "JOBS to empty", func() bool {
		stream, err := js.Stream(context.Background(), candles.StreamJobs)
		if err != nil {
			return false
		}
		info, err := stream.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
	publishRequest(t, js, "tick-4", `{"symbols":["BTCUSDT","ETHUSDT"],"reason":"schedule"}`)
	waitFor(t, 10*time.Second, "tick-4 to start", func() bool {
		st := eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "tick-4")
		return len(st) == 1 && len(st[0].Pairs) == 2
	})
	if sk := eventsFor[candles.SyncSkipped](t, js, candles.KindSyncSkipped, "tick-4"); len(sk) != 0 {
		t.Errorf("tick-4 skipped %+v with nothing in flight", sk)
	}
}

// Issue 6 #2: at shutdown a fetcher hands every job it holds back at once,
// the one in flight with its checkpoint saved first, so a fetcher started
// next resumes the job from that page instead of waiting out the ack wait.
func TestShutdownHandsJobsBackAtOnce(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	g := newGate(2) // two pages of the first job, then the exchange hangs
	url := serveSim(t, s, g.wrap)
	o := testOptions(nc, url)
	o.Concurrency = 1
	stop := startStoppable(t, o)

	from, until := klinesRange(h1, testStart, 4500) // five pages
	publishJob(t, js, candles.Job{RunID: "run-1", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
	publishJob(t, js, candles.Job{RunID: "run-1", Symbol: "ETHUSDT", Interval: "1h", From: from, Until: until})
	waitFor(t, 10*time.Second, "two pages and a third request", func() bool {
		return g.n.Load() >= 3 && len(batches(t, js, "run-1", btc1h))+len(batches(t, js, "run-1", eth1h)) >= 2
	})
	stop()

	ctx := context.Background()
	progress, err := openProgress(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	busy := btc1h
	if len(batches(t, js, "run-1", eth1h)) > 0 {
		busy = eth1h
	}
	cp, found, err := progress.load(ctx, candles.Job{RunID: "run-1", Symbol: busy.Symbol, Interval: busy.Interval})
	if err != nil || !found || cp.Page != 2 || cp.From != h1.Add(from, 2000) {
		t.Fatalf("checkpoint of %s after shutdown: %+v found=%v err=%v, want page 2 from the third page", busy, cp, found, err)
	}

	g.open()
	s.ResetStats()
	began := time.Now()
	runFetcher(t, o)
	// The job AckWait is a minute: resuming well inside it shows the job
	// was handed back, not redelivered after the wait.
	for _, p := range []candles.Pair{btc1h, eth1h} {
		waitFor(t, jobAckWait/2, p.String()+" to finish", func() bool { return finished(t, js, "run-1", p) })
	}
	if waited := time.Since(began); waited >= jobAckWait {
		t.Fatalf("the jobs finished %v after the restart: they waited out the ack wait", waited)
	}
	bs := batches(t, js, "run-1", busy)
	checkPages(t, bs, s.Klines(busy.Symbol, h1, from, until))
	if got := s.Stats().Klines[busy.Symbol+"/1h"]; got != 3 {
		t.Errorf("%s: %d klines requests after the restart, want 3: it resumes at page 2", busy, got)
	}
}

// Issue 6 #3: a run that cannot be planned because the exchange is
// unreachable says so within seconds with sync.waiting, at each retry, and
// starts once the exchange answers again, or ends with sync.failed when its
// attempts run out.
func TestUnreachableExchangeReportsWaiting(t *testing.T) {
	t.Run("the run starts once the exchange is back", func(t *testing.T) {
		nc, js := natsServer(t)
		s := sim.New(sim.Options{})
		s.AddFault(sim.Fault{Kind: sim.FaultStatus, Status: 503})
		url := serveSim(t, s, nil)
		serveCoverage(t, nc, emptyDB)
		runFetcher(t, testOptions(nc, url))
		publishRequest(t, js, "run-1", `{"reason":"manual"}`)
		waitFor(t, 10*time.Second, "two sync.waiting", func() bool {
			return len(eventsFor[candles.SyncWaiting](t, js, candles.KindSyncWaiting, "run-1")) >= 2
		})
		ws := eventsFor[candles.SyncWaiting](t, js, candles.KindSyncWaiting, "run-1")
		for i, w := range ws[:2] {
			if w.Attempt != i+1 || w.MaxAttempts != requestMaxDeliver || w.RetryIn <= 0 || w.Reason == "" {
				t.Errorf("sync.waiting %d: %+v, want attempt %d of %d with a reason and a retry time", i, w, i+1, requestMaxDeliver)
			}
		}
		s.ClearFaults()
		for _, p := range []candles.Pair{btc1h, eth1h} {
			waitFor(t, 30*time.Second, p.String()+" fetched", func() bool { return finished(t, js, "run-1", p) })
		}
		if f := eventsFor[candles.SyncFailed](t, js, candles.KindSyncFailed, "run-1"); len(f) != 0 {
			t.Errorf("sync.failed %+v for a run that started", f)
		}
	})
	t.Run("the run fails when its attempts run out", func(t *testing.T) {
		nc, js := natsServer(t)
		s := sim.New(sim.Options{})
		s.AddFault(sim.Fault{Kind: sim.FaultStatus, Status: 503})
		url := serveSim(t, s, nil)
		serveCoverage(t, nc, emptyDB)
		o := testOptions(nc, url)
		o.RetryBase = 5 * time.Millisecond
		runFetcher(t, o)
		publishRequest(t, js, "run-2", `{"reason":"manual"}`)
		waitFor(t, 60*time.Second, "sync.failed", func() bool {
			return len(eventsFor[candles.SyncFailed](t, js, candles.KindSyncFailed, "run-2")) == 1
		})
		if n := len(eventsFor[candles.SyncWaiting](t, js, candles.KindSyncWaiting, "run-2")); n != requestMaxDeliver-1 {
			t.Errorf("%d sync.waiting, want one per retry (%d)", n, requestMaxDeliver-1)
		}
		if st := eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "run-2"); len(st) != 0 {
			t.Errorf("a run that could not be planned started")
		}
	})
}

// Issue 6 #4: scattered one-candle holes are repaired by the pages that
// cover them, not one request per hole, and every hole's candle is
// published.
func TestRepairsArePricedByPages(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	const stored = 2200
	first := h1.Align(time.Now().Add(-stored * time.Hour).UnixMilli())
	last := h1.Add(first, stored-1)
	var holes []candles.Range
	for i := range 40 {
		at := h1.Add(first, 10+i*53)
		holes = append(holes, candles.Range{From: at, Until: h1.Next(at)})
	}
	serveCoverage(t, nc, func(candles.Pair) candles.PairCoverage {
		return candles.PairCoverage{First: first, Last: last, Count: stored - 40, Expected: stored, Missing: holes}
	})
	runFetcher(t, testOptions(nc, url))
	publishRequest(t, js, "audit", `{"reason":"gap audit"}`)
	for _, p := range []candles.Pair{btc1h, eth1h} {
		waitFor(t, 30*time.Second, p.String()+" repaired", func() bool { return finished(t, js, "audit", p) })
	}
	span := candles.Range{From: holes[0].From, Until: holes[len(holes)-1].Until}
	covering := pagesFor(h1, span, DefaultPageLimit) // 3 pages
	for _, p := range []candles.Pair{btc1h, eth1h} {
		// The covering pages, and one for the range after the last stored candle.
		if got := s.Stats().Klines[p.Symbol+"/1h"]; got > int64(covering+1) {
			t.Errorf("%s: %d klines requests to repair 40 holes, want at most %d", p, got, covering+1)
		}
		got := map[int64]candles.Candle{}
		for _, b := range batches(t, js, "audit", p) {
			for _, c := range b.Candles {
				got[c.OpenTime] = c
			}
		}
		for _, h := range holes {
			want := s.Klines(p.Symbol, h1, h.From, h.Until)
			if c, ok := got[h.From]; !ok || len(want) != 1 || c != want[0] {
				t.Fatalf("%s: hole at %d not repaired with the exchange's candle", p, h.From)
			}
		}
	}
}

func TestMergeHoles(t *testing.T) {
	at := func(i int) int64 { return h1.Add(testStart.UnixMilli(), i) }
	r := func(from, until int) candles.Range { return candles.Range{From: at(from), Until: at(until)} }
	tests := []struct {
		name  string
		holes []candles.Range
		want  []candles.Range
	}{
		{"none", nil, nil},
		{"holes within a page join", []candles.Range{r(0, 1), r(500, 501), r(998, 999)}, []candles.Range{r(0, 999)}},
		{"holes a page apart join when it costs no more requests", []candles.Range{r(0, 1), r(1500, 1501)}, []candles.Range{r(0, 1501)}},
		{"holes far apart stay apart", []candles.Range{r(0, 1), r(2500, 2501)}, []candles.Range{r(0, 1), r(2500, 2501)}},
		{"a long hole joins a near one", []candles.Range{r(0, 1500), r(1600, 1601)}, []candles.Range{r(0, 1601)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mergeHoles(h1, tt.holes, 1000); !slices.Equal(got, tt.want) {
				t.Fatalf("mergeHoles = %v, want %v", got, tt.want)
			}
		})
	}
}

// Issue 6 #5: a dry run's estimate is within 25% of the run it describes,
// for one pair (its pages one after another) and for many pairs (in
// parallel up to the concurrency). The actual duration is read from the
// stream: from sync.started to the last page stored.
func TestDryRunEstimateMatchesTheRun(t *testing.T) {
	const latency = 300 * time.Millisecond
	tests := []struct {
		name        string
		symbols     []string
		candles     int
		concurrency int
	}{
		{"one pair", []string{"BTCUSDT"}, 7500, 8},
		{"many pairs", []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"}, 3500, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, js := natsServer(t)
			s := sim.New(sim.Options{Latency: latency})
			url := serveSim(t, s, nil)
			serveCoverage(t, nc, emptyDB)
			o := testOptions(nc, url)
			o.Symbols, o.Concurrency = tt.symbols, tt.concurrency
			runFetcher(t, o)

			// A small run first, so the fetcher has measured the latency.
			publishRequest(t, js, "warm-up", `{"symbols":["BTCUSDT"],"lookback":5}`)
			waitFor(t, 20*time.Second, "the warm-up", func() bool { return finished(t, js, "warm-up", btc1h) })

			start := time.Now().UTC().Add(-time.Duration(tt.candles) * time.Hour).Truncate(time.Hour)
			body := `{"start":"` + start.Format(time.RFC3339) + `","reason":"estimate"`
			resp, err := nc.Request(candles.SubjectAPISync, []byte(body+`,"dry_run":true}`), 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var plan candles.SyncPlan
			if err := json.Unmarshal(resp.Data, &plan); err != nil {
				t.Fatalf("dry run reply %s: %v", resp.Data, err)
			}
			publishRequest(t, js, "real", body+`}`)
			for _, sym := range tt.symbols {
				p := candles.Pair{Symbol: sym, Interval: "1h"}
				waitFor(t, 2*time.Minute, p.String(), func() bool { return finished(t, js, "real", p) })
			}
			took := runDuration(t, js, "real", tt.symbols)
			ratio := plan.EstimatedSecond / took.Seconds()
			t.Logf("estimated %.2fs (%d requests at %.3fs), took %v", plan.EstimatedSecond, plan.Requests, plan.RequestSeconds, took)
			if ratio < 0.75 || ratio > 1.25 {
				t.Fatalf("estimated %.2fs, the run took %v: off by more than 25%%", plan.EstimatedSecond, took)
			}
		})
	}
}

// runDuration is the time from a run's sync.started to its last page in
// CANDLES, by the server's clock.
func runDuration(t testing.TB, js jetstream.JetStream, runID string, symbols []string) time.Duration {
	t.Helper()
	st := eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, runID)
	if len(st) != 1 {
		t.Fatalf("%d sync.started for %s", len(st), runID)
	}
	ctx := context.Background()
	stream, err := js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	var end time.Time
	for _, sym := range symbols {
		m, err := stream.GetLastMsgForSubject(ctx, candles.BatchSubject("1h", sym))
		if err != nil {
			t.Fatal(err)
		}
		if m.Time.After(end) {
			end = m.Time
		}
	}
	return end.Sub(st[0].Time)
}

func TestEstimateSeconds(t *testing.T) {
	tests := []struct {
		name        string
		perPair     []int
		latency     float64
		concurrency int
		weight      int
		want        float64
	}{
		{"one pair's pages one after another", []int{10}, 0.3, 8, 20, 3},
		{"pairs in parallel up to the concurrency", []int{4, 4, 4, 4, 4, 4}, 0.3, 3, 48, 2.4},
		{"the longest pair bounds a wide run", []int{10, 1, 1, 1}, 0.5, 8, 26, 5},
		{"the weight budget bounds a large run", []int{2500, 2500}, 0.001, 8, 10000, 40},
		{"nothing to fetch", []int{0, 0}, 0.3, 8, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := estimateSeconds(tt.perPair, tt.latency, tt.concurrency, tt.weight, 6000, time.Minute)
			if got < tt.want-1e-9 || got > tt.want+1e-9 {
				t.Fatalf("estimateSeconds = %v, want %v", got, tt.want)
			}
		})
	}
}

// Whatever the holes, the merged spans cost no more requests than the holes
// fetched one by one, nor than the whole range from the first hole to the
// last fetched in one go.
func TestMergeHolesNeverCostsMore(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cost := func(rs []candles.Range) (n int) {
		for _, r := range rs {
			n += pagesFor(h1, r, 100)
		}
		return n
	}
	for range 5000 {
		var holes []candles.Range
		at := 0
		for range 1 + rng.IntN(30) {
			at += rng.IntN(300)
			n := 1 + rng.IntN(150)
			holes = append(holes, candles.Range{From: h1.Add(testStart.UnixMilli(), at), Until: h1.Add(testStart.UnixMilli(), at+n)})
			at += n + 1
		}
		merged := mergeHoles(h1, holes, 100)
		whole := candles.Range{From: holes[0].From, Until: holes[len(holes)-1].Until}
		if c := cost(merged); c > cost(holes) || c > pagesFor(h1, whole, 100) {
			t.Fatalf("holes %v merged into %v: %d requests, apart %d, whole range %d", holes, merged, c, cost(holes), pagesFor(h1, whole, 100))
		}
	}
}
