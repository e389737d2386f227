package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// testMonitorSettings are the monitor's defaults with a quick evaluation
// and HTTP on a free loopback port.
func testMonitorSettings(t *testing.T) monitorSettings {
	t.Helper()
	var mf monitorFlags
	mf.register(flagSet("monitor", "", "", io.Discard))
	mf.httpListen, mf.evalInterval = "127.0.0.1:0", 100*time.Millisecond
	ms, err := mf.settings(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// startUpMonitored runs `candlekeep up` in-process with the monitor, as
// the command does by default, and returns the NATS URL once the writer
// and the fetcher answer, and the monitor's HTTP address when it listens.
func startUpMonitored(t *testing.T, dataDir string, fo fetcher.Options, ms monitorSettings) (natsURL string, httpAddr <-chan string) {
	t.Helper()
	addr := make(chan string, 8) // the monitor may start more than once
	ms.Ready = func(a string) { addr <- a }
	natsURL = startUpConfig(t, upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo,
		Writer: writer.DefaultOptions(), Monitor: &ms}, testLogger(t))
	return natsURL, addr
}

// listening waits for the monitor's HTTP address.
func listening(t *testing.T, addr <-chan string) string {
	t.Helper()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("the monitor did not listen within 30s")
		return ""
	}
}

// standInBackup stands in for the backup service, which candlekeep does
// not have yet: a candlekeep-backup micro service that answers PING and a
// verified backup just taken, so the backup and activity checks have what
// they need.
func standInBackup(t *testing.T, nc *nats.Conn, at time.Time) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "candlekeep-backup", Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ev := &candles.BackupCompleted{EventHeader: candles.NewHeader(candles.KindBackupCompleted, ""), Tier: "hot",
		Location: "/backups/candles.db", Bytes: 1 << 20, SHA256: strings.Repeat("ab", 32), Verified: true, TakenAt: at}
	if err := candles.PublishEvent(t.Context(), js, ev, "", at); err != nil {
		t.Fatal(err)
	}
}

// healthOf runs `candlekeep health --json` against natsURL.
func healthOf(t *testing.T, natsURL string) (int, candles.HealthReport, string) {
	t.Helper()
	code, out, errOut := runCmd(t, "health", "--json", "--nats-url", natsURL)
	var hr candles.HealthReport
	if out != "" {
		if err := json.Unmarshal([]byte(out), &hr); err != nil {
			t.Fatalf("health --json printed %q: %v", out, err)
		}
	}
	return code, hr, errOut
}

func checkNamed(hr candles.HealthReport, name string) candles.Check {
	for _, c := range hr.Checks {
		if c.Name == name {
			return c
		}
	}
	return candles.Check{}
}

// `candlekeep up` runs the monitor: after a complete sync (and a verified
// backup) `candlekeep health` exits 0 with every check ok, /healthz says
// 200, `candlekeep status` lists the run; when the data goes stale by the
// monitor's clock, health exits 1 naming the stale pairs.
func TestHealthOfASystemThatSyncedAndThenWentStale(t *testing.T) {
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	symbols := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}
	fo.Symbols, fo.Intervals, fo.Lookback = symbols, []string{"4h"}, 20
	var offset atomic.Int64 // the monitor's clock runs ahead by this much
	ms := testMonitorSettings(t)
	ms.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	natsURL, addr := startUpMonitored(t, t.TempDir(), fo, ms)
	httpAddr := listening(t, addr)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)

	acc := requestSync(t, nc, `{"reason":"manual"}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if done.PairsOK != 3 {
		t.Fatalf("sync.completed = %+v", done)
	}
	standInBackup(t, nc, time.Now())

	var hr candles.HealthReport
	// The writer recounts candles at most every 30s (writer.countEvery): until
	// then the size check compares the count from before the sync.
	checkfor.Check(t, time.Minute, 100*time.Millisecond, func() error {
		code, got, errOut := healthOf(t, natsURL)
		if code != 0 {
			return fmt.Errorf("health exit %d (%s): %+v", code, errOut, got)
		}
		hr = got
		return nil
	})
	if hr.Status != candles.CheckOK || len(hr.Checks) != 6 || len(hr.Firing) != 0 {
		t.Fatalf("healthy report: %+v", hr)
	}
	for _, name := range []string{"freshness", "coverage", "integrity", "size", "backup", "activity"} {
		if c := checkNamed(hr, name); c.Status != candles.CheckOK {
			t.Fatalf("check %s: %+v", name, c)
		}
	}
	if c := checkNamed(hr, "coverage"); c.Value != "3/3" {
		t.Fatalf("coverage value %q, want 3/3", c.Value)
	}
	resp, err := http.Get("http://" + httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz answered %d, want 200", resp.StatusCode)
	}

	// The finished run, as `candlekeep status` prints it off a terminal.
	code, out, errOut := runCmd(t, "status", "--nats-url", natsURL)
	row := fmt.Sprintf("%s  manual  completed  3/3       0       %d", acc.RunID, done.Candles)
	if code != 0 || !strings.Contains(out, "RUNS IN PROGRESS (0)") || !strings.Contains(out, row) {
		t.Fatalf("status: exit %d, stderr %q, stdout:\n%s\nwant a row starting %q", code, errOut, out, row)
	}

	// 30 h later by the monitor's clock nothing has synced: stale.
	offset.Store(int64(30 * time.Hour))
	checkfor.Check(t, 30*time.Second, 100*time.Millisecond, func() error {
		code, got, errOut := healthOf(t, natsURL)
		if code != 1 || checkNamed(got, "freshness").Status != candles.CheckFail {
			return fmt.Errorf("health exit %d (%s), freshness %+v", code, errOut, checkNamed(got, "freshness"))
		}
		hr = got
		return nil
	})
	fresh := checkNamed(hr, "freshness")
	for _, sym := range symbols {
		if !strings.Contains(strings.Join(fresh.Details, "\n"), sym+"/4h") {
			t.Fatalf("freshness details do not name %s/4h: %+v", sym, fresh)
		}
	}
	code, out, _ = runCmd(t, "health", "--nats-url", natsURL)
	if code != 1 || !strings.Contains(out, "freshness") || !strings.Contains(out, "problems (fail)") {
		t.Fatalf("health table: exit %d\n%s", code, out)
	}
}

// In split mode `candlekeep monitor` is its own process: with
// `up --monitor=false` nothing answers health (exit 2) until it runs.
func TestSplitMonitorProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{})
	natsAddr := freeAddr(t)
	dataDir := t.TempDir()
	start(t, []string{"CANDLEKEEP_BINANCE_URL=" + simURL}, "up", "--nats-insecure", "--monitor=false", "--data-dir", dataDir,
		"--nats-listen", natsAddr, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "10",
		"--sync-schedule", "off", "--log-format", "json")
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")
	code, _, errOut := runCmd(t, "health", "--nats-url", server)
	if code != 2 || !strings.Contains(errOut, "no monitor answered on candles.api.health") {
		t.Fatalf("health without a monitor: exit %d, stderr %q", code, errOut)
	}
	httpAddr := freeAddr(t)
	mon := start(t, []string{"CANDLEKEEP_SLACK_WEBHOOK_URL=" + secretURL}, "monitor", "--nats-url", server,
		"--http-listen", httpAddr, "--eval-interval", "200ms", "--log-format", "json")
	nc := connect(t, server)
	standInBackup(t, nc, time.Now())
	// The catch-up at start fills both pairs; then the monitor sees a healthy system.
	checkfor.Check(t, time.Minute, 200*time.Millisecond, func() error {
		if mon.exited() {
			t.Fatalf("candlekeep monitor exited: %v\n%s", mon.err, mon.out)
		}
		code, hr, errOut := healthOf(t, server)
		if code != 0 {
			return fmt.Errorf("health exit %d (%s): %+v", code, errOut, hr)
		}
		return nil
	})
	waitHTTP(t, "http://"+httpAddr+"/healthz", mon)
	if strings.Contains(mon.out.String(), "s3cr3tT0k3n") {
		t.Fatalf("the monitor logged the webhook URL:\n%s", mon.out)
	}
	if !strings.Contains(mon.out.String(), "slack receiver configured") {
		t.Fatalf("the monitor does not log its receivers:\n%s", mon.out)
	}
}

// A monitor that cannot start inside `up` (its port is taken) does not stop
// the pipeline: syncs complete, and the monitor comes up by itself once the
// port is free.
func TestUpKeepsSyncingWhileItsMonitorCannotStart(t *testing.T) {
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT"}, []string{"4h"}, 10
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ms := testMonitorSettings(t)
	ms.HTTPListen = taken.Addr().String()
	natsURL, addr := startUpMonitored(t, t.TempDir(), fo, ms)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if done.PairsOK != 1 || done.Candles != 10 {
		t.Fatalf("sync.completed = %+v", done)
	}
	if code, _, errOut := runCmd(t, "health", "--nats-url", natsURL); code != 2 || !strings.Contains(errOut, "no monitor answered") {
		t.Fatalf("health while the monitor cannot start: exit %d, %q", code, errOut)
	}
	taken.Close()
	if got := listening(t, addr); got != ms.HTTPListen {
		t.Fatalf("the monitor listens on %s, want %s", got, ms.HTTPListen)
	}
	checkfor.Check(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, hr, errOut := healthOf(t, natsURL)
		if hr.V == 0 {
			return fmt.Errorf("no health report: %s", errOut)
		}
		return nil
	})
}

// `candlekeep status` against a real system: a slow run shows in progress
// with its pairs done so far, then among the last runs once it completed.
func TestStatusFollowsARealRun(t *testing.T) {
	_, simURL := startSim(t, sim.Options{Latency: 700 * time.Millisecond})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}, []string{"4h"}, 5
	fo.Concurrency = 1 // one pair at a time: a run of a few seconds
	natsURL, _ := startUpMonitored(t, t.TempDir(), fo, testMonitorSettings(t))
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"reason":"status-test"}`)
	prefix := acc.RunID + "  status-test  "
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		code, out, errOut := runCmd(t, "status", "--nats-url", natsURL)
		if code != 0 || !strings.Contains(out, "RUNS IN PROGRESS (1)") || !regexp.MustCompile(regexp.QuoteMeta(prefix)+`[0-3]/4 `).MatchString(out) {
			return fmt.Errorf("exit %d (%s), no run in progress:\n%s", code, errOut, out)
		}
		return nil
	})
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	checkfor.Check(t, 10*time.Second, 50*time.Millisecond, func() error {
		code, out, _ := runCmd(t, "status", "--nats-url", natsURL)
		row := prefix + fmt.Sprintf("completed  4/4       0       %d", done.Candles)
		if code != 0 || !strings.Contains(out, "RUNS IN PROGRESS (0)") || !strings.Contains(out, row) {
			return fmt.Errorf("exit %d, want no run in progress and the row %q:\n%s", code, row, out)
		}
		return nil
	})
}
