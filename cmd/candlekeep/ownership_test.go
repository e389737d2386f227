package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/writer"
)

// These tests are about several processes owning one thing: a data
// directory, the writer role on one NATS, a database's exchange.

// runToExit runs the binary to completion and returns its exit code and
// output.
func runToExit(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	}
	t.Fatalf("%s: %v\n%s", args[0], err, out)
	return 0, ""
}

// A second `up` on a data directory in use exits 1 at once naming the
// holder, and the first goes on serving: a sync after the refusal ends
// exact.
func TestSecondUpOnALockedDataDirIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	first, second := freeAddr(t), freeAddr(t)
	upArgs := func(listen string) []string {
		return []string{"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", listen, "--binance-url", simURL, "--symbols", "BTCUSDT",
			"--intervals", "1h", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json"}
	}
	p := start(t, nil, upArgs(first)...)
	server := "nats://" + first
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")

	code, out := runToExit(t, nil, upArgs(second)...)
	if code != 1 {
		t.Fatalf("second up exited %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{"is in use", fmt.Sprintf("pid %d", p.cmd.Process.Pid), "candlekeep up --nats-listen " + first, "another --data-dir"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	if p.exited() {
		t.Fatalf("the first up stopped: %v\n%s", p.err, p.out)
	}

	nc := connect(t, server)
	ev := watchEvents(t, nc)
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 3, 0, 0, 0, 0, time.UTC)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)), truth(s, []string{"BTCUSDT"}, "1h", from, until))
}

// Two writers on one NATS and one data directory: the second stands by and
// leaves the active one's consumer alone; killed with SIGKILL mid-backfill,
// the active one is replaced by the standby within seconds, which
// announces writer.active and ends with exactly the truth.
func TestStandbyWriterTakesOverAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	ns := natstest.RunServer(t)
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = symbols, []string{"1m"}
	go func() { _ = serveFetcher(t.Context(), natsutil.URL(ns.ClientURL()), fo, memberOf(fo), testLogger(t)) }()
	nc := connect(t, ns.ClientURL())
	ev := watchEvents(t, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	writerArgs := []string{"writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", simURL, "--log-format", "json"}
	a := start(t, nil, writerArgs...)
	waitLog(t, a, "writer lease taken")
	b := start(t, nil, writerArgs...)
	waitLog(t, b, fmt.Sprintf("standing by: writer lease held by pid %d", a.cmd.Process.Pid))

	from, until := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 11, 0, 0, 0, 0, time.UTC)
	want := truth(s, symbols, "1m", from, until)
	total := count(want)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))

	// While both run, the consumer the active writer made stays the same
	// one: the standby neither deletes nor recreates it.
	waitRows(t, dbPath, total/10, a)
	created := consumerCreated(t, js)
	waitRows(t, dbPath, total/4, a)
	if again := consumerCreated(t, js); !again.Equal(created) {
		t.Fatalf("consumer %s was recreated while both writers ran (%v, then %v)", writer.ConsumerBatches, created, again)
	}
	if strings.Contains(b.out.String(), "consumer") {
		t.Fatalf("the standby touched a consumer:\n%s", b.out)
	}

	a.kill(t)
	t.Logf("active writer killed with %d of %d rows stored", rowCount(t, dbPath), total)
	waitLog(t, b, "writer lease taken")
	var active candles.WriterActive
	ev.waitMatch(t, candles.KindWriterActive, time.Minute, &active, func() bool { return active.PID == b.cmd.Process.Pid })
	if !strings.Contains(active.Previous, fmt.Sprintf("pid %d", a.cmd.Process.Pid)) || active.Database != dbPath {
		t.Fatalf("writer.active = %+v, want it to name the killed pid %d and %s", active, a.cmd.Process.Pid, dbPath)
	}

	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 3*time.Minute, &done)
	if done.PairsOK != len(symbols) || done.Candles != int64(total) {
		t.Fatalf("sync.completed = %+v, want %d pairs and %d candles", done, len(symbols), total)
	}
	assertSame(t, readDB(t, dbPath), want)
	if testing.Verbose() {
		t.Logf("the standby's log:\n%s", b.out)
	}
}

// A writer that holds the lease on its NATS but finds its data directory
// used by another process (here an `up` with its own NATS) waits, naming
// the holder, and starts as soon as that process is gone.
func TestWriterWaitsForItsDataDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	listen := freeAddr(t)
	u := start(t, nil, "up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", listen, "--binance-url", simURL, "--symbols", "BTCUSDT",
		"--intervals", "1h", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json")
	natsUntil(t, "nats://"+listen, "candlekeep-writer", "micro", "ls")

	ns := natstest.RunServer(t)
	w := start(t, nil, "writer", "--nats-url", ns.ClientURL(), "--data-dir", dataDir, "--binance-url", simURL, "--log-format", "json")
	waitLog(t, w, fmt.Sprintf("waiting for the data directory: %s is locked by pid %d", filepath.Join(dataDir, "LOCK"), u.cmd.Process.Pid))

	if err := u.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-u.done
	if u.err != nil {
		t.Fatalf("up exited with %v after SIGTERM:\n%s", u.err, u.out)
	}
	natsUntil(t, ns.ClientURL(), "candlekeep-writer", "micro", "ls")
	waitLog(t, w, "consuming batches")
}

// waitLog waits until p has logged want.
func waitLog(t *testing.T, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(p.out.String(), want) {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("never logged %q (exited: %v); output:\n%s", want, p.exited(), p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func consumerCreated(t *testing.T, js jetstream.JetStream) time.Time {
	t.Helper()
	c, err := js.Consumer(t.Context(), candles.StreamCandles, writer.ConsumerBatches)
	if err != nil {
		t.Fatal(err)
	}
	return c.CachedInfo().Created
}

// `up` on a data directory filled from another exchange is refused naming
// both URLs and the way out, before it changes anything; with
// --rebind-source it records the new exchange and runs.
func TestUpRefusesADatabaseOfAnotherExchange(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	const other = "https://exchange.example.com"
	ctx := context.Background()
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.BindSource(ctx, other+"/", false); err != nil {
		t.Fatal(err)
	}
	from := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	stored := truth(s, []string{"BTCUSDT"}, "1h", from, from.Add(24*time.Hour))
	p := candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}
	if _, err := st.Upsert(ctx, candles.Batch{Symbol: p.Symbol, Interval: p.Interval, Candles: stored[p]}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	listen := freeAddr(t)
	args := []string{"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", listen, "--symbols", "BTCUSDT", "--intervals", "1h",
		"--lookback", "5", "--sync-schedule", "off", "--log-format", "json"}
	code, out := runToExit(t, []string{"CANDLEKEEP_BINANCE_URL=" + simURL}, args...)
	if code != 1 {
		t.Fatalf("up on a database of another exchange exited %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{other, simURL, "--rebind-source", "another --data-dir"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not name %q:\n%s", want, out)
		}
	}
	assertSame(t, readDB(t, dbPath), stored)
	if src := source(t, dbPath); src != other {
		t.Fatalf("source after the refusal = %q, want %q", src, other)
	}

	up := start(t, []string{"CANDLEKEEP_BINANCE_URL=" + simURL}, append(args, "--rebind-source")...)
	natsUntil(t, "nats://"+listen, "candlekeep-writer", "micro", "ls")
	waitLog(t, up, "database rebound to another exchange")
	if src := source(t, dbPath); src != simURL {
		t.Fatalf("source after --rebind-source = %q, want %q", src, simURL)
	}
}

// source reads the exchange a database is bound to.
func source(t *testing.T, dbPath string) string {
	t.Helper()
	st, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	src, err := st.Source(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return src
}
