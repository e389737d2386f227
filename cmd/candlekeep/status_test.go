package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
)

// A run in progress and a finished one, as the monitor reports them.
func statusReport() candles.StatusReport {
	return candles.StatusReport{V: 1, At: reportAt,
		Running: []candles.RunStatus{{RunID: "run-b", Reason: "schedule", PairsTotal: 60, PairsDone: 15, PairsFailed: 1,
			Candles: 4000, Weight: 30, StartedAt: reportAt.Add(-20 * time.Second), ETA: reportAt.Add(time.Minute), Outcome: "running"}},
		Recent: []candles.RunStatus{
			{RunID: "run-a", Reason: "manual", PairsTotal: 60, PairsDone: 60, PairsFailed: 2, Candles: 120000,
				StartedAt: reportAt.Add(-time.Hour), FinishedAt: reportAt.Add(-time.Hour + 95*time.Second), Outcome: "completed"},
			{RunID: "run-0", PairsTotal: 2, StartedAt: reportAt.Add(-2 * time.Hour), FinishedAt: reportAt.Add(-2*time.Hour + 1500*time.Millisecond), Outcome: "timeout"},
			{RunID: "run-z", Reason: "schedule", PairsTotal: 1, PairsDone: 1, Candles: 4, StartedAt: reportAt.Add(-3 * time.Hour),
				FinishedAt: reportAt.Add(-3*time.Hour + 12345*time.Microsecond), Outcome: "completed"},
		}}
}

// Not on a terminal, status prints plain lines once: the runs in progress
// with their pace and the last runs with their outcome.
func TestStatusPlainLines(t *testing.T) {
	ns := natstest.RunServer(t)
	fakeMonitor{status: statusReport}.serve(t, natstest.Connect(t, ns))
	code, out, errOut := runCmd(t, "status", "--nats-url", ns.ClientURL())
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	want := `RUNS IN PROGRESS (1)
RUN    REASON    PAIRS  FAILED  CANDLES  RATE   WEIGHT  ELAPSED  ETA
run-b  schedule  15/60  1       4000     200/s  30      20s      in 1m0s

LAST RUNS (3)
RUN    REASON    OUTCOME    PAIRS OK  FAILED  CANDLES  DURATION  FINISHED
run-a  manual    completed  58/60     2       120000   1m35s     2026-12-04T11:01:35Z
run-0  -         timeout    0/2       0       0        1.5s      2026-12-04T10:00:01Z
run-z  schedule  completed  1/1       0       4        12ms      2026-12-04T09:00:00Z

as of 2026-12-04T12:00:00Z
`
	if out != want {
		t.Fatalf("status:\n%s\nwant:\n%s", out, want)
	}
	code, out, _ = runCmd(t, "status", "--json", "--nats-url", ns.ClientURL())
	var got candles.StatusReport
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 || !reflect.DeepEqual(got, statusReport()) {
		t.Fatalf("--json: exit %d, %v:\n%s", code, err, out)
	}
	// On a terminal each run in progress gets a bar.
	var b bytes.Buffer
	printStatus(&b, statusReport(), true)
	if !strings.Contains(b.String(), "run-b  schedule  [#####...............] 15/60  1") {
		t.Fatalf("terminal status:\n%s", b.String())
	}
}

// --watch off a terminal asks every --interval and appends plain reports
// (no redraw codes) until interrupted, then exits 0.
func TestStatusWatchAppendsPlainReports(t *testing.T) {
	ns := natstest.RunServer(t)
	var mu sync.Mutex
	asked := 0
	fakeMonitor{status: func() candles.StatusReport {
		mu.Lock()
		defer mu.Unlock()
		asked++
		sr := statusReport()
		sr.Running[0].PairsDone = 15 + asked
		return sr
	}}.serve(t, natstest.Connect(t, ns))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"status", "--watch", "--interval", "50ms", "--nats-url", ns.ClientURL()}, &out, &errOut,
			func(string) (string, bool) { return "", false })
	}()
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(out.String(), "run-b  schedule  18/60") {
			return fmt.Errorf("no third report yet:\n%s", out.String())
		}
		return nil
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after interrupt; stderr:\n%s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("status --watch did not stop within 10s of the interrupt")
	}
	got := out.String()
	if strings.Contains(got, "\x1b[") {
		t.Fatalf("escape codes off a terminal:\n%q", got)
	}
	for i, want := range []string{"16/60", "17/60", "18/60"} {
		if !strings.Contains(got, "run-b  schedule  "+want) {
			t.Fatalf("report %d (%s) missing:\n%s", i+1, want, got)
		}
	}
	if n := strings.Count(got, "RUNS IN PROGRESS (1)"); n < 3 {
		t.Fatalf("%d reports, want at least 3:\n%s", n, got)
	}
}

// With no monitor, status exits 2 and says what to check.
func TestStatusWithoutAMonitor(t *testing.T) {
	ns := natstest.RunServer(t)
	code, out, errOut := runCmd(t, "status", "--nats-url", ns.ClientURL())
	want := "candlekeep status: no monitor answered on candles.api.status: is candlekeep up or candlekeep monitor running?\n"
	if code != 2 || out != "" || errOut != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, want)
	}
	for _, args := range [][]string{{"status", "--interval", "0s"}, {"status", "--timeout", "-1s"}, {"health", "--timeout", "0s"}} {
		code, _, errOut := runCmd(t, args...)
		if code != 2 || !strings.Contains(errOut, args[1]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", args, code, errOut, args[1])
		}
	}
}
