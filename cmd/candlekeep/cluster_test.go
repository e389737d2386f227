package main

import (
	"context"
	"encoding/json"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// scheduleIn returns the pattern of the sync schedule message in SYNC.
func scheduleIn(t testing.TB, js jetstream.JetStream) string {
	t.Helper()
	stream, err := js.Stream(t.Context(), candles.StreamSync)
	if err != nil {
		return ""
	}
	m, err := stream.GetLastMsgForSubject(t.Context(), candles.SubjectSyncSchedule)
	if err != nil {
		return ""
	}
	return m.Header.Get("Nats-Schedule")
}

// checkFor polls fn until it returns nil or total passes, then fails with
// fn's last error (nats-server's checkFor).
func checkFor(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// condErr is a checkFor condition's reason for not holding yet.
type condErr string

func (e condErr) Error() string { return string(e) }

// The scale-out scenario of an operator: `up` configured with a schedule and
// a pair set, then fetchers added with only --nats-url and --binance-url.
// The new fetchers follow the cluster configuration: the schedule and the
// pair set stay the operator's, no catch-up for defaults the operator never
// configured, only configured pairs are fetched; a change made with the nats
// CLI reaches every process and survives a restart.
func TestScaleOutFollowsTheClusterConfiguration(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, sim.Options{})
	listen := freeAddr(t)
	server := "nats://" + listen
	dataDir := t.TempDir()
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}
	up := start(t, nil, "up", "--nats-insecure", "--nats-listen", listen, "--data-dir", dataDir, "--binance-url", simURL,
		"--sync-schedule", "@every 15s", "--symbols", strings.Join(symbols, ","), "--intervals", "1h", "--lookback", "20",
		"--log-format", "json")
	nc := connectWhenUp(t, server, up)
	js, _ := jetstream.New(nc)
	ev := watchEventsSince(t, nc, time.Now().Add(-time.Hour))
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if got := scheduleIn(t, js); got != "@every 15s" {
			return condErr("schedule is " + got)
		}
		return nil
	})
	want := configSnapshot(t, js)
	if want["symbols"] != strings.Join(symbols, ",") || want["intervals"] != "1h" || want["sync-schedule"] != "@every 15s" {
		t.Fatalf("up did not store its flags: %v", want)
	}

	var fetchers []*proc
	for range 2 {
		fetchers = append(fetchers, start(t, nil, "fetcher", "--nats-url", server, "--binance-url", simURL, "--log-format", "json"))
	}
	natsUntil(t, server, `"candlekeep-fetcher"`, "micro", "ls", "--json")
	checkFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		for _, f := range fetchers {
			if !strings.Contains(f.out.String(), `"msg":"fetcher started"`) {
				return condErr("a fetcher has not started")
			}
		}
		return nil
	})
	if got := configSnapshot(t, js); !maps.Equal(got, want) {
		t.Fatalf("joining fetchers changed the configuration:\n got %v\nwant %v", got, want)
	}
	if got := scheduleIn(t, js); got != "@every 15s" {
		t.Fatalf("schedule after fetchers joined = %q; want the operator's @every 15s", got)
	}

	// A scheduled run happens and fetches exactly the configured pairs.
	var tick candles.SyncStarted
	ev.waitMatch(t, candles.KindSyncStarted, 60*time.Second, &tick, func() bool { return tick.Reason == "schedule" })
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, tick.RunID, time.Minute, &done)
	if done.PairsTotal != len(symbols) || done.PairsOK != len(symbols) {
		t.Errorf("scheduled run: %+v; want %d pairs ok", done, len(symbols))
	}
	configured := map[candles.Pair]bool{}
	for _, sym := range symbols {
		configured[candles.Pair{Symbol: sym, Interval: "1h"}] = true
	}
	for _, raw := range ev.of(candles.KindSyncStarted, "") {
		var st candles.SyncStarted
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Pairs {
			if !configured[p] {
				t.Errorf("run %s (%s) fetched %s, which nobody configured", st.RunID, st.Reason, p)
			}
		}
	}
	for p := range readDB(t, filepath.Join(dataDir, databaseFile)) {
		if !configured[p] {
			t.Errorf("database holds %s, which nobody configured", p)
		}
	}
	for key := range s.Stats().Klines { // "SYMBOL/interval"
		if sym, iv, _ := strings.Cut(key, "/"); !slices.Contains(symbols, sym) || iv != "1h" {
			t.Errorf("the exchange was asked for %s", key)
		}
	}

	// The operator changes the schedule with the nats CLI: every process
	// follows, the schedule message follows, and a restart keeps it.
	// The value goes on stdin: the nats CLI reads an argument starting
	// with @ as a file name (docs/operations.md says so too).
	put := exec.Command(natsCLI(t), "--server", server, "--no-context", "kv", "put", cluster.ConfigBucket, "sync-schedule")
	put.Stdin = strings.NewReader("@every 20s")
	put.Env = append(put.Environ(), "HOME="+t.TempDir())
	if out, err := put.CombinedOutput(); err != nil {
		t.Fatalf("nats kv put: %v\n%s", err, out)
	}
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if got := scheduleIn(t, js); got != "@every 20s" {
			return condErr("schedule is " + got)
		}
		return nil
	})
	var changed cluster.ConfigChanged
	ev.waitMatch(t, cluster.KindConfigChanged, 20*time.Second, &changed, func() bool {
		return changed.Key == "sync-schedule" && changed.Value == "@every 20s"
	})
	if n := len(ev.of(cluster.KindConfigChanged, "")); n != 1 {
		t.Errorf("%d config.changed events for one change; want 1 however many processes saw it", n)
	}
	_ = fetchers[0].cmd.Process.Signal(syscall.SIGTERM)
	<-fetchers[0].done
	restarted := start(t, nil, "fetcher", "--nats-url", server, "--binance-url", simURL, "--log-format", "json")
	checkFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(restarted.out.String(), `"msg":"fetcher started"`) {
			return condErr("the restarted fetcher has not started")
		}
		return nil
	})
	if got := scheduleIn(t, js); got != "@every 20s" {
		t.Errorf("schedule after a restart = %q; want the operator's @every 20s", got)
	}
	want["sync-schedule"] = "@every 20s"
	if got := configSnapshot(t, js); !maps.Equal(got, want) {
		t.Errorf("a restart changed the configuration:\n got %v\nwant %v", got, want)
	}

	// A fetcher whose explicit flag disagrees says so and follows the cluster.
	// It cannot resize the streams either: they are sized from the store.
	odd := start(t, nil, "fetcher", "--nats-url", server, "--binance-url", simURL, "--symbols", "XRPUSDT",
		"--candles-max-age", "1h", "--log-format", "json")
	checkFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		out := odd.out.String()
		if !strings.Contains(out, `"msg":"fetcher started"`) {
			return condErr("the odd fetcher has not started")
		}
		if !strings.Contains(out, "flag disagrees with the cluster configuration") || !strings.Contains(out, `"flag":"--symbols"`) {
			return condErr("no warning about --symbols:\n" + out)
		}
		return nil
	})
	if got := configSnapshot(t, js)["symbols"]; got != strings.Join(symbols, ",") {
		t.Errorf("symbols after a disagreeing fetcher = %q", got)
	}
	stream, err := js.Stream(t.Context(), candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(t.Context()); err != nil || info.Config.MaxAge != candles.DefaultCandlesMaxAge {
		t.Errorf("CANDLES max age after a fetcher with --candles-max-age 1h: %v, %v; want the configured %v",
			info.Config.MaxAge, err, candles.DefaultCandlesMaxAge)
	}
}

// TestConfigCommand shows `candlekeep config get|set` on a running system:
// values validated before they are written, each change announced.
func TestConfigCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{})
	listen := freeAddr(t)
	server := "nats://" + listen
	up := start(t, nil, "up", "--nats-insecure", "--nats-listen", listen, "--data-dir", t.TempDir(), "--binance-url", simURL,
		"--sync-schedule", "off", "--catch-up=false", "--log-format", "json")
	connectWhenUp(t, server, up)
	run := func(args ...string) (string, int) {
		cmd := exec.Command(binary(t), append([]string{"config"}, append(args, "--nats-url", server)...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	out, code := run("get", "sync-schedule", "binance-url")
	if code != 0 || !strings.Contains(out, "sync-schedule") || !strings.Contains(out, "off") || !strings.Contains(out, simURL) {
		t.Fatalf("config get = %d\n%s", code, out)
	}
	out, code = run("set", "intervals=7m")
	if code != 2 || !strings.Contains(out, `--intervals "7m"`) {
		t.Errorf("config set intervals=7m = %d\n%s; want exit 2 naming the bad value", code, out)
	}
	out, code = run("set", "symbols=BTCUSDT,ETHUSDT", "intervals=1h")
	if code != 0 || !strings.Contains(out, "symbols set (revision") {
		t.Fatalf("config set = %d\n%s", code, out)
	}
	out, code = run("get", "--json")
	var got map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got["symbols"] != "BTCUSDT,ETHUSDT" || got["intervals"] != "1h" {
		t.Errorf("config get --json = %d\n%s", code, out)
	}
}

// TestCoverageTellsTheTruth: `candlekeep coverage` exits 1 for an empty
// database, for a configured pair that never synced and for a stale pair,
// refuses a bad interval with exit 2, and exits 0 once all is complete.
func TestCoverageTellsTheTruth(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT"}, []string{"1h"}, 30
	natsURL := startUp(t, t.TempDir(), fo)
	nc := connect(t, natsURL)
	coverage := func(args ...string) (string, int) {
		out, err := exec.Command(binary(t), append([]string{"coverage", "--nats-url", natsURL}, args...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := coverage(); code != 1 || strings.Count(out, "empty") != 2 {
		t.Errorf("empty database: exit %d\n%s; want 1 and both configured pairs empty", code, out)
	}
	if out, code := coverage("--intervals", "7m"); code != 2 || !strings.Contains(out, `--intervals: "7m" is not an interval`) {
		t.Errorf("--intervals 7m: exit %d\n%s; want 2 naming the flag", code, out)
	}
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"symbols":["BTCUSDT"]}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if out, code := coverage(); code != 1 || !strings.Contains(out, "ETHUSDT/1h") || !strings.Contains(out, "empty") {
		t.Errorf("one configured pair never synced: exit %d\n%s; want 1 with ETHUSDT/1h empty", code, out)
	}
	acc = requestSync(t, nc, `{"symbols":["ETHUSDT"]}`)
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if out, code := coverage(); code != 0 || strings.Count(out, "complete") != 2 {
		t.Errorf("both synced: exit %d\n%s; want 0", code, out)
	}
	// Years out of date: a 1d pair synced up to 2019 only.
	acc = requestSync(t, nc, `{"symbols":["BTCUSDT"],"intervals":["1d"],"start":"2019-01-01T00:00:00Z","end":"2019-02-01T00:00:00Z"}`)
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if out, code := coverage("--symbols", "BTCUSDT", "--intervals", "1d"); code != 1 || !strings.Contains(out, "stale") {
		t.Errorf("a pair years out of date: exit %d\n%s; want 1 and stale", code, out)
	}
}

func configSnapshot(t testing.TB, js jetstream.JetStream) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, _, err := cluster.Load(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// connectWhenUp connects to a `candlekeep up` process's server once the
// writer and a fetcher answer, failing early if the process exits.
func connectWhenUp(t testing.TB, server string, p *proc) *nats.Conn {
	t.Helper()
	var nc *nats.Conn
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("up exited: %v\n%s", p.err, p.out)
		}
		if nc == nil {
			c, err := nats.Connect(server)
			if err != nil {
				return err
			}
			nc = c
		}
		for _, subj := range []string{candles.SubjectAPICoverage, candles.SubjectAPISync} {
			if _, err := nc.Request(subj, []byte(`{"probe":1}`), time.Second); err != nil {
				return err
			}
		}
		return nil
	})
	t.Cleanup(nc.Close)
	return nc
}
