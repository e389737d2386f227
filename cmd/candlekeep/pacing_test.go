package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/fetcher"
)

// pacedSymbols are the 12 pairs (× 1h) of the shared-budget scenario.
var pacedSymbols = candles.DefaultSymbols()[:12]

// pacedStart is where the shared-budget backfill starts.
var pacedStart = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// fleet is one `candlekeep up` (embedded NATS, its own fetcher and the
// writer) and extra `candlekeep fetcher` processes joining it, all against
// one in-process simulator.
type fleet struct {
	sim     *sim.Sim
	server  string // NATS URL
	dataDir string
	procs   []*proc
}

// startFleet starts the simulator with o, `candlekeep up` and n more
// fetcher processes for pacedSymbols × 1h, and waits until every fetcher
// answers on NATS. schedule is the sync-schedule setting ("" for off).
func startFleet(tb testing.TB, o sim.Options, n int, schedule ...string) *fleet {
	tb.Helper()
	s, simURL := startSim(tb, o)
	natsAddr := freeAddr(tb)
	f := &fleet{sim: s, server: "nats://" + natsAddr, dataDir: tb.TempDir()}
	sched := "off"
	if len(schedule) > 0 && schedule[0] != "" {
		sched = schedule[0]
	}
	common := []string{"--binance-url", simURL, "--symbols", strings.Join(pacedSymbols, ","), "--intervals", "1h",
		"--catch-up=false", "--sync-schedule", sched, "--log-format", "json"}
	// up as it runs by default, its monitor on a free port.
	f.procs = append(f.procs, start(tb, nil, append([]string{"up", "--nats-insecure", "--data-dir", f.dataDir, "--nats-listen", natsAddr,
		"--http-listen", freeAddr(tb)}, common...)...))
	natsUntil(tb, f.server, "candlekeep-writer", "micro", "ls")
	for range n {
		f.procs = append(f.procs, start(tb, nil, append([]string{"fetcher", "--nats-url", f.server}, common...)...))
	}
	nc := connect(tb, f.server)
	deadline := time.Now().Add(60 * time.Second)
	for fetcherInstances(tb, nc) < n+1 {
		if time.Now().After(deadline) {
			tb.Fatalf("%d fetchers answer, want %d; up's output:\n%s", fetcherInstances(tb, nc), n+1, f.procs[0].out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return f
}

// fetcherInstances counts the fetcher processes that answer a micro ping.
func fetcherInstances(tb testing.TB, nc *nats.Conn) int {
	tb.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.PING."+fetcher.ServiceName, inbox, nil); err != nil {
		tb.Fatal(err)
	}
	n := 0
	for {
		if _, err := sub.NextMsg(500 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

// backfill asks for pacedSymbols × 1h from pacedStart with the nats CLI,
// as an operator would, and returns the run id and when it was asked.
func (f *fleet) backfill(tb testing.TB) (string, time.Time) {
	tb.Helper()
	asked := time.Now()
	out, err := natsCmd(tb, f.server, "req", candles.SubjectAPISync, `{"start":"2025-01-01T00:00:00Z","reason":"shared budget"}`)
	m := runIDRE.FindStringSubmatch(out)
	if err != nil || m == nil || m[2] != "12" {
		tb.Fatalf("nats req: %v\n%s", err, out)
	}
	return m[1], asked
}

// assertComplete checks the database against the simulator's truth: every
// pair from pacedStart up to the hour the backfill was asked for (or the
// next hour, if it closed while the run was going).
func (f *fleet) assertComplete(tb testing.TB, asked time.Time) {
	tb.Helper()
	got := readDB(tb, filepath.Join(f.dataDir, databaseFile))
	iv := candles.MustInterval("1h")
	want := map[candles.Pair][]candles.Candle{}
	for _, sym := range pacedSymbols {
		p := candles.Pair{Symbol: sym, Interval: "1h"}
		until := asked.Truncate(time.Hour).UnixMilli()
		if rows := got[p]; len(rows) > 0 {
			until = max(until, rows[len(rows)-1].OpenTime+time.Hour.Milliseconds())
		}
		if cs := f.sim.Klines(sym, iv, pacedStart.UnixMilli(), until); len(cs) > 0 {
			want[p] = cs
		}
	}
	assertSame(tb, got, want)
}

// The scenario: an exchange limit of 120 weight per minute, three
// `candlekeep fetcher` processes beside `candlekeep up` (whose own fetcher
// makes four), a backfill of 12 pairs × 1h from 2025-01-01. Waiting minutes
// is no test, so the simulator's window is scaled as in
// TestFullHistoryBackfillIsPacedWithoutA429: 120 weight per 2 s window, the
// same budget per window, the same requests and as many window boundaries
// (BenchmarkSharedWeightBudget runs it at the real 120 per minute). With
// per-process pacing each fetcher believed the whole window free and the
// fleet met 429s at every window boundary; sharing the budget through NATS
// they stay under 120 in every window: no 429, every pair complete, the
// database exact.
func TestFetchersShareTheWeightBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with four processes; runs without -short")
	}
	const limit, window = 120, 2 * time.Second
	f := startFleet(t, sim.Options{WeightLimit: limit, WeightWindow: window}, 3)
	nc := connect(t, f.server)
	ev := watchEvents(t, nc)
	runID, asked := f.backfill(t)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, runID, 5*time.Minute, &done)

	st := f.sim.Stats()
	if st.RateLimited != 0 || st.Banned != 0 {
		t.Fatalf("%d answers 429 and %d 418 with a shared budget (max weight in a window %d of %d); windows %+v",
			st.RateLimited, st.Banned, st.MaxUsedWeight, limit, st.Windows)
	}
	for _, w := range st.Windows {
		if w.Weight > limit {
			t.Fatalf("window %s used %d weight of %d", w.Start.Format(time.TimeOnly), w.Weight, limit)
		}
	}
	if done.PairsOK != 12 || done.PairsFailed != 0 {
		t.Fatalf("sync.completed = %+v, want 12 pairs ok", done)
	}
	if n := len(ev.of(candles.KindRateLimitHit, runID)); n != 0 {
		t.Fatalf("%d ratelimit.hit events", n)
	}
	f.assertComplete(t, asked)

	// Every process paced through the board; the key reads with the CLI.
	out, err := natsCmd(t, f.server, "kv", "get", "candlekeep_fetchers", fetcher.WeightKey, "--raw")
	var rec struct {
		Limit    int            `json:"limit"`
		WindowMS int64          `json:"window_ms"`
		Used     int            `json:"used"`
		By       map[string]int `json:"by"`
	}
	if err != nil || json.Unmarshal([]byte(strings.TrimSpace(out)), &rec) != nil {
		t.Fatalf("nats kv get candlekeep_fetchers weight: %v\n%s", err, out)
	}
	if rec.Limit != limit || rec.WindowMS != window.Milliseconds() || rec.Used > limit || len(rec.By) == 0 {
		t.Fatalf("weight key %+v", rec)
	}
	for i, p := range f.procs {
		if strings.Contains(p.out.String(), "shared weight budget unreachable") {
			t.Fatalf("process %d paced alone:\n%s", i, p.out)
		}
	}
}

// The whole scenario: the shared-budget backfill above with the
// schedule firing throughout (every 15 s at 120 weight per minute; scaled
// like the window, every 1 s at 120 weight per 2 s — the shortest schedule
// there is, so more ticks per window than the issue's). Ticks never start a
// competing run: they find every pair busy and record sync.skipped; each
// pair's pages come from one run at a time; no 429; the database is exact.
// How long it takes against the same backfill without a schedule is a
// figure, not a test: BenchmarkBackfillUnderSchedule reports the ratio.
func TestScheduleFiringDuringASharedBackfill(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with four processes; runs without -short")
	}
	const limit, window = 120, 2 * time.Second
	f := startFleet(t, sim.Options{WeightLimit: limit, WeightWindow: window}, 3, "@every 1s")
	nc := connect(t, f.server)
	ev := watchEvents(t, nc)
	runID, asked := f.backfill(t)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, runID, 5*time.Minute, &done)
	if done.PairsOK != 12 || done.PairsFailed != 0 {
		t.Fatalf("sync.completed = %+v, want 12 pairs ok", done)
	}
	if st := f.sim.Stats(); st.RateLimited != 0 || st.Banned != 0 {
		t.Fatalf("%d answers 429 and %d 418 (max weight in a window %d of %d)", st.RateLimited, st.Banned, st.MaxUsedWeight, limit)
	}
	// Ticks fired during the backfill and found its pairs busy.
	skipped := 0
	for _, raw := range ev.of(candles.KindSyncSkipped, "") {
		var sk candles.SyncSkipped
		if err := json.Unmarshal(raw, &sk); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(sk.SyncingRuns, runID) {
			skipped++
		}
	}
	if skipped == 0 {
		t.Fatalf("no sync.skipped naming the backfill %s; the schedule did not fire during it", runID)
	}
	// No competing run touched a pair while the backfill held it: each
	// pair's pages in CANDLES come from one run at a time. (Events cannot
	// show it: the writer announces pair.completed a moment after the job
	// ended, when a tick may already have started the pair's next run.)
	pairs := make([]candles.Pair, 0, len(pacedSymbols))
	for _, sym := range pacedSymbols {
		pairs = append(pairs, candles.Pair{Symbol: sym, Interval: "1h"})
	}
	for p, runs := range runsOfPages(t, f.server, pairs) {
		seen := map[string]bool{}
		for i, r := range runs {
			if i > 0 && runs[i-1] != r && seen[r] {
				t.Errorf("%s: pages of run %s interleave with another run's: %v", p, r, runs)
				break
			}
			seen[r] = true
		}
	}
	f.assertComplete(t, asked)
}
