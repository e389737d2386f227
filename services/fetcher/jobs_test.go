package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

var (
	h1        = candles.MustInterval("1h")
	btc1h     = candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}
	testStart = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
)

// failNth answers 503 to the nth klines request (from 1) instead of the
// exchange, as a flaky proxy would.
func failNth(n int64, count *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/v3/klines" && count.Add(1) == n {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"code":-1001,"msg":"Internal error; unable to process your request. Please try again."}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// checkPages checks that a run's pages of a pair hold exactly want, each
// candle once, in order, with the last page final and nothing after it.
func checkPages(t *testing.T, bs []candles.Batch, want []candles.Candle) {
	t.Helper()
	var got []candles.Candle
	for i, b := range bs {
		if b.Final != (i == len(bs)-1) {
			t.Fatalf("page %d of %d: final=%v", i, len(bs), b.Final)
		}
		got = append(got, b.Candles...)
	}
	if len(got) != len(want) {
		t.Fatalf("%d candles published in %d pages, want %d", len(got), len(bs), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("candle %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestRetriedJobResumesAtThePageThatFailed(t *testing.T) {
	from, until := klinesRange(h1, testStart, 2500) // pages of 1000, 1000, 500

	t.Run("a 503 on the second page is asked again; the first page is not", func(t *testing.T) {
		nc, js := natsServer(t)
		s := sim.New(sim.Options{})
		var n atomic.Int64
		url := serveSim(t, s, failNth(2, &n))
		runFetcher(t, testOptions(nc, url))
		progress, err := openProgress(context.Background(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		publishJob(t, js, candles.Job{RunID: "run-1", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
		waitFor(t, 10*time.Second, "the final page", func() bool { return finished(t, js, "run-1", btc1h) })

		checkPages(t, batches(t, js, "run-1", btc1h), s.Klines("BTCUSDT", h1, from, until))
		if got := s.Stats().Klines["BTCUSDT/1h"]; got != 3 {
			t.Fatalf("the exchange served %d klines requests, want 3: the first page must not be fetched again", got)
		}
		if got := n.Load(); got != 4 {
			t.Fatalf("%d klines requests sent, want 4 (3 pages and the one that failed)", got)
		}
		waitFor(t, 5*time.Second, "the checkpoint to be removed", func() bool {
			_, found, err := progress.load(context.Background(), candles.Job{RunID: "run-1", Symbol: "BTCUSDT", Interval: "1h"})
			return err == nil && !found
		})
	})

	t.Run("a job redelivered after a crash starts at its checkpoint", func(t *testing.T) {
		nc, js := natsServer(t)
		s := sim.New(sim.Options{})
		url := serveSim(t, s, nil)
		progress, err := openProgress(context.Background(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		job := candles.Job{RunID: "run-2", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until}
		// The crashed delivery published page 0 and got this far.
		resume := h1.Add(from, 1000)
		if err := progress.save(context.Background(), job, checkpoint{Span: 0, From: resume, Page: 1, Candles: 1000,
			Failures: 1, LastError: "temporary exchange failure: timeout"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		runFetcher(t, testOptions(nc, url))
		publishJob(t, js, job)
		waitFor(t, 10*time.Second, "the final page", func() bool { return finished(t, js, "run-2", btc1h) })

		bs := batches(t, js, "run-2", btc1h)
		if len(bs) != 2 || bs[0].Page != 1 || bs[1].Page != 2 {
			t.Fatalf("published %d pages, want pages 1 and 2 only", len(bs))
		}
		checkPages(t, bs, s.Klines("BTCUSDT", h1, resume, until))
		if got := s.Stats().Klines["BTCUSDT/1h"]; got != 2 {
			t.Fatalf("the exchange served %d klines requests, want 2", got)
		}
	})
}

// Two runs asking for the same pair at once: the second waits for the
// first's lock and then skips what it fetched, so the exchange sees the
// pair's pages once.
func TestSecondRunForAPairInFlightDoesNotFetchItAgain(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{Latency: 30 * time.Millisecond})
	url := serveSim(t, s, nil)
	o := testOptions(nc, url)
	runFetcher(t, o)
	runFetcher(t, o) // a second fetcher process
	from, until := klinesRange(h1, testStart, 2500)
	pairs := []candles.Pair{btc1h, {Symbol: "ETHUSDT", Interval: "1h"}}
	for _, run := range []string{"run-a", "run-b"} {
		for _, p := range pairs {
			publishJob(t, js, candles.Job{RunID: run, Symbol: p.Symbol, Interval: p.Interval, From: from, Until: until})
		}
	}
	for _, run := range []string{"run-a", "run-b"} {
		for _, p := range pairs {
			waitFor(t, 20*time.Second, run+" "+p.String(), func() bool { return finished(t, js, run, p) })
		}
	}
	st := s.Stats()
	for _, p := range pairs {
		if got := st.Klines[p.Symbol+"/1h"]; got != 3 {
			t.Errorf("%s: %d klines requests for two runs, want 3 (one run's pages)", p, got)
		}
		a, b := batches(t, js, "run-a", p), batches(t, js, "run-b", p)
		first, second := a, b
		if len(b) > len(a) {
			first, second = b, a
		}
		checkPages(t, first, s.Klines(p.Symbol, h1, from, until))
		if len(second) != 1 || len(second[0].Candles) != 0 || !second[0].Final {
			t.Errorf("%s: the waiting run published %d pages, want one empty final page", p, len(second))
		}
	}
}

// A job delivered again after it completed (queued twice, or its ack lost)
// is acked without fetching or publishing anything.
func TestCompletedJobDeliveredAgainDoesNothing(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	runFetcher(t, testOptions(nc, url))
	from, until := klinesRange(h1, testStart, 1500)
	job := candles.Job{V: candles.Version, RunID: "run-1", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until}
	publishJob(t, js, job)
	waitFor(t, 10*time.Second, "the final page", func() bool { return finished(t, js, "run-1", btc1h) })
	pages := len(batches(t, js, "run-1", btc1h))
	s.ResetStats()

	data, _ := json.Marshal(job)
	if _, err := js.Publish(context.Background(), candles.JobSubject("1h", "BTCUSDT"), data); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), candles.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the repeated job to be acked", func() bool {
		info, err := stream.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
	if got := s.Stats().Klines["BTCUSDT/1h"]; got != 0 {
		t.Fatalf("the repeated job made %d klines requests, want none", got)
	}
	if got := len(batches(t, js, "run-1", btc1h)); got != pages {
		t.Fatalf("%d pages after the repeat, want the %d of the first delivery", got, pages)
	}
}

// A 418 seen by one fetcher pauses every fetcher through the board: one
// ratelimit.banned event, no request during the ban, and the job completes
// after it.
func TestBanPausesEveryFetcher(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	var reqs sim.RequestLog
	url := serveSim(t, s, reqs.Wrap)
	o := testOptions(nc, url)
	a, b := runFetcher(t, o), runFetcher(t, o)
	waitFor(t, 5*time.Second, "both fetchers to read the weight limit", func() bool {
		return s.Stats().Paths["/api/v3/exchangeInfo"] == 2
	})
	s.AddFault(sim.Fault{Kind: sim.FaultBan, Path: "/api/v3/klines", Count: 1, RetryAfter: 2 * time.Second})

	from, until := klinesRange(h1, testStart, 2500)
	publishJob(t, js, candles.Job{RunID: "run-ban", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
	waitFor(t, 5*time.Second, "both fetchers to know the ban", func() bool {
		return !a.pacer.banned().IsZero() && !b.pacer.banned().IsZero()
	})
	if !a.pacer.banned().Equal(b.pacer.banned()) {
		t.Fatalf("fetchers disagree on the ban's end: %v and %v", a.pacer.banned(), b.pacer.banned())
	}
	until418 := a.pacer.banned()
	waitFor(t, 15*time.Second, "the final page", func() bool { return finished(t, js, "run-ban", btc1h) })

	banned := eventsOf(t, js, candles.KindRateLimitBanned)
	if len(banned) != 1 {
		t.Fatalf("%d ratelimit.banned events, want 1", len(banned))
	}
	var ev candles.RateLimitBanned
	if err := json.Unmarshal(banned[0], &ev); err != nil || !ev.Until.Equal(until418) || ev.RunID != "run-ban" {
		t.Fatalf("ratelimit.banned = %s, want until %v", banned[0], until418)
	}
	var first418 time.Time
	for _, r := range reqs.All() {
		if r.Status == http.StatusTeapot && first418.IsZero() {
			first418 = r.At
		}
		if !first418.IsZero() && r.At.After(first418.Add(100*time.Millisecond)) && r.At.Before(until418) {
			t.Fatalf("%s reached the exchange %v into the ban", r.Path, r.At.Sub(first418))
		}
	}
	if st := s.Stats(); st.Banned != 1 {
		for _, r := range reqs.All() {
			t.Logf("%v %s %d", r.At.Sub(first418), r.Path, r.Status)
		}
		t.Fatalf("%d requests answered 418, want only the one that started the ban (until %v)", st.Banned, until418)
	}
	checkPages(t, batches(t, js, "run-ban", btc1h), s.Klines("BTCUSDT", h1, from, until))

	t.Run("the same ban reported again is not a new ban", func(t *testing.T) {
		// Two more fetchers' boards (the running ones' are theirs alone).
		ctx := context.Background()
		boardA, err := openBoard(ctx, js, 1, a.pacer, testLogger(), time.Now)
		if err != nil {
			t.Fatal(err)
		}
		boardB, err := openBoard(ctx, js, 1, newPacer(100, time.Minute, 0, time.Now), testLogger(), time.Now)
		if err != nil {
			t.Fatal(err)
		}
		end := time.Now().Add(3 * time.Second)
		isNew, err := boardA.reportBan(ctx, end, "run-x", "HTTP 418")
		if err != nil || !isNew {
			t.Fatalf("first report: new=%v err=%v", isNew, err)
		}
		waitFor(t, 2*time.Second, "b to see the ban", func() bool { return b.pacer.banned().Equal(end.UTC()) })
		isNew, err = boardB.reportBan(ctx, end.Add(500*time.Millisecond), "run-y", "HTTP 418")
		if err != nil || isNew {
			t.Fatalf("second report of the same ban: new=%v err=%v", isNew, err)
		}
		longer := end.Add(5 * time.Second)
		isNew, err = boardB.reportBan(ctx, longer, "run-y", "HTTP 418")
		if err != nil || isNew {
			t.Fatalf("a 418 extending the ban: new=%v err=%v, want an extension, not a new ban", isNew, err)
		}
		waitFor(t, 2*time.Second, "b to see the extended ban", func() bool { return b.pacer.banned().Equal(longer.UTC()) })
		t.Run("deleting the ban from the board lifts it", func(t *testing.T) {
			if err := boardA.kv.Delete(ctx, BanKey); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "the pause to lift", func() bool {
				return a.pacer.banned().IsZero() && b.pacer.banned().IsZero()
			})
		})
	})
}

// A job whose deliveries run out without any handler deciding (here: a
// fetcher that takes it and dies, twice) ends as pair.failed from the
// max-deliveries advisory, published once however many fetchers hear it.
func TestJobOutOfDeliveriesEndsAsPairFailed(t *testing.T) {
	ctx := context.Background()
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	var watchers []*Fetcher
	for range 2 {
		f, err := New(testOptions(nc, url))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.openState(ctx); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = f.watchMaxDeliveries(wctx) }()
		t.Cleanup(func() { cancel(); <-done })
		watchers = append(watchers, f)
	}
	// The crashing fetcher: takes the job and never settles it.
	cons, err := js.CreateOrUpdateConsumer(ctx, candles.StreamJobs, jetstream.ConsumerConfig{
		Durable: JobConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 300 * time.Millisecond, MaxDeliver: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	from, until := klinesRange(h1, testStart, 10)
	job := candles.Job{V: candles.Version, RunID: "run-x", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until}
	if err := watchers[0].progress.save(ctx, job, checkpoint{Failures: 1,
		LastError: "temporary exchange failure: HTTP 503, code -1001: Internal error"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	publishJob(t, js, job)
	for range 3 { // two deliveries, then a pull that finds the job out of deliveries
		_, _ = cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		time.Sleep(400 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "pair.failed", func() bool { return len(eventsOf(t, js, candles.KindPairFailed)) > 0 })
	// Barrier: the job is gone from JOBS, so both watchers have decided
	// (the one that deletes it publishes first; the other finds it gone or
	// publishes the same message id, which JetStream drops).
	jobs, err := js.Stream(ctx, candles.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the exhausted job deleted", func() bool {
		info, err := jobs.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	failed := eventsOf(t, js, candles.KindPairFailed)
	if len(failed) != 1 {
		t.Fatalf("%d pair.failed events, want 1", len(failed))
	}
	var ev candles.PairFailed
	if err := json.Unmarshal(failed[0], &ev); err != nil {
		t.Fatal(err)
	}
	if ev.RunID != "run-x" || ev.Symbol != "BTCUSDT" || ev.Interval != "1h" ||
		!strings.Contains(ev.Reason, "gave up after 2 deliveries") || !strings.Contains(ev.Reason, "HTTP 503") {
		t.Fatalf("pair.failed = %+v, want run-x BTCUSDT 1h naming the deliveries and the last error", ev)
	}
	stream, err := js.Stream(ctx, candles.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the job to be deleted", func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if _, found, err := watchers[1].progress.load(ctx, job); err != nil || found {
		t.Fatalf("checkpoint still there (found=%v, err=%v)", found, err)
	}
	if err := watchers[1].jobExhausted(ctx, maxDeliveriesAdvisory{Stream: candles.StreamJobs, Consumer: JobConsumer,
		StreamSeq: 1, Deliveries: 2}); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a repeated advisory: %v, want nothing to do", err)
	}
}
