package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/testlog"
)

// lockedBuffer is a log sink the test reads while it is written.
type lockedBuffer = testlog.Buffer

func noEnv(string) (string, bool) { return "", false }

// syncCmd runs `candlekeep sync args...` in process.
func syncCmd(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb lockedBuffer
	code = run(ctx, append([]string{"sync"}, args...), &out, &errb, noEnv)
	return code, out.String(), errb.String()
}

// reportRow is one pair line of the text report.
type reportRow struct {
	status                   string
	fresh, refetched, repair string
	reason                   string
}

// parseReport reads the text report: the pair lines by pair, and the TOTAL line.
func parseReport(t *testing.T, stdout string) (map[candles.Pair]reportRow, string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "PAIR") || !strings.HasPrefix(lines[len(lines)-1], "TOTAL ") {
		t.Fatalf("not a report:\n%s", stdout)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "PAIR STATUS NEW REFETCHED REPAIRED REASON" {
		t.Fatalf("header %q", lines[0])
	}
	rows := map[candles.Pair]reportRow{}
	for _, l := range lines[1 : len(lines)-1] {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("short report line %q", l)
		}
		sym, iv, _ := strings.Cut(f[0], "/")
		rows[candles.Pair{Symbol: sym, Interval: iv}] = reportRow{f[1], f[2], f[3], f[4], strings.Join(f[5:], " ")}
	}
	if len(rows) != len(lines)-2 {
		t.Fatalf("a pair is listed twice:\n%s", stdout)
	}
	return rows, lines[len(lines)-1]
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.ReplaceAll(s, ",", ""))
	if err != nil {
		t.Fatalf("%q is not a count", s)
	}
	return n
}

// decodeReport decodes a --json report strictly: its shape is the contract.
func decodeReport(t *testing.T, stdout string) syncReport {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var r syncReport
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("--json output %q: %v", stdout, err)
	}
	return r
}

// One system with the 60 default symbols at 1h: the report against the
// database, --json, an unknown symbol, bad flags, a dry run, Ctrl-C.
func TestSyncCommand(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Intervals = []string{"1h"}
	dataDir := t.TempDir()
	natsURL := startUp(t, dataDir, fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	dbPath := filepath.Join(dataDir, databaseFile)
	symbols := candles.DefaultSymbols()
	if len(symbols) != 60 {
		t.Fatalf("%d default symbols, want 60", len(symbols))
	}

	firstNew := map[candles.Pair]int{}
	t.Run("every pair ok: exit 0, 60 lines whose counts equal the database's", func(t *testing.T) {
		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", natsURL, "--lookback", "5", "--log-format", "json")
		if code != 0 {
			t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rows, total := parseReport(t, stdout)
		if len(rows) != 60 {
			t.Fatalf("%d pair lines, want 60:\n%s", len(rows), stdout)
		}
		db := readDB(t, dbPath)
		sum := 0
		for _, sym := range symbols {
			p := candles.Pair{Symbol: sym, Interval: "1h"}
			r, ok := rows[p]
			if !ok {
				t.Fatalf("%s missing from the report", p)
			}
			stored := len(db[p])
			if r.status != "ok" || atoi(t, r.fresh) != stored || r.refetched != "0" || r.repair != "0" || r.reason != "-" {
				t.Errorf("%s: %+v; want ok, %d new (SELECT COUNT(*)), 0 re-fetched, 0 repaired", p, r, stored)
			}
			if stored < 5 {
				t.Errorf("%s: %d candles stored, want at least the lookback's 5", p, stored)
			}
			firstNew[p] = stored
			sum += stored
		}
		runID := regexp.MustCompile(`run (\S+) requested \(60 pairs\)`).FindStringSubmatch(stderr)
		if runID == nil {
			t.Fatalf("stderr does not name the run:\n%s", stderr)
		}
		want := fmt.Sprintf("TOTAL 60 pairs: 60 ok, 0 failed, 0 open, 0 skipped; candles %s new, 0 re-fetched, 0 repaired; run %s completed in ",
			thousands(int64(sum)), runID[1])
		if !strings.HasPrefix(total, want) {
			t.Errorf("totals line\n %q\nwant prefix\n %q", total, want)
		}
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, runID[1], time.Second, &done)
		if done.CandlesNew != int64(sum) || done.PairsOK != 60 {
			t.Errorf("sync.completed = %+v; the report says %d new candles over 60 pairs", done, sum)
		}
	})

	t.Run("again with --json: the last stored candle is re-fetched, new ones add up to the database", func(t *testing.T) {
		if len(firstNew) != 60 {
			t.Fatal("needs the first run's counts")
		}
		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", natsURL, "--lookback", "5", "--json", "--reason", "second")
		if code != 0 {
			t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		r := decodeReport(t, stdout)
		if r.Outcome != outcomeCompleted || r.ExitCode != 0 || r.RunID == "" || len(r.Pairs) != 60 || r.StartedAt.IsZero() ||
			r.FinishedAt.Before(r.StartedAt) || r.Deadline.IsZero() || r.Reason != "" {
			t.Fatalf("report %+v", r)
		}
		db := readDB(t, dbPath)
		var tot syncTotals
		for _, p := range r.Pairs {
			pair := candles.Pair{Symbol: p.Symbol, Interval: p.Interval}
			if p.Status != pairOK || p.Reason != "" || p.CandlesRefetched != 1 || p.Repaired != 0 ||
				p.Candles != p.CandlesNew+p.CandlesRefetched || int(p.CandlesNew)+firstNew[pair] != len(db[pair]) {
				t.Errorf("%s: %+v; want ok, the last stored candle re-fetched, and %d + new = %d stored", pair, p, firstNew[pair], len(db[pair]))
			}
			tot.Candles += p.Candles
			tot.CandlesNew += p.CandlesNew
			tot.CandlesRefetched += p.CandlesRefetched
		}
		want := syncTotals{Pairs: 60, OK: 60, Candles: tot.Candles, CandlesNew: tot.CandlesNew, CandlesRefetched: 60}
		if r.Totals != want {
			t.Errorf("totals %+v, want %+v", r.Totals, want)
		}
		var started candles.SyncStarted
		ev.wait(t, candles.KindSyncStarted, r.RunID, time.Second, &started)
		if started.Reason != "second" {
			t.Errorf("sync.started reason %q, want --reason's", started.Reason)
		}
	})

	t.Run("an unknown symbol: exit 1, its line names the exchange's reason", func(t *testing.T) {
		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", natsURL, "--symbols", "BTCUSDT,NOPEUSDT", "--lookback", "3")
		if code != 1 {
			t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rows, total := parseReport(t, stdout)
		nope := rows[candles.Pair{Symbol: "NOPEUSDT", Interval: "1h"}]
		if len(rows) != 2 || rows[candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}].status != "ok" || nope.status != "failed" ||
			nope.fresh != "-" || !strings.Contains(nope.reason, "code -1121: Invalid symbol.") {
			t.Fatalf("report:\n%s", stdout)
		}
		if !strings.HasPrefix(total, "TOTAL 2 pairs: 1 ok, 1 failed, 0 open, 0 skipped;") || !strings.Contains(stderr, "1 of 2 pairs failed") {
			t.Fatalf("totals %q, stderr:\n%s", total, stderr)
		}
	})

	t.Run("bad flags: exit 2 naming the flag, nothing requested", func(t *testing.T) {
		tests := []struct {
			name string
			args []string
			want string
		}{
			{"unknown flag", []string{"--symbol", "BTCUSDT"}, "flag provided but not defined: -symbol"},
			{"bad symbol", []string{"--symbols", "btc"}, `--symbols: "btc" is not a symbol`},
			{"bad interval", []string{"--intervals", "7m"}, `--intervals: unknown interval "7m"`},
			{"bad start", []string{"--start", "yesterday"}, `--start: "yesterday" is not an RFC 3339 time`},
			{"start after end", []string{"--start", "2024-02-01T00:00:00Z", "--end", "2024-01-01T00:00:00Z"}, "--start: start 2024-02-01T00:00:00Z is not before end"},
			{"negative lookback", []string{"--lookback", "-1"}, "--lookback: -1 is out of range"},
			{"lookback not a number", []string{"--lookback", "ten"}, `invalid value "ten" for flag --lookback`},
			{"negative timeout", []string{"--timeout", "-1s"}, "--timeout -1s: want 0"},
			{"stray argument", []string{"now"}, `unexpected argument "now"`},
			{"start in the future (the fetcher refuses it)", []string{"--symbols", "BTCUSDT", "--start", "2099-01-01T00:00:00Z"},
				"--start: the fetcher refused the request: invalid sync request: start: "},
			{"bad log level", []string{"--log-level", "loud"}, "--log-level"},
		}
		before := len(ev.of(candles.KindSyncStarted, ""))
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, stdout, stderr := syncCmd(t.Context(), append([]string{"--nats-url", natsURL}, tt.args...)...)
				if code != 2 || stdout != "" || !strings.Contains(stderr, tt.want) {
					t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant exit 2 and stderr containing %q", code, stdout, stderr, tt.want)
				}
			})
		}
		if n := len(ev.of(candles.KindSyncStarted, "")); n != before {
			t.Fatalf("%d runs started by refused commands", n-before)
		}
	})

	t.Run("dry run: the plan, exit 0, nothing fetched", func(t *testing.T) {
		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", natsURL, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h",
			"--start", "2024-01-01T00:00:00Z", "--end", "2024-01-11T00:00:00Z", "--dry-run")
		if code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
		want := []string{
			"PAIR BTCUSDT/4h ETHUSDT/4h",
			"BTCUSDT/4h 2024-01-01T00:00Z 2024-01-11T00:00Z 60 1 0",
			"ETHUSDT/4h 2024-01-01T00:00Z 2024-01-11T00:00Z 60 1 0",
		}
		if len(lines) != 4 || strings.Join(strings.Fields(lines[1]), " ") != want[1] || strings.Join(strings.Fields(lines[2]), " ") != want[2] ||
			!strings.HasPrefix(lines[3], "TOTAL 2 pairs, 2 requests, weight ") || !strings.HasSuffix(lines[3], "(dry run: nothing fetched)") {
			t.Fatalf("plan:\n%s", stdout)
		}
		code, stdout, _ = syncCmd(t.Context(), "--nats-url", natsURL, "--symbols", "BTCUSDT", "--intervals", "4h",
			"--start", "2024-01-01T00:00:00Z", "--end", "2024-01-11T00:00:00Z", "--dry-run", "--json")
		var plan candles.SyncPlan
		if err := json.Unmarshal([]byte(stdout), &plan); code != 0 || err != nil || !plan.DryRun || len(plan.Pairs) != 1 || plan.Pairs[0].Candles != 60 {
			t.Fatalf("exit %d, --json plan %s (%v)", code, stdout, err)
		}
	})

	t.Run("Ctrl-C: exit 130, says how to follow, the run completes anyway", func(t *testing.T) {
		s.AddFault(sim.Fault{Kind: sim.FaultLatency, Path: "/api/v3/klines", Symbol: "XRPUSDT", Delay: 2 * time.Second, Count: 1})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var out, errb lockedBuffer
		codec := make(chan int, 1)
		go func() {
			codec <- run(ctx, []string{"sync", "--nats-url", natsURL, "--symbols", "XRPUSDT", "--intervals", "1d", "--lookback", "3"}, &out, &errb, noEnv)
		}()
		var runID string
		checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
			m := regexp.MustCompile(`run (\S+) started: 1 pair,`).FindStringSubmatch(errb.String())
			if m == nil {
				return fmt.Errorf("not started yet: %q", errb.String())
			}
			runID = m[1]
			return nil
		})
		cancel()
		var code int
		select {
		case code = <-codec:
		case <-time.After(10 * time.Second):
			t.Fatal("sync did not return within 10s of Ctrl-C")
		}
		// The one klines request takes 2s: the run cannot have ended yet.
		completedBefore := len(ev.of(candles.KindSyncCompleted, runID))
		if code != 130 || completedBefore != 0 {
			t.Fatalf("exit %d, %d sync.completed before it returned; want 130 and none\nstderr:\n%s", code, completedBefore, errb.String())
		}
		for _, want := range []string{
			"interrupted; run " + runID + " goes on",
			"nats --server " + natsURL + " sub --stream EVENTS --since 1m 'candles.events.>' | grep '\"run_id\":\"" + runID + "\"'",
		} {
			if !strings.Contains(errb.String(), want) {
				t.Errorf("stderr does not say %q:\n%s", want, errb.String())
			}
		}
		rows, total := parseReport(t, out.String())
		if r := rows[candles.Pair{Symbol: "XRPUSDT", Interval: "1d"}]; r.status != "open" || !strings.Contains(total, "interrupted") {
			t.Errorf("report:\n%s", out.String())
		}
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, runID, 30*time.Second, &done)
		if done.PairsOK != 1 || done.CandlesNew != 3 {
			t.Fatalf("sync.completed after the interrupt: %+v, want XRPUSDT/1d ok with 3 new candles", done)
		}
	})

	t.Run("pairs a running run is syncing are skipped, not failed: exit 0", func(t *testing.T) {
		s.AddFault(sim.Fault{Kind: sim.FaultLatency, Path: "/api/v3/klines", Symbol: "DOTUSDT", Interval: "1d", Delay: 3 * time.Second, Count: 1})
		busy := requestSync(t, nc, `{"symbols":["DOTUSDT"],"intervals":["1d"],"lookback":3}`)
		var started candles.SyncStarted
		ev.wait(t, candles.KindSyncStarted, busy.RunID, 10*time.Second, &started)

		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", natsURL, "--symbols", "DOTUSDT,LINKUSDT", "--intervals", "1d", "--lookback", "3")
		if code != 0 {
			t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rows, total := parseReport(t, stdout)
		dot, link := rows[candles.Pair{Symbol: "DOTUSDT", Interval: "1d"}], rows[candles.Pair{Symbol: "LINKUSDT", Interval: "1d"}]
		if dot.status != "skipped" || dot.fresh != "-" || dot.reason != "already being synced by an unfinished run (run "+busy.RunID+")" ||
			link.status != "ok" || link.fresh != "3" || !strings.HasPrefix(total, "TOTAL 2 pairs: 1 ok, 0 failed, 0 open, 1 skipped;") {
			t.Fatalf("report:\n%s", stdout)
		}
		if want := "1 pair skipped: an unfinished run is already syncing them (run " + busy.RunID + "); this run leaves them out"; !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr)
		}

		// Every pair skipped: no run starts, nothing to follow.
		code, stdout, stderr = syncCmd(t.Context(), "--nats-url", natsURL, "--symbols", "DOTUSDT", "--intervals", "1d", "--json")
		r := decodeReport(t, stdout)
		if code != 0 || r.Outcome != outcomeSkipped || len(r.Pairs) != 1 || r.Pairs[0].Status != pairSkipped ||
			!strings.Contains(stderr, "no run started") {
			t.Fatalf("exit %d, report %+v\nstderr:\n%s", code, r, stderr)
		}
		if n := len(ev.of(candles.KindSyncCompleted, busy.RunID)); n != 0 {
			t.Fatalf("the busy run completed before the skips were checked (%d): the sim's latency is too short for this test", n)
		}
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, busy.RunID, 30*time.Second, &done)
	})

	t.Run("the binary: exit 0 and the report", func(t *testing.T) {
		if testing.Short() {
			t.Skip("end-to-end with processes; runs without -short")
		}
		cmd := exec.Command(binary(t), "sync", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1d", "--lookback", "4")
		cmd.Env = append(cmd.Environ(), "CANDLEKEEP_NATS_URL="+natsURL)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
		rows, total := parseReport(t, stdout.String())
		db := readDB(t, dbPath)
		for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
			p := candles.Pair{Symbol: sym, Interval: "1d"}
			if r := rows[p]; r.status != "ok" || atoi(t, r.fresh) != len(db[p]) {
				t.Errorf("%s: %+v, %d stored", p, r, len(db[p]))
			}
		}
		if !strings.HasPrefix(total, "TOTAL 2 pairs: 2 ok, 0 failed, 0 open, 0 skipped;") {
			t.Errorf("totals %q", total)
		}
	})

	t.Run("the binary: SIGINT exits 130", func(t *testing.T) {
		if testing.Short() {
			t.Skip("end-to-end with processes; runs without -short")
		}
		s.AddFault(sim.Fault{Kind: sim.FaultLatency, Path: "/api/v3/klines", Symbol: "ADAUSDT", Delay: 2 * time.Second, Count: 1})
		cmd := exec.Command(binary(t), "sync", "--symbols", "ADAUSDT", "--intervals", "1d", "--lookback", "2")
		cmd.Env = append(cmd.Environ(), "CANDLEKEEP_NATS_URL="+natsURL)
		var stdout, stderr lockedBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
			if !strings.Contains(stderr.String(), "started: 1 pair,") {
				return fmt.Errorf("not started yet: %q", stderr.String())
			}
			return nil
		})
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("no exit within 10s of SIGINT")
		}
		if code := cmd.ProcessState.ExitCode(); code != 130 || !strings.Contains(stderr.String(), "goes on without this command") {
			t.Fatalf("exit %d, want 130\nstderr:\n%s", code, stderr.String())
		}
	})
}

// A run past its deadline exits 124 naming the open pair; so does a
// --timeout shorter than the run.
func TestSyncCommandTimeouts(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	s.AddFault(sim.Fault{Kind: sim.FaultLatency, Path: "/api/v3/klines", Symbol: "ETHUSDT", Delay: 5 * time.Second})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.SyncTimeout = []string{"BTCUSDT", "ETHUSDT"}, []string{"4h"}, 2*time.Second
	natsURL := startUp(t, t.TempDir(), fo)
	args := []string{"--nats-url", natsURL, "--start", "2024-01-01T00:00:00Z", "--end", "2024-02-01T00:00:00Z"}

	t.Run("the run's deadline passes: exit 124", func(t *testing.T) {
		code, stdout, stderr := syncCmd(t.Context(), args...)
		if code != 124 {
			t.Fatalf("exit %d, want 124\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rows, total := parseReport(t, stdout)
		btc, eth := rows[candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}], rows[candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}]
		if len(rows) != 2 || btc.status != "ok" || atoi(t, btc.fresh) != 31*6 || eth.status != "open" ||
			!strings.HasPrefix(eth.reason, "not done by the run's deadline ") {
			t.Fatalf("report:\n%s", stdout)
		}
		if !strings.HasPrefix(total, "TOTAL 2 pairs: 1 ok, 0 failed, 1 open, 0 skipped;") || !strings.Contains(total, " timeout") ||
			!strings.Contains(stderr, "passed with pairs still open") || !strings.Contains(stderr, "\n1/2 pairs, 186 candles, ") {
			t.Fatalf("totals %q\nstderr:\n%s", total, stderr)
		}
	})

	t.Run("--timeout passes first: exit 124, the run goes on", func(t *testing.T) {
		// With credentials in the URL (the embedded server takes any): they
		// are never shown, not even in the hint that repeats the URL.
		secretURL := strings.Replace(natsURL, "nats://", "nats://alice:hunter2pass@", 1)
		code, stdout, stderr := syncCmd(t.Context(), "--nats-url", secretURL, "--start", "2024-01-01T00:00:00Z", "--end", "2024-02-01T00:00:00Z",
			"--symbols", "ETHUSDT", "--timeout", "500ms", "--json")
		if strings.Contains(stdout+stderr, "hunter2pass") || !strings.Contains(stderr, "nats --server nats://redacted@") {
			t.Errorf("the password shows, or the hint lacks the redacted URL:\n%s", stderr)
		}
		if code != 124 {
			t.Fatalf("exit %d, want 124\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		r := decodeReport(t, stdout)
		if r.Outcome != outcomeDeadline || r.ExitCode != 124 || len(r.Pairs) != 1 || r.Pairs[0].Status != pairOpen ||
			r.Pairs[0].Reason != "still running when --timeout 500ms passed" || !strings.Contains(stderr, "--timeout 500ms passed; run "+r.RunID+" goes on") {
			t.Fatalf("report %+v\nstderr:\n%s", r, stderr)
		}
	})
}

// With NATS up but no fetcher, nothing answers candles.api.sync: exit 2.
func TestSyncCommandNoAnswer(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(t.Context(), js, candles.StreamOptions{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := syncCmd(t.Context(), "--nats-url", ns.ClientURL(), "--timeout", "1s")
	if code != 2 || stdout != "" ||
		!strings.Contains(stderr, "no fetcher answered on candles.api.sync within 1s: is candlekeep up running?") {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
	code, _, stderr = syncCmd(t.Context(), "--nats-url", "nats://alice:hunter2pass@127.0.0.1:1")
	if code != 2 || !strings.Contains(stderr, "connect to nats://redacted@127.0.0.1:1") || !strings.Contains(stderr, "is candlekeep up running?") ||
		strings.Contains(stderr, "hunter2pass") {
		t.Fatalf("no server: exit %d, stderr:\n%s", code, stderr)
	}
}

// The follower's verdict for each way a run can go, from its events alone.
func TestRunFollower(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}
	ev := func(e candles.Event) []byte {
		e.Head().Time = at
		data, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	hdr := func(kind string) candles.EventHeader { return candles.NewHeader(kind, "r1") }
	started := ev(&candles.SyncStarted{EventHeader: hdr(candles.KindSyncStarted), Pairs: []candles.Pair{btc, eth}, PairsTotal: 2, Deadline: at.Add(time.Hour)})
	btcOK := ev(&candles.PairCompleted{EventHeader: hdr(candles.KindPairCompleted), Symbol: "BTCUSDT", Interval: "1h",
		Candles: 11, CandlesNew: 10, CandlesRefetched: 1, Repaired: 2})
	ethOK := ev(&candles.PairCompleted{EventHeader: hdr(candles.KindPairCompleted), Symbol: "ETHUSDT", Interval: "1h", Candles: 3, CandlesNew: 3})
	ethFailed := ev(&candles.PairFailed{EventHeader: hdr(candles.KindPairFailed), Symbol: "ETHUSDT", Interval: "1h", Reason: "HTTP 400"})
	completed := func(failed ...candles.PairFailed) []byte {
		return ev(&candles.SyncCompleted{EventHeader: hdr(candles.KindSyncCompleted), PairsTotal: 2, PairsOK: 2 - len(failed),
			PairsFailed: len(failed), Failed: failed, StartedAt: at, FinishedAt: at.Add(time.Minute)})
	}
	otherRun := ev(&candles.SyncCompleted{EventHeader: candles.NewHeader(candles.KindSyncCompleted, "r2")})
	type line struct {
		status     string
		candlesNew int64
		reason     string
	}
	tests := []struct {
		name    string
		events  [][]byte
		done    bool
		outcome string
		code    int
		want    map[candles.Pair]line
	}{
		{"every pair ok", [][]byte{started, otherRun, btcOK, ethOK, completed()}, true, outcomeCompleted, 0,
			map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairOK, 3, ""}}},
		{"a pair failed", [][]byte{started, btcOK, ethFailed, completed(candles.PairFailed{Symbol: "ETHUSDT", Interval: "1h", Reason: "HTTP 400"})},
			true, outcomeCompleted, 1, map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairFailed, 0, "HTTP 400"}}},
		{"the writer's failed list decides", [][]byte{started, btcOK, completed(candles.PairFailed{Symbol: "ETHUSDT", Interval: "1h", Reason: "rejected"})},
			true, outcomeCompleted, 1, map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairFailed, 0, "rejected"}}},
		{"the run's deadline passed", [][]byte{started, btcOK, ev(&candles.SyncTimeout{EventHeader: hdr(candles.KindSyncTimeout),
			Deadline: at, OpenPairs: []candles.Pair{eth}, PairsOK: 1})}, true, outcomeTimeout, 124,
			map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairOpen, 0, "not done by the run's deadline 2026-12-01T10:00:00Z"}}},
		{"a pair completed after the deadline stays ok", [][]byte{started, btcOK, ethOK, ev(&candles.SyncTimeout{EventHeader: hdr(candles.KindSyncTimeout),
			Deadline: at, OpenPairs: []candles.Pair{eth}, PairsOK: 1})}, true, outcomeTimeout, 124,
			map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairOK, 3, ""}}},
		{"the run could not start", [][]byte{ev(&candles.SyncWaiting{EventHeader: hdr(candles.KindSyncWaiting), Reason: "exchange down", Attempt: 1, MaxAttempts: 10}),
			ev(&candles.SyncFailed{EventHeader: hdr(candles.KindSyncFailed), Reason: "exchange down"})}, true, outcomeFailed, 1, map[candles.Pair]line{}},
		{"some pairs skipped", [][]byte{ev(&candles.SyncSkipped{EventHeader: hdr(candles.KindSyncSkipped), Pairs: []candles.Pair{eth},
			SyncingRuns: []string{"r0"}, PairsStarted: 1, Reason: "busy"}), ev(&candles.SyncStarted{EventHeader: hdr(candles.KindSyncStarted),
			Pairs: []candles.Pair{btc}, PairsTotal: 1}), btcOK, completed()}, true, outcomeCompleted, 0,
			map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairSkipped, 0, "busy (run r0)"}}},
		{"every pair skipped", [][]byte{ev(&candles.SyncSkipped{EventHeader: hdr(candles.KindSyncSkipped), Pairs: []candles.Pair{btc, eth},
			SyncingRuns: []string{"r0"}, Reason: "busy"})}, true, outcomeSkipped, 0,
			map[candles.Pair]line{btc: {pairSkipped, 0, "busy (run r0)"}, eth: {pairSkipped, 0, "busy (run r0)"}}},
		{"still running", [][]byte{started, btcOK, []byte(`not json`)}, false, "", 0,
			map[candles.Pair]line{btc: {pairOK, 10, ""}, eth: {pairPending, 0, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRunFollower("r1")
			for _, e := range tt.events {
				_ = f.handle(e) // a bad event is logged by follow and changes nothing
			}
			r := f.final()
			if f.done != tt.done || r.Outcome != tt.outcome || r.ExitCode != tt.code {
				t.Fatalf("done %v, outcome %q, exit %d; want %v, %q, %d", f.done, r.Outcome, r.ExitCode, tt.done, tt.outcome, tt.code)
			}
			got := map[candles.Pair]line{}
			for _, p := range r.Pairs {
				got[candles.Pair{Symbol: p.Symbol, Interval: p.Interval}] = line{p.Status, p.CandlesNew, p.Reason}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("pairs\n got %v\nwant %v", got, tt.want)
			}
		})
	}
	t.Run("a bad event of the run is an error, one of another run is not", func(t *testing.T) {
		f := newRunFollower("r1")
		if err := f.handle([]byte(`{"kind":"pair.completed","run_id":"r1","candles":"many"}`)); err == nil {
			t.Fatal("no error for an undecodable pair.completed")
		}
		if err := f.handle([]byte(`{"kind":"pair.completed","run_id":"r2","candles":"many"}`)); err != nil {
			t.Fatalf("an event of another run: %v", err)
		}
	})
}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		p       progress
		elapsed time.Duration
		want    string
	}{
		{progress{0, 60, 0}, 0, "0/60 pairs, 0 candles"},
		{progress{12, 60, 34000}, 10 * time.Second, "12/60 pairs, 34,000 candles, 3,400 candles/s, ETA 40s"},
		{progress{60, 60, 1234567}, time.Minute, "60/60 pairs, 1,234,567 candles, 20,576 candles/s"},
	}
	for _, tt := range tests {
		if got := progressLine(tt.p, tt.elapsed); got != tt.want {
			t.Errorf("progressLine(%+v, %v) = %q, want %q", tt.p, tt.elapsed, got, tt.want)
		}
	}
}

// Progress on a terminal is one line redrawn in place and cleared at the
// end; elsewhere it is a plain line per change.
func TestFollowProgress(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	enc := func(e candles.Event) []byte {
		e.Head().Time = at
		data, _ := json.Marshal(e)
		return data
	}
	hdr := func(kind string) candles.EventHeader { return candles.NewHeader(kind, "r1") }
	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}
	for _, terminal := range []bool{true, false} {
		t.Run(fmt.Sprintf("terminal=%v", terminal), func(t *testing.T) {
			events := make(chan []byte)
			var stderr lockedBuffer
			got := make(chan syncReport, 1)
			go func() {
				r, _ := follow(t.Context(), followOptions{runID: "r1", events: events, stderr: &stderr, terminal: terminal,
					every: 10 * time.Millisecond, log: testLogger(t)})
				got <- r
			}()
			events <- enc(&candles.SyncStarted{EventHeader: hdr(candles.KindSyncStarted), Pairs: []candles.Pair{btc, eth}, PairsTotal: 2})
			waitFor := func(s string) {
				checkfor.Check(t, 10*time.Second, 10*time.Millisecond, func() error {
					if !strings.Contains(stderr.String(), s) {
						return fmt.Errorf("stderr %q has no %q", stderr.String(), s)
					}
					return nil
				})
			}
			waitFor("0/2 pairs, 0 candles")
			events <- enc(&candles.PairCompleted{EventHeader: hdr(candles.KindPairCompleted), Symbol: "BTCUSDT", Interval: "1h", Candles: 1500, CandlesNew: 1500})
			waitFor("1/2 pairs, 1,500 candles")
			events <- enc(&candles.PairCompleted{EventHeader: hdr(candles.KindPairCompleted), Symbol: "ETHUSDT", Interval: "1h", Candles: 500, CandlesNew: 500})
			events <- enc(&candles.SyncCompleted{EventHeader: hdr(candles.KindSyncCompleted), PairsTotal: 2, PairsOK: 2, StartedAt: at, FinishedAt: at})
			r := <-got
			if r.Outcome != outcomeCompleted || r.ExitCode != 0 || r.Totals.CandlesNew != 2000 {
				t.Fatalf("report %+v", r)
			}
			out := stderr.String()
			if !strings.HasPrefix(out, "candlekeep sync: run r1 started: 2 pairs\n") {
				t.Fatalf("stderr does not start with the run: %q", out)
			}
			progressLines := strings.TrimPrefix(out, "candlekeep sync: run r1 started: 2 pairs\n")
			if terminal {
				// Redrawn in place: no newline, and cleared when the run ends.
				if strings.Contains(progressLines, "\n") || !strings.HasPrefix(progressLines, "\r\033[K0/2 pairs") ||
					!strings.HasSuffix(progressLines, "\r\033[K") {
					t.Fatalf("terminal progress %q", progressLines)
				}
				return
			}
			if strings.Contains(progressLines, "\r") || strings.Count(progressLines, "0/2 pairs, 0 candles") != 1 ||
				strings.Count(progressLines, "1/2 pairs, 1,500 candles") != 1 {
				t.Fatalf("plain progress: want one line per change, got %q", progressLines)
			}
		})
	}
}
