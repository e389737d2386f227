package main

import (
	"database/sql"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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

func startSplitMode(t *testing.T, symbols []string, interval string, so sim.Options) *splitMode {
	t.Helper()
	s, simURL := startSim(t, so)
	ns := natstest.RunServer(t)
	dataDir := t.TempDir()
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = symbols, []string{interval}
	go func() { _ = serveFetcher(t.Context(), natsutil.URL(ns.ClientURL()), fo, memberOf(fo), testLogger(t)) }()
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

// assertExact compares the database's pairs of symbols with the simulator
// over their whole history (listing to the last closed candle).
func (m *splitMode) assertExact(t *testing.T, symbols []string, interval string) {
	t.Helper()
	iv := candles.MustInterval(interval)
	until := time.UnixMilli(iv.Align(time.Now().UnixMilli()))
	got := readDB(t, m.dbPath)
	for p := range got {
		if !slices.Contains(symbols, p.Symbol) {
			delete(got, p)
		}
	}
	assertSame(t, got, truth(m.s, symbols, interval, time.Unix(0, 0), until))
}

func (m *splitMode) candlesLastSeq(t *testing.T) uint64 {
	t.Helper()
	s, err := m.js.Stream(t.Context(), candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// The issue as seen, and worse: the writer is down while a backfill from
// the listing runs; CANDLES is deleted in the middle of it (its first pages
// are gone; the rest go to the new stream) and a new run refills the new
// stream past the database's old watermark. The restarted writer must see
// that its watermark counted in another stream (stream.replaced), read the
// new one from its start and mark a full audit due. Coverage is honest in
// between: the pair whose first pages were lost is not complete although
// its stored candles have no hole (exit 1). The follow-up incremental sync
// fetches that pair from its listing again, audits the rest, and leaves the
// database exact over every pair's whole history, with coverage exit 0.
// Then rows of early history lost from the database make coverage exit 1
// (measured from the listing, not from the first stored candle) until the
// next sync re-fetches exactly them.
func TestStreamReplacedWhileWriterDown(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	symbols := []string{"BTCUSDT", "ETHUSDT"}
	// Slow pages, so the stream can be deleted in the middle of a backfill.
	m := startSplitMode(t, symbols, "1h", sim.Options{Latency: 40 * time.Millisecond})
	w := m.startWriter(t)

	m.sync(t, `{"symbols":["BTCUSDT"],"start":"listing"}`, 1)
	m.assertExact(t, symbols[:1], "1h")
	oldSeq := m.candlesLastSeq(t)
	if out, code := m.coverage(t, symbols[:1], "1h"); code != 0 {
		t.Fatalf("coverage after the backfill: exit %d\n%s", code, out)
	}

	// The writer stops; ETHUSDT's backfill starts; the stream goes after
	// its first pages and comes back empty, as after a wiped server store
	// (a restarted fetcher creates it again).
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-w.done
	lost := requestSync(t, connect(t, m.natsURL), `{"symbols":["ETHUSDT"],"start":"listing"}`)
	checkfor.Check(t, time.Minute, 5*time.Millisecond, func() error {
		if seq := m.candlesLastSeq(t); seq < oldSeq+3 {
			return fmt.Errorf("CANDLES holds %d batches, want ETHUSDT's first pages after %d", seq, oldSeq)
		}
		return nil
	})
	if out, err := natsCmd(t, m.natsURL, "stream", "rm", candles.StreamCandles, "-f"); err != nil {
		t.Fatalf("nats stream rm: %v\n%s", err, out)
	}
	if err := candles.EnsureStreams(t.Context(), m.js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// A run while the writer is down refills the new stream past the old
	// watermark: a writer trusting the watermark would skip the first
	// oldSeq batches of the new stream.
	refill := requestSync(t, connect(t, m.natsURL), `{"symbols":["BTCUSDT"],"start":"listing"}`)
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
	var done candles.SyncCompleted
	m.ev.wait(t, candles.KindSyncCompleted, refill.RunID, 3*time.Minute, &done)
	m.ev.wait(t, candles.KindSyncCompleted, lost.RunID, 3*time.Minute, &done)
	m.assertExact(t, symbols[:1], "1h")
	if eth := readDB(t, m.dbPath)[candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}]; len(eth) == 0 {
		t.Fatal("none of ETHUSDT's pages after the deletion was stored; the test proves less than it says")
	}
	// ETHUSDT's stored candles have no hole, yet its first pages are gone;
	// and the runs planned before the replacement do not count as the audit.
	out, code := m.coverage(t, symbols, "1h")
	if code != 1 || !strings.Contains(out, "ETHUSDT/1h") || !strings.Contains(out, "history from its listing not stored") ||
		!strings.Contains(out, "full gap audit is due") {
		t.Fatalf("coverage before the audit: exit %d\n%s; want 1, ETHUSDT's history not stored and a full audit due", code, out)
	}

	m.sync(t, `{}`, 2)
	m.assertExact(t, symbols, "1h")
	if out, code := m.coverage(t, symbols, "1h"); code != 0 {
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
	first := readDB(t, m.dbPath)[candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}][0].OpenTime
	res, err := db.Exec(`DELETE FROM candles WHERE symbol = 'ETHUSDT' AND open_time < ?`, first+100*24*3600*1000)
	if err != nil {
		t.Fatal(err)
	}
	removed, _ := res.RowsAffected()
	if out, code := m.coverage(t, symbols, "1h"); code != 1 || !strings.Contains(out, fmt.Sprintf("%d missing", removed)) {
		t.Fatalf("coverage without ETHUSDT's first 100 days: exit %d\n%s; want 1 and %d missing", code, out, removed)
	}
	m.sync(t, `{}`, 2)
	m.assertExact(t, symbols, "1h")
	if out, code := m.coverage(t, symbols, "1h"); code != 0 {
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
	m := startSplitMode(t, symbols, "1d", sim.Options{})
	w := m.startWriter(t)
	m.sync(t, `{"symbols":["BTCUSDT"],"start":"listing"}`, 1)

	if out, err := natsCmd(t, m.natsURL, "stream", "rm", candles.StreamCandles, "-f"); err != nil {
		t.Fatalf("nats stream rm: %v\n%s", err, out)
	}
	var rec candles.ResourceRecreated
	m.ev.waitMatch(t, candles.KindResourceRecreated, 30*time.Second, &rec, func() bool {
		return rec.Resource == "stream "+candles.StreamCandles
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
		return rec.Resource == "consumer "+candles.StreamEvents+" > "+writer.ConsumerRuns
	})

	m.sync(t, `{"symbols":["ETHUSDT"],"start":"listing"}`, 1)
	m.assertExact(t, symbols, "1d")
}
