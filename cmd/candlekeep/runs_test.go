package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// How runs behave as a user sees them (issue 6), driving bin/candlekeep as
// processes against a simulator.

// upProc starts `candlekeep up` against binanceURL with args added, and
// returns its NATS URL once both services answer.
func upProc(t *testing.T, binanceURL, dataDir string, args ...string) (string, *proc) {
	t.Helper()
	natsAddr := freeAddr(t)
	all := append([]string{"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--binance-url", binanceURL,
		"--catch-up=false", "--retry-base", "200ms", "--log-format", "json"}, args...)
	p := start(t, nil, all...)
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")
	natsUntil(t, server, "candlekeep-fetcher", "micro", "ls")
	return server, p
}

// runsOfPages returns, per pair, the run of each page in CANDLES in stream
// order.
func runsOfPages(t *testing.T, server string, pairs []candles.Pair) map[candles.Pair][]string {
	t.Helper()
	js, err := jetstream.New(connect(t, server))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	out := map[candles.Pair][]string{}
	for _, p := range pairs {
		cons, err := js.OrderedConsumer(ctx, candles.StreamCandles, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{candles.BatchSubject(p.Interval, p.Symbol)}})
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for n := info.NumPending; n > 0; n-- {
			m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			var b candles.Batch
			if err := json.Unmarshal(m.Data(), &b); err != nil {
				t.Fatal(err)
			}
			out[p] = append(out[p], b.RunID)
		}
	}
	return out
}

// (a) The schedule firing every 2 s during a paced backfill of several pairs
// does not queue competing runs: the ticks skip the busy pairs
// (sync.skipped naming the backfill), each pair's pages come from one run at
// a time, and the database ends exact.
func TestScheduleDuringBackfillCoalescesRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{Latency: 200 * time.Millisecond})
	symbols := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}
	dataDir := t.TempDir()
	server, _ := upProc(t, simURL, dataDir, "--symbols", strings.Join(symbols, ","), "--intervals", "1h",
		"--lookback", "5", "--sync-schedule", "@every 2s")
	nc := connect(t, server)
	ev := watchEventsSince(t, nc, time.Now().Add(-time.Hour))

	// The first tick fills the empty pairs with --lookback bars.
	var first candles.SyncCompleted
	ev.waitMatch(t, candles.KindSyncCompleted, time.Minute, &first, func() bool { return first.PairsOK == len(symbols) })

	iv := candles.MustInterval("1h")
	from := time.UnixMilli(iv.Align(time.Now().Add(-20000 * time.Hour).UnixMilli())).UTC()
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"reason":"backfill"}`, from.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
	if done.PairsOK != len(symbols) || done.CandlesNew+done.CandlesRefetched != done.Candles || done.CandlesRefetched < int64(len(symbols)) {
		t.Fatalf("backfill sync.completed = %+v: want every pair, candles_new + candles_refetched = candles, the lookback bars re-fetched", done)
	}

	// The ticks during the backfill were skipped, naming it.
	skippedForBackfill := 0
	for _, raw := range ev.of(candles.KindSyncSkipped, "") {
		var sk candles.SyncSkipped
		if err := json.Unmarshal(raw, &sk); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(sk.SyncingRuns, acc.RunID) {
			skippedForBackfill++
			if len(sk.Pairs) == 0 || sk.Reason == "" {
				t.Errorf("sync.skipped %+v names no pair or no reason", sk)
			}
			if sk.PairsStarted == 0 && len(ev.of(candles.KindSyncStarted, sk.RunID)) != 0 {
				t.Errorf("run %s skipped every pair but started", sk.RunID)
			}
		}
	}
	if skippedForBackfill == 0 {
		t.Fatalf("no sync.skipped names the backfill %s, though the schedule fired every 2s during it", acc.RunID)
	}

	// One run at a time per pair: each pair's pages are in blocks by run.
	var pairs []candles.Pair
	for _, sym := range symbols {
		pairs = append(pairs, candles.Pair{Symbol: sym, Interval: "1h"})
	}
	for p, runs := range runsOfPages(t, server, pairs) {
		seen := map[string]bool{}
		for i, r := range runs {
			if i > 0 && runs[i-1] != r && seen[r] {
				t.Fatalf("%s: pages of run %s interleave with another run's: %v", p, r, runs)
			}
			seen[r] = true
		}
	}

	// Exact: from the backfill's start to the newest stored candle.
	got := readDB(t, filepath.Join(dataDir, databaseFile))
	for _, p := range pairs {
		rows := got[p]
		if len(rows) == 0 {
			t.Fatalf("%s: no rows", p)
		}
		last := rows[len(rows)-1].OpenTime
		want := s.Klines(p.Symbol, iv, from.UnixMilli(), iv.Next(last))
		assertSame(t, map[candles.Pair][]candles.Candle{p: rows}, map[candles.Pair][]candles.Candle{p: want})
		if last < iv.Add(iv.Align(time.Now().UnixMilli()), -3) {
			t.Fatalf("%s: newest stored candle %v is not recent", p, time.UnixMilli(last).UTC())
		}
	}
}

var pairFetchedRE = regexp.MustCompile(`"msg":"pair fetched".*`)

// (b) A fetcher stopped with SIGTERM mid-backfill hands its jobs back with
// their checkpoints; the fetcher started next resumes them from there at
// once, not after the job AckWait (a minute).
func TestFetcherRestartedMidBackfillResumesAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{Latency: 150 * time.Millisecond})
	ns := natstest.RunServer(t)
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	symbols := []string{"BTCUSDT", "ETHUSDT"}
	start(t, nil, "writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--log-format", "json")
	fetcherArgs := []string{"fetcher", "--nats-url", ns.ClientURL(), "--binance-url", simURL, "--symbols", strings.Join(symbols, ","),
		"--intervals", "1h", "--sync-schedule", "off", "--catch-up=false", "--log-format", "json"}
	f1 := start(t, nil, fetcherArgs...)
	nc := connect(t, ns.ClientURL())
	ev := watchEvents(t, nc)
	natsUntil(t, ns.ClientURL(), "candlekeep-fetcher", "micro", "ls")

	iv := candles.MustInterval("1h")
	from := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
	until := from.Add(20000 * time.Hour) // 20 pages per pair
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	waitRows(t, dbPath, 2*3000, f1)
	if err := f1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f1.done:
		if f1.err != nil {
			t.Fatalf("fetcher exited with %v after SIGTERM:\n%s", f1.err, f1.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("fetcher did not stop within 20s of SIGTERM:\n%s", f1.out)
	}
	if !strings.Contains(f1.out.String(), "job handed back at shutdown") {
		t.Fatalf("the stopped fetcher did not hand its jobs back:\n%s", f1.out)
	}

	restarted := time.Now()
	f2 := start(t, nil, fetcherArgs...)
	// The job AckWait is a minute; a job that waited it out would finish
	// after it. Generous, but well inside.
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 45*time.Second, &done)
	if waited := time.Since(restarted); waited >= time.Minute {
		t.Fatalf("the run finished %v after the restart: the jobs waited out the ack wait", waited)
	}
	resumed := 0
	for _, line := range pairFetchedRE.FindAllString(f2.out.String(), -1) {
		m := regexp.MustCompile(`"resumed_at_page":(\d+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("pair fetched line without resumed_at_page: %s", line)
		}
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			resumed++
		}
	}
	if resumed == 0 {
		t.Fatalf("no job resumed from its checkpoint (page > 0) in the restarted fetcher:\n%s", f2.out)
	}
	if done.PairsOK != 2 {
		t.Fatalf("sync.completed = %+v", done)
	}
	assertSame(t, readDB(t, dbPath), truth(s, symbols, "1h", from, until))
	_ = iv
}

// (c) A request accepted while the exchange is unreachable reports
// sync.waiting within the retry window, and runs once the exchange is
// back.
func TestExchangeUnreachableReportsWaiting(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	simAddr := freeAddr(t) // nothing listens there yet
	dataDir := t.TempDir()
	server, _ := upProc(t, "http://"+simAddr, dataDir, "--symbols", "BTCUSDT", "--intervals", "1h", "--sync-schedule", "off")
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	from := time.Now().Add(-100 * time.Hour).UTC().Truncate(time.Hour)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"reason":"while down"}`, from.Format(time.RFC3339)))
	var waiting candles.SyncWaiting
	ev.wait(t, candles.KindSyncWaiting, acc.RunID, 20*time.Second, &waiting)
	if waiting.Attempt != 1 || waiting.RetryIn <= 0 || !strings.Contains(waiting.Reason, "exchange") {
		t.Fatalf("sync.waiting = %+v: want attempt 1, a retry time and a reason naming the exchange", waiting)
	}
	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	if done.PairsOK != 1 || len(ev.of(candles.KindSyncFailed, acc.RunID)) != 0 {
		t.Fatalf("sync.completed = %+v after the exchange came back", done)
	}
	got := readDB(t, filepath.Join(dataDir, databaseFile))
	iv := candles.MustInterval("1h")
	rows := got[candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}]
	if len(rows) == 0 {
		t.Fatal("no rows")
	}
	assertSame(t, got, truth(sim.New(sim.Options{}), []string{"BTCUSDT"}, "1h", from, time.UnixMilli(iv.Next(rows[len(rows)-1].OpenTime))))
}

// (d) 40 scattered one-candle holes per pair are repaired with at most the
// pages that cover them (counted in the simulator's request log), and the
// database ends exact.
func TestHolesRepairedByTheCoveringPages(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s := sim.New(sim.Options{})
	var reqs sim.RequestLog
	srv := httptest.NewServer(reqs.Wrap(s))
	t.Cleanup(func() { s.Close(); srv.Close() })
	symbols := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	server, _ := upProc(t, srv.URL, dataDir, "--symbols", strings.Join(symbols, ","), "--intervals", "1h",
		"--lookback", "2200", "--sync-schedule", "off")
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"reason":"fill"}`)
	var filled candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &filled)

	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stored := readDB(t, dbPath)
	var lo, hi int64
	for _, sym := range symbols {
		rows := stored[candles.Pair{Symbol: sym, Interval: "1h"}]
		for i := range 40 {
			c := rows[10+i*53]
			if _, err := db.Exec(`DELETE FROM candles WHERE symbol=? AND interval='1h' AND open_time=?`, sym, c.OpenTime); err != nil {
				t.Fatal(err)
			}
		}
		lo, hi = rows[10].OpenTime, rows[10+39*53].OpenTime+1
	}
	before := len(reqs.All())
	acc = requestSync(t, nc, `{"reason":"audit"}`)
	var audit candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &audit)
	if audit.Repaired != 3*40 || audit.GapsRecorded != 0 {
		t.Fatalf("audit sync.completed = %+v: want 120 repaired, no gap recorded", audit)
	}
	iv := candles.MustInterval("1h")
	covering := (iv.Count(lo, iv.Align(hi-1)) + 999) / 1000 // pages over the holes
	perPair := map[string]int64{}
	for _, r := range reqs.All()[before:] {
		if q, err := url.ParseQuery(r.Query); err == nil && r.Path == "/api/v3/klines" {
			perPair[q.Get("symbol")]++
		}
	}
	for _, sym := range symbols {
		// The covering pages, and one for the range after the last stored candle.
		if perPair[sym] > covering+1 {
			t.Errorf("%s: %d klines requests to repair 40 holes, want at most %d", sym, perPair[sym], covering+1)
		}
	}
	got := readDB(t, dbPath)
	for _, sym := range symbols {
		p := candles.Pair{Symbol: sym, Interval: "1h"}
		rows := got[p]
		want := s.Klines(sym, iv, rows[0].OpenTime, iv.Next(rows[len(rows)-1].OpenTime))
		assertSame(t, map[candles.Pair][]candles.Candle{p: rows}, map[candles.Pair][]candles.Candle{p: want})
	}
}

// (e) A dry run's estimate is within 25% of the run it plans, for one pair
// and for several, against a simulator with a set latency. The run's
// duration is read from its events (sync.completed started_at to
// finished_at), not from the test's clock.
func TestDryRunEstimateWithinAQuarter(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{Latency: 300 * time.Millisecond})
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}
	server, _ := upProc(t, simURL, t.TempDir(), "--symbols", strings.Join(symbols, ","), "--intervals", "1h",
		"--lookback", "5", "--sync-schedule", "off", "--fetch-concurrency", "2")
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	warm := requestSync(t, nc, `{"symbols":["BTCUSDT"],"reason":"measure the latency"}`)
	var w candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, warm.RunID, time.Minute, &w)

	for _, tc := range []struct {
		name    string
		symbols []string
		hours   int
	}{
		{"one pair", []string{"ETHUSDT"}, 8000},
		{"four pairs, two at a time", symbols, 4000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
			syms, _ := json.Marshal(tc.symbols)
			body := fmt.Sprintf(`{"symbols":%s,"start":%q,"end":%q`, syms, from.Format(time.RFC3339),
				from.Add(time.Duration(tc.hours)*time.Hour).Format(time.RFC3339))
			msg, err := nc.Request(candles.SubjectAPISync, []byte(body+`,"dry_run":true}`), 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var plan candles.SyncPlan
			if err := json.Unmarshal(msg.Data, &plan); err != nil {
				t.Fatalf("dry run reply %s: %v", msg.Data, err)
			}
			acc := requestSync(t, nc, body+`}`)
			var done candles.SyncCompleted
			ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
			took := done.FinishedAt.Sub(done.StartedAt).Seconds()
			t.Logf("estimated %.2fs (%d requests at %.3fs), took %.2fs", plan.EstimatedSecond, plan.Requests, plan.RequestSeconds, took)
			if r := plan.EstimatedSecond / took; r < 0.75 || r > 1.25 {
				t.Fatalf("estimated %.2fs, the run took %.2fs: off by more than 25%%", plan.EstimatedSecond, took)
			}
		})
	}
}
