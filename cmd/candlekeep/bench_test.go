package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// The benchmarks print the performance targets (docs/architecture.md), each measured in
// one run (`make bench` runs them with -benchtime 1x). They never fail on a
// figure: a missed target is printed as MISSED with the number.

func report(format string, args ...any) { fmt.Printf("TARGET  "+format+"\n", args...) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

var benchSymbols = candles.DefaultSymbols()[:20]

// Backfill: the writer against a raw SQLite upsert loop on the same rows,
// and the whole pipeline from request to sync.completed.
func BenchmarkBackfill(b *testing.B) {
	s := sim.New(sim.Options{})
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 11, 0, 0, 0, 0, time.UTC)
	iv := candles.MustInterval("1m")
	pages := map[candles.Pair][][]candles.Candle{}
	total := 0
	for _, sym := range benchSymbols {
		cs := s.Klines(sym, iv, from.UnixMilli(), until.UnixMilli())
		for i := 0; i < len(cs); i += 1000 {
			pages[candles.Pair{Symbol: sym, Interval: "1m"}] = append(pages[candles.Pair{Symbol: sym, Interval: "1m"}], cs[i:min(i+1000, len(cs))])
		}
		total += len(cs)
	}
	for i := 0; i < b.N; i++ {
		raw := rawUpsertLoop(b, pages)
		drain := writerDrain(b, pages, total)
		pipe := pipelineBackfill(b, from, until, total)
		report("backfill, raw SQLite upsert loop (1000 rows/tx):      %9.0f candles/s (%d candles)", raw, total)
		report("backfill, writer applying CANDLES batches:            %9.0f candles/s  ratio %.2f of raw (target >= 0.70: %s)", drain, drain/raw, verdict(drain/raw >= 0.7))
		report("backfill, whole pipeline (request -> sync.completed): %9.0f candles/s  ratio %.2f of raw (target >= 0.70: %s)", pipe, pipe/raw, verdict(pipe/raw >= 0.7))
		b.ReportMetric(drain/raw, "writer/raw")
		b.ReportMetric(pipe/raw, "pipeline/raw")
		b.ReportMetric(pipe, "pipeline-candles/s")
	}
}

func rawUpsertLoop(b *testing.B, pages map[candles.Pair][][]candles.Candle) float64 {
	path := filepath.Join(b.TempDir(), "raw.db")
	st, err := store.Open(context.Background(), path) // the same schema
	if err != nil {
		b.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	stmt, err := db.Prepare(`INSERT INTO candles (symbol, interval, open_time, close_time, open, high, low, close,
  volume, quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, interval, open_time) DO UPDATE SET
  close_time = excluded.close_time, open = excluded.open, high = excluded.high, low = excluded.low,
  close = excluded.close, volume = excluded.volume, quote_volume = excluded.quote_volume,
  trades = excluded.trades, taker_buy_base_volume = excluded.taker_buy_base_volume,
  taker_buy_quote_volume = excluded.taker_buy_quote_volume`)
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	began, n := time.Now(), 0
	for p, ps := range pages {
		for _, cs := range ps {
			tx, err := db.Begin()
			if err != nil {
				b.Fatal(err)
			}
			txs := tx.Stmt(stmt)
			for _, c := range cs {
				if _, err := txs.Exec(p.Symbol, p.Interval, c.OpenTime, c.CloseTime, c.Open, c.High, c.Low, c.Close,
					c.Volume, c.QuoteVolume, c.Trades, c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			n += len(cs)
		}
	}
	return float64(n) / time.Since(began).Seconds()
}

// writerDrain publishes the pages to CANDLES first, then times the writer
// from start to the run's sync.completed.
func writerDrain(b *testing.B, pages map[candles.Pair][][]candles.Candle, total int) float64 {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Shutdown()
	nc := connect(b, ns.ClientURL())
	js, _ := jetstream.New(nc)
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	ev := watchEvents(b, nc)
	var pairs []candles.Pair
	var grants []candles.JobGrant
	tokens := map[candles.Pair]string{}
	for p, ps := range pages {
		pairs = append(pairs, p)
		token, err := candles.NewJobToken()
		if err != nil {
			b.Fatal(err)
		}
		tokens[p] = token
		last := ps[len(ps)-1]
		grants = append(grants, candles.JobGrant{Symbol: p.Symbol, Interval: p.Interval, From: ps[0][0].OpenTime,
			Until: last[len(last)-1].OpenTime + 1, TokenSHA256: candles.TokenSHA256(token)})
	}
	if err := candles.PublishEvent(ctx, js, &candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "bench"),
		Pairs: pairs, PairsTotal: len(pairs), Jobs: grants}, "", time.Now()); err != nil {
		b.Fatal(err)
	}
	for p, ps := range pages {
		for i, cs := range ps {
			data, _ := json.Marshal(candles.Batch{V: 1, RunID: "bench", Symbol: p.Symbol, Interval: p.Interval, Page: i, Final: i == len(ps)-1, Token: tokens[p], Candles: cs})
			if _, err := js.Publish(ctx, candles.BatchSubject(p.Interval, p.Symbol), data); err != nil {
				b.Fatal(err)
			}
		}
	}
	st, err := store.Open(ctx, filepath.Join(b.TempDir(), "candles.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	o := writer.DefaultOptions()
	o.Conn, o.Store = connect(b, ns.ClientURL()), st
	w, err := writer.New(o)
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var sc candles.SyncCompleted
	ev.wait(b, candles.KindSyncCompleted, "bench", 5*time.Minute, &sc)
	took := time.Since(began)
	if sc.Candles != int64(total) {
		b.Fatalf("writer applied %d candles, want %d", sc.Candles, total)
	}
	cancel()
	<-done
	return float64(total) / took.Seconds()
}

func pipelineBackfill(b *testing.B, from, until time.Time, total int) float64 {
	_, url := startSim(b, sim.Options{})
	fo := testFetcherOptions(url)
	fo.Symbols, fo.Intervals = benchSymbols, []string{"1m"}
	natsURL := startUp(b, b.TempDir(), fo)
	nc := connect(b, natsURL)
	ev := watchEvents(b, nc)
	began := time.Now()
	acc := requestSync(b, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var sc candles.SyncCompleted
	ev.wait(b, candles.KindSyncCompleted, acc.RunID, 5*time.Minute, &sc)
	took := time.Since(began)
	if sc.Candles != int64(total) || sc.PairsOK != len(benchSymbols) {
		b.Fatalf("pipeline: %+v, want %d candles", sc, total)
	}
	return float64(total) / took.Seconds()
}

// Backfill through a flaky exchange: the same backfill with 30 % of the
// klines requests answered 503, against a clean run in the same session,
// with the production retry settings. It must complete in one run (the
// figure is only printed when it does); the ratio is what the retries cost.
func BenchmarkFlakyBackfill(b *testing.B) {
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 11, 0, 0, 0, 0, time.UTC)
	for i := 0; i < b.N; i++ {
		clean, total, _ := faultedBackfill(b, from, until)
		flaky, _, served := faultedBackfill(b, from, until,
			sim.Fault{Kind: sim.FaultStatus, Path: "/api/v3/klines", Status: 503, Rate: 0.3, Seed: 1})
		report("backfill under 30 %% HTTP 503 (one run, %d candles, %d klines requests): %9.0f candles/s  ratio %.2f of a clean run (%9.0f candles/s)",
			total, served, flaky, flaky/clean, clean)
		b.ReportMetric(flaky/clean, "flaky/clean")
	}
}

// faultedBackfill runs the pipeline backfill of benchSymbols x 1m against a
// simulator with faults and returns its candles per second, the candles and
// the klines requests the exchange served; every pair must end ok in one run.
func faultedBackfill(b *testing.B, from, until time.Time, faults ...sim.Fault) (perSecond float64, total int, served int64) {
	s, url := startSim(b, sim.Options{})
	for _, f := range faults {
		s.AddFault(f)
	}
	fo := testFetcherOptions(url)
	fo.Symbols, fo.Intervals = benchSymbols, []string{"1m"}
	fo.RetryBase = fetcher.DefaultRetryBase
	natsURL := startUp(b, b.TempDir(), fo)
	nc := connect(b, natsURL)
	ev := watchEvents(b, nc)
	total = count(truth(s, benchSymbols, "1m", from, until))
	began := time.Now()
	acc := requestSync(b, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var sc candles.SyncCompleted
	ev.wait(b, candles.KindSyncCompleted, acc.RunID, 10*time.Minute, &sc)
	took := time.Since(began)
	if sc.Candles != int64(total) || sc.PairsOK != len(benchSymbols) {
		b.Fatalf("backfill with faults %v: %+v, want every pair ok and %d candles", faults, sc, total)
	}
	for _, n := range s.Stats().Klines {
		served += n
	}
	return float64(total) / took.Seconds(), total, served
}

// Incremental sync: 60 symbols x 4h, the simulator at 50 ms per request,
// request to sync.completed; first on an empty database with lookback 4,
// then the next run that finds everything stored.
func BenchmarkIncrementalSync(b *testing.B) {
	for i := 0; i < b.N; i++ {
		s, url := startSim(b, sim.Options{Latency: 50 * time.Millisecond})
		natsURL := startUp(b, b.TempDir(), testFetcherOptions(url))
		nc := connect(b, natsURL)
		ev := watchEvents(b, nc)
		timeRun := func(body string) (time.Duration, candles.SyncCompleted) {
			began := time.Now()
			acc := requestSync(b, nc, body)
			var sc candles.SyncCompleted
			ev.wait(b, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &sc)
			return time.Since(began), sc
		}
		s.ResetStats()
		first, sc1 := timeRun(`{"lookback":4}`)
		req1 := s.Stats().Requests
		s.ResetStats()
		second, sc2 := timeRun(`{}`)
		req2 := s.Stats().Requests
		if sc1.PairsOK != 60 || sc1.Candles != 240 || sc2.PairsOK != 60 {
			b.Fatalf("runs: %+v / %+v", sc1, sc2)
		}
		report("sync of 60 symbols x 4 bars (4h), 50 ms per request:   %6.3f s, %d requests (target < 2 s: %s)", first.Seconds(), req1, verdict(first < 2*time.Second))
		report("incremental sync of 60 symbols x 4h, 50 ms per request: %6.3f s, %d requests (target < 2 s: %s)", second.Seconds(), req2, verdict(second < 2*time.Second))
		b.ReportMetric(first.Seconds(), "s-60x4bars")
		b.ReportMetric(second.Seconds(), "s-incremental")
	}
}

// Weight budget: a full-history backfill of 20 symbols x 1h against a simulator enforcing 6000 weight per
// minute, scaled to 300 per 3 s so it fits a benchmark; share of the budget
// used over the run and the number of 429s.
func BenchmarkWeightBudget(b *testing.B) {
	const limit, window = 300, 3 * time.Second
	for i := 0; i < b.N; i++ {
		s, url := startSim(b, sim.Options{WeightLimit: limit, WeightWindow: window})
		fo := testFetcherOptions(url)
		fo.Symbols, fo.Intervals = benchSymbols, []string{"1h"}
		natsURL := startUp(b, b.TempDir(), fo)
		nc := connect(b, natsURL)
		ev := watchEvents(b, nc)
		time.Sleep(time.Until(time.Now().Truncate(window).Add(window))) // start on a window boundary
		s.ResetStats()
		began := time.Now()
		acc := requestSync(b, nc, `{"start":"listing","end":"2025-01-01T00:00:00Z"}`)
		var sc candles.SyncCompleted
		ev.wait(b, candles.KindSyncCompleted, acc.RunID, 10*time.Minute, &sc)
		took := time.Since(began)
		st := s.Stats()
		used := 0
		for _, w := range st.Windows {
			used += w.Weight
		}
		windows := took.Seconds() / window.Seconds()
		share := float64(used) / (float64(limit) * windows)
		report("weight budget used in a paced backfill (%d pages):   %5.1f %% of %d per %v over %.1f s (target >= 90 %%: %s), 429s: %d (target 0: %s)",
			st.Paths["/api/v3/klines"], 100*share, limit, window, took.Seconds(), verdict(share >= 0.9), st.RateLimited, verdict(st.RateLimited == 0))
		b.ReportMetric(100*share, "%budget")
		b.ReportMetric(float64(st.RateLimited), "429s")
	}
}

// Shared weight budget, at the real figure of the issue: three `candlekeep
// fetcher` processes beside `candlekeep up` (four fetchers) against a
// simulator enforcing 120 weight per minute backfill 12 pairs x 1h from
// 2025-01-01 (several minutes); time taken, 429s and share of the budget
// used. TestFetchersShareTheWeightBudget runs the same with 2 s windows.
func BenchmarkSharedWeightBudget(b *testing.B) {
	const limit, window = 120, time.Minute
	for i := 0; i < b.N; i++ {
		f := startFleet(b, sim.Options{WeightLimit: limit, WeightWindow: window}, 3)
		ev := watchEvents(b, connect(b, f.server))
		time.Sleep(time.Until(time.Now().Truncate(window).Add(window))) // start on a window boundary
		f.sim.ResetStats()
		began := time.Now()
		runID, asked := f.backfill(b)
		var sc candles.SyncCompleted
		ev.wait(b, candles.KindSyncCompleted, runID, 30*time.Minute, &sc)
		took := time.Since(began)
		f.assertComplete(b, asked)
		st := f.sim.Stats()
		used := 0
		for _, w := range st.Windows {
			used += w.Weight
		}
		share := float64(used) / (float64(limit) * took.Seconds() / window.Seconds())
		report("shared budget, 4 fetchers, %d pairs x 1h from 2025-01-01 (%d pages): %.0f s, %5.1f %% of %d per %v used, max %d in a window, 429s: %d (target 0: %s)",
			sc.PairsOK, st.Paths["/api/v3/klines"], took.Seconds(), 100*share, limit, window, st.MaxUsedWeight, st.RateLimited, verdict(st.RateLimited == 0))
		b.ReportMetric(took.Seconds(), "s")
		b.ReportMetric(100*share, "%budget")
		b.ReportMetric(float64(st.RateLimited), "429s")
	}
}

// Runs that coalesce: the shared-budget backfill (four fetchers, 12 pairs x
// 1h from 2025-01-01) with the schedule firing throughout, against the same
// backfill with no schedule, measured from its sync.completed (started_at
// to finished_at). Scaled like TestFetchersShareTheWeightBudget: 120 weight
// per 2 s window, and the "@every 15s" at 120 per minute becomes
// "@every 1s", the shortest schedule there is. Target: within 1.2x.
func BenchmarkBackfillUnderSchedule(b *testing.B) {
	const limit, window = 120, 2 * time.Second
	for i := 0; i < b.N; i++ {
		took := map[string]time.Duration{}
		for _, sched := range []string{"off", "@every 1s"} {
			f := startFleet(b, sim.Options{WeightLimit: limit, WeightWindow: window}, 3, sched)
			ev := watchEvents(b, connect(b, f.server))
			runID, asked := f.backfill(b)
			var sc candles.SyncCompleted
			ev.wait(b, candles.KindSyncCompleted, runID, 10*time.Minute, &sc)
			f.assertComplete(b, asked)
			took[sched] = sc.FinishedAt.Sub(sc.StartedAt)
			if st := f.sim.Stats(); st.RateLimited != 0 {
				b.Fatalf("schedule %s: %d 429s", sched, st.RateLimited)
			}
			for _, p := range f.procs {
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				<-p.done
			}
		}
		ratio := took["@every 1s"].Seconds() / took["off"].Seconds()
		report("backfill of 12 pairs x 1h, 4 fetchers, 120 weight per 2 s: %.1f s alone, %.1f s with the schedule firing every second: %.2fx (target <= 1.2x: %s)",
			took["off"].Seconds(), took["@every 1s"].Seconds(), ratio, verdict(ratio <= 1.2))
		b.ReportMetric(ratio, "x")
	}
}

// Prompt hand-back: a fetcher stopped with SIGTERM mid-backfill and started
// again; the time from the new process's start to the first new candle in
// the database (its start-up included). Target: under 2 s.
func BenchmarkRestartResumes(b *testing.B) {
	for i := 0; i < b.N; i++ {
		_, simURL := startSim(b, sim.Options{Latency: 50 * time.Millisecond})
		ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(ns.Shutdown)
		dataDir := b.TempDir()
		dbPath := filepath.Join(dataDir, databaseFile)
		start(b, nil, "writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", simURL, "--log-level", "warn")
		args := []string{"fetcher", "--nats-url", ns.ClientURL(), "--binance-url", simURL, "--symbols", "BTCUSDT,ETHUSDT",
			"--intervals", "1h", "--sync-schedule", "off", "--catch-up=false", "--log-level", "warn"}
		f1 := start(b, nil, args...)
		natsUntil(b, ns.ClientURL(), "candlekeep-fetcher", "micro", "ls")
		nc := connect(b, ns.ClientURL())
		from := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
		requestSync(b, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), from.Add(40000*time.Hour).Format(time.RFC3339)))
		waitRows(b, dbPath, 6000, f1)
		_ = f1.cmd.Process.Signal(syscall.SIGTERM)
		<-f1.done
		// Barrier: the writer has applied everything published before the stop.
		js, _ := jetstream.New(nc)
		checkFor(b, time.Minute, 50*time.Millisecond, func() error {
			c, err := js.Consumer(b.Context(), candles.StreamCandles, "writer")
			if err != nil {
				return err
			}
			info, err := c.Info(b.Context())
			if err != nil {
				return err
			}
			if info.NumPending > 0 || info.NumAckPending > 0 {
				return fmt.Errorf("writer backlog %d + %d in flight", info.NumPending, info.NumAckPending)
			}
			return nil
		})
		before := rowCount(b, dbPath)
		restarted := time.Now()
		f2 := start(b, nil, args...)
		waitRows(b, dbPath, before+1, f2)
		took := time.Since(restarted)
		report("fetcher restarted mid-backfill (SIGTERM, then a new process): first new candle stored %.2f s after the start (target < 2 s: %s)",
			took.Seconds(), verdict(took < 2*time.Second))
		b.ReportMetric(took.Seconds(), "s-to-resume")
	}
}

// Memory: peak RSS of the writer and fetcher processes during a backfill.
func BenchmarkServiceMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		simAddr := freeAddr(b)
		simProc := start(b, nil, "sim", "--listen", simAddr, "--log-level", "warn")
		waitHTTP(b, "http://"+simAddr+"/api/v3/ping", simProc)
		ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(ns.Shutdown)
		dataDir := b.TempDir()
		syms := strings.Join(benchSymbols, ",")
		w := start(b, nil, "writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", "http://"+simAddr, "--log-level", "warn")
		f := start(b, nil, "fetcher", "--nats-url", ns.ClientURL(), "--binance-url", "http://"+simAddr,
			"--symbols", syms, "--intervals", "1m", "--log-level", "warn", "--catch-up=false", "--sync-schedule", "off")
		nc := connect(b, ns.ClientURL())
		ev := watchEvents(b, nc)
		natsUntil(b, ns.ClientURL(), "candlekeep-writer", "micro", "ls")
		natsUntil(b, ns.ClientURL(), "candlekeep-fetcher", "micro", "ls")
		acc := requestSync(b, nc, `{"start":"2024-01-01T00:00:00Z","end":"2024-01-21T00:00:00Z"}`)
		var sc candles.SyncCompleted
		ev.wait(b, candles.KindSyncCompleted, acc.RunID, 10*time.Minute, &sc)
		for _, p := range []struct {
			name string
			proc *proc
		}{{"writer", w}, {"fetcher", f}} {
			mb := peakRSS(b, p.proc.cmd.Process.Pid)
			report("peak RSS of the %-7s during a backfill of %d candles: %6.1f MB (target < 100 MB: %s)", p.name, sc.Candles, mb, verdict(mb < 100))
			b.ReportMetric(mb, p.name+"-MB")
		}
	}
}

// Memory against the number of pairs: peak RSS of `candlekeep up` (embedded
// nats-server, fetcher and writer in one process), and of the split fetcher
// and writer against a separate server, during the start-up catch-up of
// every pair (1000 candles each, the default lookback) from the simulator.
// 60 pairs is the default set (60 symbols x 4h); 960 is the 60 shipped
// symbols x all 16 intervals, the nearest the shipped symbols allow to
// 1,000. The target is 100 MB per service whatever the pairs.
func BenchmarkPairsMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		for _, tc := range []struct {
			name      string
			intervals []string
		}{
			{"60", []string{"4h"}},
			{"960", candles.IntervalNames()},
		} {
			pairs := len(candles.DefaultSymbols()) * len(tc.intervals)
			ivs := strings.Join(tc.intervals, ",")
			mb, sc := catchUpUp(b, ivs)
			report("peak RSS of up (NATS + fetcher + writer), catch-up of %4d pairs (%d candles, %d pairs failed): %6.1f MB (target < 100 MB: %s)",
				pairs, sc.Candles, sc.PairsFailed, mb, verdict(mb < 100))
			b.ReportMetric(mb, "up-MB-"+tc.name+"pairs")
			fmb, wmb, sc := catchUpSplit(b, ivs)
			report("peak RSS of the fetcher / writer, catch-up of %4d pairs (%d candles): %6.1f MB / %6.1f MB (target < 100 MB: %s)",
				pairs, sc.Candles, fmb, wmb, verdict(fmb < 100 && wmb < 100))
			b.ReportMetric(fmb, "fetcher-MB-"+tc.name+"pairs")
			b.ReportMetric(wmb, "writer-MB-"+tc.name+"pairs")
		}
	}
}

// catchUpSim starts the simulator with a weight limit the catch-up never
// reaches (pacing is not what is measured here).
func catchUpSim(b *testing.B) string {
	simAddr := freeAddr(b)
	simProc := start(b, nil, "sim", "--listen", simAddr, "--weight-limit", "100000000", "--log-level", "warn")
	waitHTTP(b, "http://"+simAddr+"/api/v3/ping", simProc)
	return "http://" + simAddr
}

// catchUpUp runs `candlekeep up` until its start-up catch-up completes and
// returns its peak RSS.
func catchUpUp(b *testing.B, intervals string) (float64, candles.SyncCompleted) {
	simURL := catchUpSim(b)
	began := time.Now()
	natsAddr := freeAddr(b)
	up := start(b, nil, "up", "--nats-insecure", "--data-dir", b.TempDir(), "--nats-listen", natsAddr, "--http-listen", freeAddr(b), "--binance-url", simURL,
		"--intervals", intervals, "--weight-limit", "100000000", "--sync-schedule", "off", "--log-level", "warn")
	natsURL := "nats://" + natsAddr
	natsUntil(b, natsURL, "candlekeep-writer", "micro", "ls")
	sc := waitCatchUp(b, natsURL, began)
	return peakRSS(b, up.cmd.Process.Pid), sc
}

// catchUpSplit runs a writer and a fetcher process against a server in the
// benchmark's process until the fetcher's catch-up completes.
func catchUpSplit(b *testing.B, intervals string) (fetcherMB, writerMB float64, sc candles.SyncCompleted) {
	simURL := catchUpSim(b)
	began := time.Now()
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ns.Shutdown)
	w := start(b, nil, "writer", "--nats-url", ns.ClientURL(), "--data-dir", b.TempDir(), "--binance-url", simURL, "--log-level", "warn")
	natsUntil(b, ns.ClientURL(), "candlekeep-writer", "micro", "ls")
	f := start(b, nil, "fetcher", "--nats-url", ns.ClientURL(), "--binance-url", simURL,
		"--intervals", intervals, "--weight-limit", "100000000", "--sync-schedule", "off", "--log-level", "warn")
	sc = waitCatchUp(b, ns.ClientURL(), began)
	return peakRSS(b, f.cmd.Process.Pid), peakRSS(b, w.cmd.Process.Pid), sc
}

// waitCatchUp waits for the sync.completed of the catch-up run.
func waitCatchUp(b *testing.B, natsURL string, since time.Time) candles.SyncCompleted {
	ev := watchEventsSince(b, connect(b, natsURL), since)
	var sc candles.SyncCompleted
	ev.waitMatch(b, candles.KindSyncCompleted, 10*time.Minute, &sc, func() bool { return true })
	return sc
}

// BenchmarkRestore is in restore_bench_test.go.

func peakRSS(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmHWM")
	return 0
}
