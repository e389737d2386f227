package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// bin/candlekeep up and bin/candlekeep sim as separate processes, driven by
// the real nats CLI; the result is read back from the SQLite file.
func TestBinaryDrivenByTheNatsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	simAddr, natsAddr := freeAddr(t), freeAddr(t)
	dataDir := t.TempDir()
	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	upProc := start(t, []string{"CANDLEKEEP_LOOKBACK=24", "CANDLEKEEP_BINANCE_URL=http://" + simAddr},
		"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT",
		"--intervals", "1h,4h", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json")
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")
	natsUntil(t, server, "candlekeep-fetcher", "micro", "ls")
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	truthSim := sim.New(sim.Options{}) // the same pure function the simulator process serves

	// nats req: validated, queued, answered with the run id.
	out, err := natsCmd(t, server, "req", candles.SubjectAPISync,
		`{"symbols":["BTCUSDT","ETHUSDT"],"intervals":["1h"],"start":"2024-01-01T00:00:00Z","end":"2024-01-15T00:00:00Z","reason":"cli"}`)
	m := runIDRE.FindStringSubmatch(out)
	if err != nil || m == nil || m[2] != "2" {
		t.Fatalf("nats req: %v\n%s", err, out)
	}
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, m[1], time.Minute, &done)
	if done.PairsOK != 2 || done.Candles != 2*14*24 {
		t.Fatalf("sync.completed = %+v", done)
	}

	// nats pub: fire-and-forget onto the SYNC stream; an empty pair gets
	// --lookback (here from CANDLEKEEP_LOOKBACK) bars.
	if out, err := natsCmd(t, server, "pub", candles.SubjectSyncRequest, `{"symbols":["SOLUSDT"],"intervals":["4h"]}`); err != nil {
		t.Fatalf("nats pub: %v\n%s", err, out)
	}
	var solDone candles.SyncCompleted
	ev.waitMatch(t, candles.KindSyncCompleted, time.Minute, &solDone, func() bool { return solDone.PairsTotal == 1 && solDone.RunID != m[1] })
	if solDone.PairsOK != 1 || solDone.Candles != 24 {
		t.Fatalf("sync.completed for the published request = %+v, want 1 pair and 24 candles", solDone)
	}

	// A bad request through the CLI gets the error that names the field.
	out, _ = natsCmd(t, server, "req", candles.SubjectAPISync, `{"intervals":["7m"]}`)
	if !strings.Contains(out, `unknown interval "7m"`) || !strings.Contains(out, "400") {
		t.Fatalf("nats req with a bad interval printed:\n%s", out)
	}
	// The services are discoverable with their endpoints and counters.
	if out := natsUntil(t, server, candles.SubjectAPISync, "micro", "info", "candlekeep-fetcher"); !strings.Contains(out, "sync") {
		t.Fatalf("micro info:\n%s", out)
	}
	if out := natsUntil(t, server, "coverage", "micro", "stats", "candlekeep-writer"); !strings.Contains(out, "candlekeep-writer") {
		t.Fatalf("micro stats:\n%s", out)
	}

	got := readDB(t, filepath.Join(dataDir, databaseFile))
	want := truth(truthSim, []string{"BTCUSDT", "ETHUSDT"}, "1h", time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 15, 0, 0, 0, 0, time.UTC))
	sol := candles.Pair{Symbol: "SOLUSDT", Interval: "4h"}
	solRows := got[sol]
	delete(got, sol)
	assertSame(t, got, want)
	if len(solRows) != 24 {
		t.Fatalf("SOLUSDT/4h: %d rows, want 24", len(solRows))
	}
	iv := candles.MustInterval("4h")
	assertSame(t, map[candles.Pair][]candles.Candle{sol: solRows},
		map[candles.Pair][]candles.Candle{sol: truthSim.Klines("SOLUSDT", iv, solRows[0].OpenTime, solRows[23].OpenTime+1)})
	if last := solRows[23]; last.CloseTime >= time.Now().UnixMilli() || iv.Next(last.OpenTime) < iv.Align(time.Now().UnixMilli())-iv.Duration().Milliseconds() {
		t.Fatalf("SOLUSDT/4h does not end at the last closed candle: %+v", last)
	}
	_ = upProc
}

// The writer killed with SIGKILL in the middle of a large backfill, twice,
// and restarted ends with exactly the truth: no gap, no duplicate.
func TestWriterKilledMidBackfillEndsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	ns := natstest.RunServer(t)
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"}
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = symbols, []string{"1m"}
	ctx := t.Context()
	go func() { _ = serveFetcher(ctx, natsutil.URL(ns.ClientURL()), fo, memberOf(fo), testLogger(t)) }()
	writerArgs := []string{"writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", simURL, "--log-format", "json"}
	w := start(t, nil, writerArgs...)
	nc := connect(t, ns.ClientURL())
	ev := watchEvents(t, nc)
	from, until := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 21, 0, 0, 0, 0, time.UTC)
	want := truth(s, symbols, "1m", from, until)
	total := count(want)

	// The fetcher asks the writer for stored ranges only without "start";
	// with it, the request is planned even while the writer is down.
	deadline := time.Now().Add(20 * time.Second)
	for rowCount(t, dbPath) == 0 && time.Now().Before(deadline) {
		if _, err := nc.Request(candles.SubjectAPICoverage, nil, time.Second); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	for _, frac := range []float64{0.25, 0.6} {
		waitRows(t, dbPath, int(frac*float64(total)), w)
		w.kill(t)
		t.Logf("writer killed with %d of %d rows stored", rowCount(t, dbPath), total)
		w = start(t, nil, writerArgs...)
	}
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	if done.PairsOK != len(symbols) || done.Candles != int64(total) {
		t.Fatalf("sync.completed = %+v, want %d pairs and %d candles", done, len(symbols), total)
	}
	assertSame(t, readDB(t, dbPath), want)
	if n := len(ev.of(candles.KindSyncCompleted, acc.RunID)); n != 1 {
		t.Fatalf("%d sync.completed events, want 1", n)
	}
}

func waitRows(t testing.TB, dbPath string, n int, p *proc) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for rowCount(t, dbPath) < n {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("%d rows never stored (have %d); writer output:\n%s", n, rowCount(t, dbPath), p.out)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
