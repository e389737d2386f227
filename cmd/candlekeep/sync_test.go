package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/writer"
)

// A JetStream schedule of @every 2s with three fetcher processes: one run
// per tick, each pair fetched once per run.
func TestScheduleRunsOncePerTickAcrossFetchers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	ns := natstest.RunServer(t)
	url := ns.ClientURL()
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	writerDone := make(chan error, 1)
	// The writer joins first, so its settings seed the cluster configuration
	// that the fetchers then follow: the same as their flags.
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback, fo.SyncSchedule = []string{"BTCUSDT", "ETHUSDT"}, []string{"1h"}, 10, "@every 2s"
	go func() {
		writerDone <- serveWriter(ctx, natsutil.URL(url), filepath.Join(dataDir, databaseFile), writer.DefaultOptions(), memberOf(fo), testLogger(t))
	}()
	t.Cleanup(func() { cancel(); <-writerDone })
	nc := connect(t, url)
	ev := watchEvents(t, nc)
	for i := 0; i < 3; i++ {
		start(t, nil, "fetcher", "--nats-url", url, "--binance-url", simURL, "--symbols", "BTCUSDT,ETHUSDT",
			"--intervals", "1h", "--lookback", "10", "--sync-schedule", "@every 2s", "--catch-up=false", "--log-format", "json")
	}
	natsUntil(t, url, `"candlekeep-fetcher"`, "micro", "ls", "--json")
	checkfor.Check(t, time.Minute, 100*time.Millisecond, func() error {
		if n := len(ev.of(candles.KindSyncCompleted, "")); n < 3 {
			return fmt.Errorf("%d scheduled runs completed, want 3", n)
		}
		return nil
	})

	// Pause the schedule as an operator would, then let the runs in flight end.
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(t.Context(), candles.StreamSync)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(t.Context(), jetstream.WithPurgeSubject(candles.SubjectSyncSchedule)); err != nil {
		t.Fatal(err)
	}
	// Barrier: every tick stored so far has started and completed its run.
	checkfor.Check(t, time.Minute, 100*time.Millisecond, func() error {
		info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(candles.SubjectSyncRequest))
		if err != nil {
			return err
		}
		ticks := int(info.State.Subjects[candles.SubjectSyncRequest])
		if s, c := len(ev.of(candles.KindSyncStarted, "")), len(ev.of(candles.KindSyncCompleted, "")); s != ticks || c != ticks {
			return fmt.Errorf("%d ticks, %d runs started, %d completed", ticks, s, c)
		}
		return nil
	})
	info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(candles.SubjectSyncRequest))
	if err != nil {
		t.Fatal(err)
	}
	ticks := int(info.State.Subjects[candles.SubjectSyncRequest])
	started := ev.of(candles.KindSyncStarted, "")
	completed := ev.of(candles.KindSyncCompleted, "")
	if ticks < 3 || len(started) != ticks || len(completed) != ticks {
		t.Fatalf("%d ticks, %d sync.started, %d sync.completed: want one run per tick and at least 3 ticks", ticks, len(started), len(completed))
	}
	for _, raw := range started {
		var st candles.SyncStarted
		_ = json.Unmarshal(raw, &st)
		if st.Reason != "schedule" || st.PairsTotal != 2 {
			t.Fatalf("sync.started = %s", raw)
		}
	}
	stats := s.Stats()
	for _, pair := range []string{"BTCUSDT/1h", "ETHUSDT/1h"} {
		if got := int(stats.Klines[pair]); got != ticks {
			t.Fatalf("%s fetched %d times over %d runs; want once per run (klines: %v)", pair, got, ticks, stats.Klines)
		}
	}
}

// After downtime worth many bars (the exchange's clock moved three days on),
// the catch-up run at start-up fills every missing candle.
func TestCatchUpAfterDowntimeFillsEveryCandle(t *testing.T) {
	now := time.Now()
	s, simURL := startSim(t, sim.Options{Now: func() time.Time { return now }})
	dataDir := t.TempDir()
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback, fo.CatchUp = []string{"BTCUSDT", "ETHUSDT", "PEPEUSDT"}, []string{"1h"}, 24, true
	dbPath := filepath.Join(dataDir, databaseFile)

	// First life: the catch-up run fills the empty database.
	first := t.Run("first start", func(t *testing.T) {
		since := time.Now()
		natsURL := startUp(t, dataDir, fo)
		ev := watchEventsSince(t, connect(t, natsURL), since)
		var done candles.SyncCompleted
		ev.waitMatch(t, candles.KindSyncCompleted, 30*time.Second, &done, func() bool { return true })
		if done.PairsOK != 3 || done.Candles != 3*24 {
			t.Fatalf("first catch-up: %+v", done)
		}
	})
	if !first {
		t.FailNow()
	}
	before := readDB(t, dbPath)
	firstOpen := before[candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}][0].OpenTime

	// Down for three days.
	later := now.Add(72 * time.Hour)
	s.SetClock(func() time.Time { return later })
	t.Run("second start", func(t *testing.T) {
		since := time.Now()
		// Three days later for the writer and the fetcher too: the writer
		// refuses candles that close after its clock ("candle in the
		// future"), and times out a run whose deadline, set by the
		// fetcher's clock, is behind its own.
		clock := func() time.Time { return later.Add(time.Since(now)) }
		wo, fo := writer.DefaultOptions(), fo
		wo.Now, fo.Now = clock, clock
		natsURL := startUpConfig(t, upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo, Writer: wo}, testLogger(t))
		ev := watchEventsSince(t, connect(t, natsURL), since)
		var done candles.SyncCompleted
		ev.waitMatch(t, candles.KindSyncCompleted, 30*time.Second, &done, func() bool { return true })
		if done.PairsOK != 3 {
			t.Fatalf("catch-up after downtime: %+v", done)
		}
	})
	iv := candles.MustInterval("1h")
	closedUntil := iv.Align(later.UnixMilli()) // the candle open at `later` is not closed
	want := truth(s, fo.Symbols, "1h", time.UnixMilli(firstOpen), time.UnixMilli(closedUntil))
	if n := count(want); n < 3*(24+71) {
		t.Fatalf("truth has only %d candles", n)
	}
	assertSame(t, readDB(t, dbPath), want)
}

// The dry run's plan predicts the requests the real run makes, within one
// page per pair.
func TestDryRunPredictsTheRequests(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}, []string{"1h"}
	natsURL := startUp(t, t.TempDir(), fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	for _, body := range []string{
		`{"start":"listing","end":"2023-01-01T00:00:00Z"}`,
		`{"start":"2024-01-01T00:00:00Z","end":"2024-03-01T00:00:00Z"}`,
		`{"lookback":2500}`,
	} {
		t.Run(body, func(t *testing.T) {
			var req map[string]any
			_ = json.Unmarshal([]byte(body), &req)
			req["dry_run"] = true
			dry, _ := json.Marshal(req)
			msg, err := nc.Request(candles.SubjectAPISync, dry, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var plan candles.SyncPlan
			if err := json.Unmarshal(msg.Data, &plan); err != nil || !plan.DryRun || len(plan.Pairs) != 3 {
				t.Fatalf("dry run reply %s (%v) %v", msg.Data, err, msg.Header)
			}
			if plan.Weight != 2*plan.Requests || plan.WeightLimit != 6000 || plan.EstimatedSecond <= 0 {
				t.Fatalf("plan totals: %+v", plan)
			}
			s.ResetStats()
			acc := requestSync(t, nc, body)
			var done candles.SyncCompleted
			ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
			stats := s.Stats()
			for _, pp := range plan.Pairs {
				got := int(stats.Klines[pp.Symbol+"/"+pp.Interval])
				if d := got - pp.Requests; d < -1 || d > 1 {
					t.Errorf("%s/%s: planned %d requests, made %d", pp.Symbol, pp.Interval, pp.Requests, got)
				}
			}
			if d := done.Candles; d == 0 {
				t.Fatalf("the real run fetched nothing: %+v", done)
			}
		})
	}
}

// Pacing: a full-history backfill of 20 symbols x 1h against a simulator
// enforcing 6000 weight per minute, scaled ten times faster (1000 per 1 s),
// gets no 429 and stores exactly the exchange's history.
func TestFullHistoryBackfillIsPacedWithoutA429(t *testing.T) {
	if testing.Short() {
		t.Skip("a long backfill; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{WeightLimit: 1000, WeightWindow: time.Second})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = candles.DefaultSymbols()[:20], []string{"1h"}
	dataDir := t.TempDir()
	natsURL := startUp(t, dataDir, fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	end := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	acc := requestSync(t, nc, `{"start":"listing","end":"2025-01-01T00:00:00Z","reason":"full history"}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
	st := s.Stats()
	if st.RateLimited != 0 || st.Banned != 0 {
		t.Fatalf("%d answers 429 and %d 418 during a paced backfill (max weight in a window %d of 1000)", st.RateLimited, st.Banned, st.MaxUsedWeight)
	}
	if done.PairsOK != 20 || st.Paths["/api/v3/klines"] < 20*40 {
		t.Fatalf("backfill: %+v with %d klines requests", done, st.Paths["/api/v3/klines"])
	}
	want := map[candles.Pair][]candles.Candle{}
	for _, sym := range fo.Symbols {
		want[candles.Pair{Symbol: sym, Interval: "1h"}] = s.Klines(sym, candles.MustInterval("1h"), 0, end.UnixMilli())
	}
	assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)), want)
}

// The start-up catch-up does not give up when the exchange is not reachable
// yet: it retries until it can read the exchange's clock.
func TestCatchUpWaitsForTheExchange(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	s.AddFault(sim.Fault{Kind: sim.FaultStatus, Status: 503, Path: "/api/v3/time", Count: 2})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback, fo.CatchUp = []string{"BTCUSDT", "ETHUSDT"}, []string{"4h"}, 5, true
	since := time.Now()
	natsURL := startUp(t, t.TempDir(), fo)
	ev := watchEventsSince(t, connect(t, natsURL), since)
	var done candles.SyncCompleted
	ev.waitMatch(t, candles.KindSyncCompleted, 30*time.Second, &done, func() bool { return true })
	if done.PairsOK != 2 || done.Candles != 10 {
		t.Fatalf("catch-up: %+v", done)
	}
	if got := s.Stats().Paths["/api/v3/time"]; got < 3 {
		t.Fatalf("%d requests for the exchange's clock, want the 2 failures and a success", got)
	}
}

// A run not complete by --sync-timeout ends with sync.timeout naming the
// pairs still open; what it wrote stays, and no sync.completed follows.
func TestRunDeadlineEndsWithSyncTimeout(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	s.AddFault(sim.Fault{Kind: sim.FaultLatency, Path: "/api/v3/klines", Symbol: "ETHUSDT", Delay: 5 * time.Second})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.SyncTimeout = []string{"BTCUSDT", "ETHUSDT"}, []string{"4h"}, 2*time.Second
	dataDir := t.TempDir()
	natsURL := startUp(t, dataDir, fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"start":"2024-01-01T00:00:00Z","end":"2024-02-01T00:00:00Z"}`)
	var to candles.SyncTimeout
	ev.wait(t, candles.KindSyncTimeout, acc.RunID, 30*time.Second, &to)
	if len(to.OpenPairs) != 1 || to.OpenPairs[0] != (candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}) || to.PairsOK != 1 || to.Deadline.IsZero() {
		t.Fatalf("sync.timeout = %+v, want ETHUSDT/4h open and BTCUSDT done", to)
	}
	// Barrier: the fetcher has ended the open pair's job (at the deadline
	// it cancels the slow request and terminates the job), so nothing more
	// of this run can reach the writer: a wrong sync.completed would be
	// out by now.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, time.Minute, 50*time.Millisecond, func() error {
		s, err := js.Stream(t.Context(), candles.StreamJobs)
		if err != nil {
			return err
		}
		if n := s.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d jobs still queued or in progress", n)
		}
		return nil
	})
	if n := len(ev.of(candles.KindSyncCompleted, acc.RunID)); n != 0 {
		t.Fatalf("%d sync.completed after sync.timeout", n)
	}
	if n := len(ev.of(candles.KindSyncTimeout, acc.RunID)); n != 1 {
		t.Fatalf("%d sync.timeout events, want 1", n)
	}
	got := readDB(t, filepath.Join(dataDir, databaseFile))
	btc := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC)
	assertSame(t, map[candles.Pair][]candles.Candle{btc: got[btc]}, truth(s, []string{"BTCUSDT"}, "4h", from, until))
}
