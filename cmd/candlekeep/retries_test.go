package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// Issue 7: the binary survives the infrastructure failing. A flaky
// exchange slows a backfill down but does not fail it; requests the
// exchange cannot serve are refused or moved to what it can; a malformed
// forming candle costs nothing.

var (
	retrySymbols                = []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}
	retryFrom, retryUntil       = time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 21, 0, 0, 0, 0, time.UTC)
	beforeAnyListing            = time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)
	retryBody                   = fmt.Sprintf(`{"symbols":%s,"intervals":["1m"],"start":%q,"end":%q,"reason":"flaky"}`, jsonList(retrySymbols), retryFrom.Format(time.RFC3339), retryUntil.Format(time.RFC3339))
	retryPagesPerPair     int64 = 29 // 20 days of 1m candles, 1000 a page
)

// binaryUp runs bin/candlekeep up against simURL with quick retries, no
// schedule and the extra args, and returns a connection to its NATS, the
// events from the start and the database path.
func binaryUp(t *testing.T, simURL string, args ...string) (*nats.Conn, *events, string) {
	t.Helper()
	natsAddr, dataDir, began := freeAddr(t), t.TempDir(), time.Now()
	start(t, nil, append([]string{"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--binance-url", simURL,
		"--retry-base", "100ms", "--sync-schedule", "off", "--log-format", "json"}, args...)...)
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")
	natsUntil(t, server, "candlekeep-fetcher", "micro", "ls")
	nc := connect(t, server)
	// From EVENTS since the start: the catch-up may finish before this.
	return nc, watchEventsSince(t, nc, began), filepath.Join(dataDir, databaseFile)
}

// #1: one run of an 116-page backfill through a flaky exchange completes,
// every pair ok, the database exact.
func TestRetriesFinishTheJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	for _, tt := range []struct {
		name   string
		faults []sim.Fault
	}{
		{"30% 503", []sim.Fault{{Kind: sim.FaultStatus, Path: "/api/v3/klines", Status: 503, Rate: 0.3, Seed: 1}}},
		{"10% hangs and 10% truncated bodies", []sim.Fault{
			{Kind: sim.FaultTimeout, Path: "/api/v3/klines", Rate: 0.1, Seed: 2, Delay: time.Minute},
			{Kind: sim.FaultTruncate, Path: "/api/v3/klines", Rate: 0.1 / 0.9, Seed: 3}, // 10% of all requests
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, simURL := startSim(t, sim.Options{})
			for _, f := range tt.faults {
				s.AddFault(f)
			}
			nc, ev, dbPath := binaryUp(t, simURL, "--catch-up=false", "--request-timeout", "500ms")
			run := requestSync(t, nc, retryBody)
			var done candles.SyncCompleted
			ev.wait(t, candles.KindSyncCompleted, run.RunID, 3*time.Minute, &done)
			want := truth(s, retrySymbols, "1m", retryFrom, retryUntil)
			if done.PairsOK != len(retrySymbols) || done.PairsFailed != 0 || done.Candles != int64(count(want)) {
				t.Fatalf("sync.completed = %+v, want every pair ok in one run; pair.failed: %s", done, ev.of(candles.KindPairFailed, run.RunID))
			}
			assertSame(t, readDB(t, dbPath), want)
			var served int64
			for _, n := range s.Stats().Klines {
				served += n
			}
			if pages := retryPagesPerPair * int64(len(retrySymbols)); served < pages+10 {
				t.Fatalf("%d klines requests for %d pages; the faults did not act", served, pages)
			}
		})
	}
}

// #2: requests checked against what the exchange can serve.
func TestRequestsCheckedAgainstWhatTheExchangeServes(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	nc, ev, dbPath := binaryUp(t, simURL, "--catch-up=false")
	ask := func(body string) (code, msg string, data []byte) {
		t.Helper()
		resp, err := nc.Request(candles.SubjectAPISync, []byte(body), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Get(micro.ErrorCodeHeader), resp.Header.Get(micro.ErrorHeader), resp.Data
	}

	future := time.Now().UTC().AddDate(0, 0, 3).Format(time.RFC3339)
	if code, msg, _ := ask(`{"symbols":["BTCUSDT"],"intervals":["1d"],"start":"` + future + `"}`); code != "400" || !strings.Contains(msg, "start: ") {
		t.Fatalf("a start in the future: %s %q, want a 400 naming start", code, msg)
	}

	// Before 1970, before Binance: moved to the listing, the pairs ok, the
	// database exact from each pair's first candle.
	for _, tt := range []struct{ interval, start string }{{"1w", "0001-01-01T00:00:00Z"}, {"1M", "1969-06-01T00:00:00Z"}} {
		run := requestSync(t, nc, fmt.Sprintf(`{"symbols":["BTCUSDT","ETHUSDT"],"intervals":[%q],"start":%q}`, tt.interval, tt.start))
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, run.RunID, 2*time.Minute, &done)
		if done.PairsOK != 2 || done.PairsFailed != 0 {
			t.Fatalf("%s from %s: %+v; pair.failed: %s", tt.interval, tt.start, done, ev.of(candles.KindPairFailed, run.RunID))
		}
		var started candles.SyncStarted
		ev.wait(t, candles.KindSyncStarted, run.RunID, time.Second, &started)
		if len(started.Notes) != 1 || !strings.Contains(started.Notes[0], "fetched from its listing") {
			t.Fatalf("sync.started notes %q, want one saying the start moved to the listing", started.Notes)
		}
	}
	got := readDB(t, dbPath)
	want := truth(s, []string{"BTCUSDT", "ETHUSDT"}, "1w", beforeAnyListing, time.Now())
	for p, cs := range truth(s, []string{"BTCUSDT", "ETHUSDT"}, "1M", beforeAnyListing, time.Now()) {
		want[p] = cs
	}
	assertSame(t, got, want)

	// A plan of some fifteen million requests: refused without confirm, the
	// error quoting the dry run's estimate; with confirm the size is no
	// reason to refuse (asked as a dry run, not fetched).
	big := `{"intervals":["1s"],"start":"2018-01-01T00:00:00Z"` // the 60 default symbols
	_, _, data := ask(big + `,"dry_run":true}`)
	var plan candles.SyncPlan
	if err := json.Unmarshal(data, &plan); err != nil || plan.Requests < 1_000_000 {
		t.Fatalf("dry run: %s", data)
	}
	code, msg, _ := ask(big + `}`)
	quote := fmt.Sprintf(`"requests":%d, "weight":%d, "estimated_seconds":%.0f`, plan.Requests, plan.Weight, plan.EstimatedSecond)
	if code != "400" || !strings.Contains(msg, "confirm: ") || !strings.Contains(msg, quote) {
		t.Fatalf("a big plan without confirm: %s %q, want a 400 naming confirm and quoting %s", code, msg, quote)
	}
	if code, msg, data := ask(big + `,"confirm":true,"dry_run":true}`); code != "" || json.Unmarshal(data, &plan) != nil || plan.Requests < 1_000_000 {
		t.Fatalf("a big plan with confirm: %s %q %s", code, msg, data)
	}
}

// #2, the default path: up with --intervals 1M catches up at start-up
// although 1000 months of lookback reach before 1970.
func TestCatchUpOfMonthlyCandles(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	symbols := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}
	_, ev, dbPath := binaryUp(t, simURL, "--symbols", strings.Join(symbols, ","), "--intervals", "1M")
	var done candles.SyncCompleted
	ev.waitMatch(t, candles.KindSyncCompleted, 2*time.Minute, &done, func() bool { return done.PairsTotal == len(symbols) })
	if done.PairsOK != len(symbols) || done.PairsFailed != 0 {
		t.Fatalf("catch-up: %+v; pair.failed: %s", done, ev.of(candles.KindPairFailed, ""))
	}
	assertSame(t, readDB(t, dbPath), truth(s, symbols, "1M", beforeAnyListing, time.Now()))
}

// #3: a malformed still-open candle does not take the closed ones with it.
func TestMalformedOpenCandleIsDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	s.AddFault(sim.Fault{Kind: sim.FaultInvalidOpen, Path: "/api/v3/klines"})
	nc, ev, dbPath := binaryUp(t, simURL, "--catch-up=false")
	from := time.Now().UTC().Add(-1500 * time.Hour).Truncate(time.Hour)
	run := requestSync(t, nc, fmt.Sprintf(`{"symbols":["BTCUSDT","ETHUSDT"],"intervals":["1h"],"start":%q}`, from.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, run.RunID, 2*time.Minute, &done)
	if done.PairsOK != 2 || done.PairsFailed != 0 {
		t.Fatalf("sync.completed = %+v; pair.failed: %s", done, ev.of(candles.KindPairFailed, run.RunID))
	}
	if br := ev.of(candles.KindBatchRejected, run.RunID); len(br) != 0 {
		t.Fatalf("batch.rejected: %s", br[0])
	}
	// Each pair ends at the candle open when its last page was fetched; the
	// hour may have turned since.
	got := readDB(t, dbPath)
	for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
		p := candles.Pair{Symbol: sym, Interval: "1h"}
		cs := got[p]
		if len(cs) == 0 || time.Since(time.UnixMilli(cs[len(cs)-1].CloseTime)) > 2*time.Hour {
			t.Fatalf("%s: %d candles, not up to the last closed one", p, len(cs))
		}
		assertSame(t, map[candles.Pair][]candles.Candle{p: cs}, truth(s, []string{sym}, "1h", from, time.UnixMilli(cs[len(cs)-1].OpenTime+1)))
	}
}
