package main

import (
	"database/sql"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/writer"
)

// These tests take the infrastructure away under the pipeline: the CANDLES
// stream deleted and refilled while the writer is down, and deleted (with
// the writer's consumer) while it runs.

// splitMode is a simulator, a NATS server, a fetcher in this process and
// the writer as the real binary, which the test stops and starts.
type splitMode struct {
	s          *sim.Sim
	natsURL    string
	dbPath     string
	writerArgs []string
	js         jetstream.JetStream
	ev         *events
	symbols    []string
}

func startSplitMode(t *testing.T, symbols []string, interval string) *splitMode {
	t.Helper()
	s, simURL := startSim(t, sim.Options{})
	ns := natstest.RunServer(t)
	dataDir := t.TempDir()
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = symbols, []string{interval}
	go func() { _ = serveFetcher(t.Context(), ns.ClientURL(), fo, memberOf(fo), testLogger(t)) }()
	nc := connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &splitMode{
		s: s, natsURL: ns.ClientURL(), dbPath: filepath.Join(dataDir, databaseFile), js: js, ev: watchEvents(t, nc),
		writerArgs: []string{"writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", simURL, "--log-format", "json"},
		symbols:    symbols,
	}
}

// startWriter starts the writer binary and waits until it answers coverage.
func (m *splitMode) startWriter(t *testing.T) *proc {
	t.Helper()
	w := start(t, nil, m.writerArgs...)
	natsUntil(t, m.natsURL, "candlekeep-writer", "micro", "ls")
	return w
}

// sync asks for a run and waits for its sync.completed with every pair ok.
func (m *splitMode) sync(t *testing.T, body string, pairs int) candles.SyncCompleted {
	t.Helper()
	acc := requestSync(t, connect(t, m.natsURL), body)
	var done candles.SyncCompleted
	m.ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
	if done.PairsOK != pairs || done.PairsFailed != 0 {
		t.Fatalf("sync %s: %+v, want %d pairs ok", body, done, pairs)
	}
	return done
}

// coverage runs `candlekeep coverage` on the given pairs and returns its
// output and exit code.
func (m *splitMode) coverage(t *testing.T, symbols []string, interval string) (string, int) {
	t.Helper()
	out, err := exec.Command(binary(t), "coverage", "--nats-url", m.natsURL,
		"--symbols", strings.Join(symbols, ","), "--intervals", interval).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// assertExact compares the database with the simulator over every pair's
// whole history (listing to the last closed candle).
func (m *splitMode) assertExact(t *testing.T, symbols []string, interval string) {
	t.Helper()
	iv := candles.MustInterval(interval)
	until := time.UnixMilli(iv.Align(time.Now().UnixMilli()))
	assertSame(t, readDB(t, m.dbPath), truth(m.s, symbols, interval, time.Unix(0, 0), until))
}

func (m *splitMode) candlesLastSeq(t *testing.T) uint64 {
	t.Helper()
	s, err := m.js.Stream(t.Context(), candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// The issue as seen: the writer is down, CANDLES is deleted and created
// again, and a new run refills it past the database's old watermark. The
// restarted writer must notice that its watermark counted in another
// stream (stream.replaced), read the new one from its start and say that a
// full audit is due; coverage is honest meanwhile (exit 1), and after the
// follow-up incremental sync the database is exact over every pair's whole
// history and coverage exits 0. Then rows of early history lost from the
// database make coverage exit 1 (measured from the listing, not from the
// first stored candle) until the next sync re-fetches them.
func TestStreamReplacedWhileWriterDown(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	symbols := []string{"BTCUSDT", "ETHUSDT"}
	m := startSplitMode(t, symbols, "1d")
	w := m.startWriter(t)

	m.sync(t, `{"symbols":["BTCUSDT"],"start":"listing"}`, 1)
	m.assertExact(t, symbols[:1], "1d")
	oldSeq := m.candlesLastSeq(t)
	if out, code := m.coverage(t, symbols[:1], "1d"); code != 0 {
		t.Fatalf("coverage after the backfill: exit %d\n%s", code, out)
	}

	// The writer stops; the stream goes and comes back empty, as after a
	// wiped server store (a restarted fetcher creates it again).
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-w.done
	if out, err := natsCmd(t, m.natsURL, "stream", "rm", candles.StreamCandles, "-f"); err != nil {
		t.Fatalf("nats stream rm: %v\n%s", err, out)
	}
	if err := candles.EnsureStreams(t.Context(), m.js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// A run while the writer is down refills the new stream past the old
	// watermark: a writer trusting the watermark would skip the first
	// oldSeq batches of the new stream.
	acc := requestSync(t, connect(t, m.natsURL), `{"start":"listing"}`)
	checkfor.Check(t, 2*time.Minute, 20*time.Millisecond, func() error {
		if seq := m.candlesLastSeq(t); seq <= oldSeq+1 {
			return fmt.Errorf("CANDLES holds %d batches, want more than the old watermark %d", seq, oldSeq)
		}
		return nil
	})

	m.startWriter(t)
	var replaced candles.StreamReplaced
	m.ev.waitMatch(t, candles.KindStreamReplaced, time.Minute, &replaced, func() bool { return replaced.Stream == candles.StreamCandles })
	if replaced.OldWatermark != oldSeq || replaced.OldIdentity == "" || replaced.NewIdentity == replaced.OldIdentity {
		t.Fatalf("stream.replaced = %+v, want the old watermark %d and two identities", replaced, oldSeq)
	}
	if n := len(m.ev.of(candles.KindStreamReplaced, "")); n != 1 {
		t.Fatalf("%d stream.replaced events, want 1 (EVENTS was not replaced)", n)
	}
	// The run that refilled the stream began before the replacement was
	// seen, so it does not count as the audit: coverage still says so.
	var done candles.SyncCompleted
	m.ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
	if done.PairsOK != 2 {
		t.Fatalf("refill: %+v", done)
	}
	m.assertExact(t, symbols, "1d")
	if out, code := m.coverage(t, symbols, "1d"); code != 1 || !strings.Contains(out, "full gap audit is due") {
		t.Fatalf("coverage before the audit: exit %d\n%s; want 1 saying a full audit is due", code, out)
	}

	m.sync(t, `{}`, 2)
	m.assertExact(t, symbols, "1d")
	if out, code := m.coverage(t, symbols, "1d"); code != 0 {
		t.Fatalf("coverage after the audit: exit %d\n%s", code, out)
	}

	// Early history lost from the database (say, rows removed by hand):
	// coverage counts from the listing, so the pair is incomplete, and the
	// next incremental sync's gap audit fetches exactly what is missing.
	db, err := sql.Open("sqlite", "file:"+m.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	first := readDB(t, m.dbPath)[candles.Pair{Symbol: "ETHUSDT", Interval: "1d"}][0].OpenTime
	if _, err := db.Exec(`DELETE FROM candles WHERE symbol = 'ETHUSDT' AND open_time < ?`, first+100*24*3600*1000); err != nil {
		t.Fatal(err)
	}
	if out, code := m.coverage(t, symbols, "1d"); code != 1 || !strings.Contains(out, "100 missing") {
		t.Fatalf("coverage without ETHUSDT's first 100 days: exit %d\n%s; want 1 and 100 missing", code, out)
	}
	m.sync(t, `{}`, 2)
	m.assertExact(t, symbols, "1d")
	if out, code := m.coverage(t, symbols, "1d"); code != 0 {
		t.Fatalf("coverage after the repair: exit %d\n%s", code, out)
	}
}

// CANDLES deleted while the writer runs, and then its consumer on EVENTS:
// each is created again within seconds and reported with
// resource.recreated (the stream also with stream.replaced), and the
// pipeline goes on to store exactly the truth.
func TestStreamDeletedWhileWriterRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	symbols := []string{"BTCUSDT", "ETHUSDT"}
	m := startSplitMode(t, symbols, "1d")
	w := m.startWriter(t)
	m.sync(t, `{"symbols":["BTCUSDT"],"start":"listing"}`, 1)

	if out, err := natsCmd(t, m.natsURL, "stream", "rm", candles.StreamCandles, "-f"); err != nil {
		t.Fatalf("nats stream rm: %v\n%s", err, out)
	}
	var rec candles.ResourceRecreated
	m.ev.waitMatch(t, candles.KindResourceRecreated, 30*time.Second, &rec, func() bool {
		return rec.Resource == "stream" && rec.Name == candles.StreamCandles
	})
	if rec.Service != writer.ServiceName {
		t.Fatalf("resource.recreated = %+v, want it from %s", rec, writer.ServiceName)
	}
	var replaced candles.StreamReplaced
	m.ev.waitMatch(t, candles.KindStreamReplaced, 30*time.Second, &replaced, func() bool { return replaced.Stream == candles.StreamCandles })
	waitLog(t, w, `"consuming batches"`)

	if out, err := natsCmd(t, m.natsURL, "consumer", "rm", candles.StreamEvents, writer.ConsumerRuns, "-f"); err != nil {
		t.Fatalf("nats consumer rm: %v\n%s", err, out)
	}
	m.ev.waitMatch(t, candles.KindResourceRecreated, 30*time.Second, &rec, func() bool {
		return rec.Resource == "consumer" && rec.Name == writer.ConsumerRuns && rec.Stream == candles.StreamEvents
	})

	m.sync(t, `{"symbols":["ETHUSDT"],"start":"listing"}`, 1)
	m.assertExact(t, symbols, "1d")
}
