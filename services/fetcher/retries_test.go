package fetcher

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// Issue 7 #1: attempts count per page and progress resets them, and a bad
// page is asked again in place, so an 80-page backfill through a flaky
// exchange completes in one job, exactly, without a pair.failed.
func TestFlakyExchangeBackfillCompletes(t *testing.T) {
	from, until := klinesRange(h1, testStart, 8000) // 80 pages of 100
	for _, tt := range []struct {
		name   string
		faults []sim.Fault
	}{
		{"30% 503", []sim.Fault{{Kind: sim.FaultStatus, Path: "/api/v3/klines", Status: 503, Rate: 0.3, Seed: 1}}},
		{"10% hangs and 10% truncated bodies", []sim.Fault{
			{Kind: sim.FaultTimeout, Path: "/api/v3/klines", Rate: 0.1, Seed: 2, Delay: 10 * time.Second},
			{Kind: sim.FaultTruncate, Path: "/api/v3/klines", Rate: 0.1 / 0.9, Seed: 3}, // 10% of all requests
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nc, js := natsServer(t)
			s := sim.New(sim.Options{})
			url := serveSim(t, s, nil)
			for _, f := range tt.faults {
				s.AddFault(f)
			}
			o := testOptions(nc, url)
			o.PageLimit = 100
			o.RequestTimeout = 300 * time.Millisecond
			runFetcher(t, o)
			publishJob(t, js, candles.Job{RunID: "flaky", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
			waitFor(t, 3*time.Minute, "the final page", func() bool { return finished(t, js, "flaky", btc1h) })

			checkPages(t, batches(t, js, "flaky", btc1h), s.Klines("BTCUSDT", h1, from, until))
			if pf := eventsOf(t, js, candles.KindPairFailed); len(pf) != 0 {
				t.Fatalf("pair.failed: %s", pf[0])
			}
			// 80 pages; every request past them was a page asked again.
			if got := s.Stats().Klines["BTCUSDT/1h"]; got < 90 {
				t.Fatalf("%d klines requests for 80 pages; the faults did not act", got)
			}
		})
	}
}

// A pair that makes no progress is still given up: MaxDeliver attempts in a
// row, each asking the page pageRetries+1 times, with no page in between.
func TestStuckPageGivesUp(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	from, until := klinesRange(h1, testStart, 250)
	s.AddFault(sim.Fault{Kind: sim.FaultStatus, Path: "/api/v3/klines", Status: 500, Count: 0})
	runFetcher(t, testOptions(nc, url))
	publishJob(t, js, candles.Job{RunID: "stuck", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
	var pf []candles.PairFailed
	waitFor(t, time.Minute, "pair.failed", func() bool {
		pf = eventsFor[candles.PairFailed](t, js, candles.KindPairFailed, "stuck")
		return len(pf) > 0
	})
	if !strings.Contains(pf[0].Reason, "gave up after 4 attempts with no page stored") || !strings.Contains(pf[0].Reason, "HTTP 500") {
		t.Fatalf("pair.failed reason %q", pf[0].Reason)
	}
	if got, want := s.Stats().Klines["BTCUSDT/1h"], int64(DefaultMaxDeliver*(pageRetries+1)); got != want {
		t.Fatalf("%d klines requests, want %d", got, want)
	}
}

// Issue 7 #3: the still-open candle is dropped before the page is checked,
// so a forming candle that breaks a rule does not fail the closed ones.
func TestMalformedOpenCandleKeepsTheClosedOnes(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	s.AddFault(sim.Fault{Kind: sim.FaultInvalidOpen, Path: "/api/v3/klines"})
	runFetcher(t, testOptions(nc, url))
	now := time.Now().UTC()
	open := h1.Align(now.UnixMilli())
	from := h1.Add(open, -150)
	publishJob(t, js, candles.Job{RunID: "open", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: h1.Next(open)})
	waitFor(t, 30*time.Second, "the final page", func() bool { return finished(t, js, "open", btc1h) })
	bs := batches(t, js, "open", btc1h)
	var got []candles.Candle
	for _, b := range bs {
		got = append(got, b.Candles...)
	}
	// The hour may turn during the test: the last closed candle is then the
	// one that was open when it began.
	until := open
	if n := len(got); n > 0 && got[n-1].OpenTime == open {
		until = h1.Next(open)
	}
	checkPages(t, bs, s.Klines("BTCUSDT", h1, from, until))
	if br := eventsOf(t, js, candles.KindBatchRejected); len(br) != 0 {
		t.Fatalf("batch.rejected: %s", br[0])
	}
}

// Issue 7 #2: what the exchange cannot serve is refused (a future start,
// an end before Binance's first candles) or moved to the listing (a start
// or a lookback before it), and a very big plan needs "confirm".
func TestRequestsCheckedAgainstTheExchange(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	url := serveSim(t, s, nil)
	serveCoverage(t, nc, emptyDB)
	runFetcher(t, testOptions(nc, url))
	ask := func(body string) (code, msg string, data []byte) {
		t.Helper()
		resp, err := nc.Request(candles.SubjectAPISync, []byte(body), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Get(micro.ErrorCodeHeader), resp.Header.Get(micro.ErrorHeader), resp.Data
	}
	t.Run("a start in the future is refused naming start", func(t *testing.T) {
		future := time.Now().UTC().Add(48 * time.Hour).Format(time.RFC3339)
		code, msg, _ := ask(`{"symbols":["BTCUSDT"],"start":"` + future + `"}`)
		if code != "400" || !strings.Contains(msg, "start: ") || !strings.Contains(msg, "future") {
			t.Fatalf("got %s %q", code, msg)
		}
	})
	t.Run("an end before Binance's first candles has nothing to fetch", func(t *testing.T) {
		code, msg, _ := ask(`{"symbols":["BTCUSDT"],"start":"2010-01-01T00:00:00Z","end":"2011-01-01T00:00:00Z"}`)
		if code != "400" || !strings.Contains(msg, "end: ") || !strings.Contains(msg, "nothing to fetch") {
			t.Fatalf("got %s %q", code, msg)
		}
	})
	t.Run("a start before 1970 is moved to the listing with a note", func(t *testing.T) {
		publishRequest(t, js, "early", `{"symbols":["BTCUSDT"],"intervals":["1M"],"start":"1969-06-01T00:00:00Z"}`)
		var st []candles.SyncStarted
		waitFor(t, 20*time.Second, "sync.started", func() bool {
			st = eventsFor[candles.SyncStarted](t, js, candles.KindSyncStarted, "early")
			return len(st) > 0
		})
		if len(st[0].Notes) != 1 || !strings.Contains(st[0].Notes[0], "before Binance's first candles") {
			t.Fatalf("notes %q", st[0].Notes)
		}
		p := candles.Pair{Symbol: "BTCUSDT", Interval: "1M"}
		waitFor(t, 20*time.Second, "the final page", func() bool { return finished(t, js, "early", p) })
		bs := batches(t, js, "early", p)
		first := bs[0].Candles[0].OpenTime
		checkPages(t, bs, s.Klines("BTCUSDT", candles.MustInterval("1M"), first, candles.MustInterval("1M").Align(time.Now().UnixMilli())))
		if bs[0].From != first {
			t.Fatalf("the first page claims coverage from %d, want the listing %d", bs[0].From, first)
		}
	})
	t.Run("a dry run shows the note", func(t *testing.T) {
		_, _, data := ask(`{"symbols":["BTCUSDT"],"intervals":["1w"],"start":"0001-01-01T00:00:00Z","dry_run":true}`)
		var plan candles.SyncPlan
		if err := json.Unmarshal(data, &plan); err != nil || len(plan.Notes) != 1 || len(plan.Pairs) != 1 ||
			plan.Pairs[0].From != candles.MustInterval("1w").Align(listingFloor) {
			t.Fatalf("dry run: %s", data)
		}
	})
	t.Run("a lookback before 1970 is moved to the listing", func(t *testing.T) {
		publishRequest(t, js, "deep", `{"symbols":["ETHUSDT"],"intervals":["1M"],"lookback":1000}`)
		p := candles.Pair{Symbol: "ETHUSDT", Interval: "1M"}
		waitFor(t, 20*time.Second, "the final page", func() bool { return finished(t, js, "deep", p) })
		if pf := eventsFor[candles.PairFailed](t, js, candles.KindPairFailed, "deep"); len(pf) != 0 {
			t.Fatalf("pair.failed: %+v", pf)
		}
	})
	t.Run("a big plan needs confirm", func(t *testing.T) {
		// 60 symbols of 1s candles since 2018: some fifteen million requests.
		body := `{"symbols":` + jsonStrings(candles.DefaultSymbols()) + `,"intervals":["1s"],"start":"2018-01-01T00:00:00Z"`
		_, _, data := ask(body + `,"dry_run":true}`)
		var plan candles.SyncPlan
		if err := json.Unmarshal(data, &plan); err != nil || plan.Requests <= maxPlanRequests {
			t.Fatalf("dry run: %s", data)
		}
		code, msg, _ := ask(body + `}`)
		quote := fmt.Sprintf(`"requests":%d, "weight":%d, "estimated_seconds":%.0f`, plan.Requests, plan.Weight, plan.EstimatedSecond)
		if code != "400" || !strings.Contains(msg, "confirm: ") || !strings.Contains(msg, quote) {
			t.Fatalf("got %s %q, want a 400 naming confirm and quoting %s", code, msg, quote)
		}
		if n := len(eventsOf(t, js, candles.KindSyncStarted)); n != 2 {
			t.Fatalf("%d runs started, want only the two above", n)
		}
		// On the stream (nats pub) the same request ends as sync.failed.
		publishRequest(t, js, "big", body+`}`)
		publishRequest(t, js, "future", `{"symbols":["BTCUSDT"],"start":"`+time.Now().UTC().AddDate(1, 0, 0).Format(time.RFC3339)+`"}`)
		for run, says := range map[string]string{"big": "confirm: the plan is too big", "future": "start: "} {
			var failed []candles.SyncFailed
			waitFor(t, 20*time.Second, "sync.failed of "+run, func() bool {
				failed = eventsFor[candles.SyncFailed](t, js, candles.KindSyncFailed, run)
				return len(failed) > 0
			})
			if !strings.Contains(failed[0].Reason, says) {
				t.Fatalf("sync.failed of %s: %q, want it to say %q", run, failed[0].Reason, says)
			}
		}
		// With confirm the size is no reason to refuse; a dry run shows the
		// plan rather than fetching fifteen million pages in a test.
		code, msg, data = ask(body + `,"confirm":true,"dry_run":true}`)
		if code != "" || json.Unmarshal(data, &plan) != nil || plan.Requests <= maxPlanRequests {
			t.Fatalf("confirmed dry run: %s %q %s", code, msg, data)
		}
	})
}

func jsonStrings(ss []string) string {
	b, _ := json.Marshal(ss)
	return string(b)
}

// A page published resets the attempts: a job one failed attempt short of
// giving up publishes a page, then fails a whole attempt at the next one
// (four requests), and is retried, not failed; its checkpoint holds the
// count of the page it is stuck at, 1.
func TestProgressResetsTheAttempts(t *testing.T) {
	nc, js := natsServer(t)
	s := sim.New(sim.Options{})
	var n atomic.Int64
	url := serveSim(t, s, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/v3/klines" {
				if i := n.Add(1); i >= 2 && i <= 2+pageRetries {
					w.WriteHeader(http.StatusServiceUnavailable)
					_, _ = w.Write([]byte(`{"code":-1001,"msg":"Internal error; unable to process your request. Please try again."}`))
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	progress, err := openProgress(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	from, until := klinesRange(h1, testStart, 2500)
	job := candles.Job{RunID: "reset", Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until}
	if err := progress.save(context.Background(), job, checkpoint{Failures: DefaultMaxDeliver - 1, LastError: "earlier trouble"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	o := testOptions(nc, url)
	o.RetryBase = time.Second // time to read the checkpoint between deliveries
	runFetcher(t, o)
	publishJob(t, js, job)
	waitFor(t, 10*time.Second, "the failed attempt to be counted", func() bool {
		cp, found, err := progress.load(context.Background(), job)
		return err == nil && found && cp.Page == 1 && cp.Failures == 1 && strings.Contains(cp.LastError, "HTTP 503")
	})
	waitFor(t, 20*time.Second, "the final page", func() bool { return finished(t, js, "reset", btc1h) })
	checkPages(t, batches(t, js, "reset", btc1h), s.Klines("BTCUSDT", h1, from, until))
	if pf := eventsOf(t, js, candles.KindPairFailed); len(pf) != 0 {
		t.Fatalf("pair.failed: %s", pf[0])
	}
}
