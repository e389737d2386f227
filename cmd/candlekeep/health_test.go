package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
)

// fakeMonitor answers the monitor's endpoints on a real embedded NATS with
// the reports its functions return: the operator commands' output and
// exit codes are checked against reports chosen exactly.
type fakeMonitor struct {
	health func() candles.HealthReport
	status func() candles.StatusReport
}

// serve registers the fake as the candlekeep-monitor micro service.
func (f fakeMonitor) serve(t *testing.T, nc *nats.Conn) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "candlekeep-monitor", Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	reply := func(v func() any) micro.HandlerFunc {
		return func(r micro.Request) { _ = r.RespondJSON(v()) }
	}
	if f.health != nil {
		if err := svc.AddEndpoint("health", reply(func() any { return f.health() }), micro.WithEndpointSubject(candles.SubjectAPIHealth)); err != nil {
			t.Fatal(err)
		}
	}
	if f.status != nil {
		if err := svc.AddEndpoint("status", reply(func() any { return f.status() }), micro.WithEndpointSubject(candles.SubjectAPIStatus)); err != nil {
			t.Fatal(err)
		}
	}
	// The server has the endpoints' subscriptions before a command on
	// another connection asks (else: no responders, now and then).
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// runCmd runs the binary's command in-process with no environment.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), args, &out, &errb, func(string) (string, bool) { return "", false })
	return code, out.String(), errb.String()
}

var reportAt = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func healthReport(status candles.CheckStatus) candles.HealthReport {
	return candles.HealthReport{V: 1, Status: status, At: reportAt, Checks: []candles.Check{
		{Name: "freshness", Status: candles.CheckOK, Value: "3h10m0s", Threshold: "26h0m0s", Reason: "every pair's newest candle is fresh", AsOf: reportAt},
		{Name: "coverage", Status: status, Value: "1/2", Threshold: "2/2", Reason: "1 pair not complete",
			Details: []string{"ETHUSDT/4h: empty"}, AsOf: reportAt},
	}}
}

// `candlekeep health` exits 0 healthy, 1 on problems and 2 when it cannot
// tell, and --json prints exactly the monitor's report.
func TestHealthExitCodesFollowTheReport(t *testing.T) {
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	var current candles.HealthReport
	fakeMonitor{health: func() candles.HealthReport { return current }}.serve(t, nc)
	tests := []struct {
		status candles.CheckStatus
		code   int
		last   string
	}{
		{candles.CheckOK, 0, "healthy at 2026-12-04T12:00:00Z"},
		{candles.CheckWarn, 1, "problems (warn) at 2026-12-04T12:00:00Z"},
		{candles.CheckFail, 1, "problems (fail) at 2026-12-04T12:00:00Z"},
		{candles.CheckUnknown, 2, "cannot tell (unknown): the monitor has not heard what a check needs at 2026-12-04T12:00:00Z"},
		{"", 2, "cannot tell (-): the monitor has not heard what a check needs at 2026-12-04T12:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(string(tt.status), func(t *testing.T) {
			current = healthReport(tt.status)
			code, out, errOut := runCmd(t, "health", "--nats-url", ns.ClientURL())
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errOut)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if got := lines[len(lines)-1]; got != tt.last {
				t.Fatalf("last line %q, want %q", got, tt.last)
			}
			code, out, _ = runCmd(t, "health", "--json", "--nats-url", ns.ClientURL())
			var got candles.HealthReport
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("--json printed %q: %v", out, err)
			}
			if code != tt.code || !reflect.DeepEqual(got, current) {
				t.Fatalf("--json: exit %d, report\n%+v\nwant\n%+v", code, got, current)
			}
		})
	}
}

// The table shows each check with its details under the reason, the age of
// last known values, and the firing alerts with their runbook.
func TestHealthTable(t *testing.T) {
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	hr := healthReport(candles.CheckFail)
	hr.Checks = append(hr.Checks, candles.Check{Name: "integrity", Status: candles.CheckUnknown, Value: "ok", Threshold: "quick_check ok",
		Reason: "the writer does not answer", AsOf: reportAt.Add(-5 * time.Minute)})
	hr.Firing = []candles.AlertEvent{{Alert: "CandlekeepMissingSymbols", Severity: "warning", Summary: "1 configured pair has no complete data",
		Value: "1", Threshold: "0", Runbook: "docs/alerts.md#candlekeepmissingsymbols", Members: []string{"ETHUSDT/4h"},
		FiringSince: reportAt.Add(-time.Hour)}}
	fakeMonitor{health: func() candles.HealthReport { return hr }}.serve(t, nc)
	code, out, errOut := runCmd(t, "health", "--nats-url", ns.ClientURL())
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
	}
	want := `CHECK      STATUS   VALUE    THRESHOLD       REASON
freshness  ok       3h10m0s  26h0m0s         every pair's newest candle is fresh
coverage   fail     1/2      2/2             1 pair not complete
                                               ETHUSDT/4h: empty
integrity  unknown  ok       quick_check ok  the writer does not answer (as of 2026-12-04T11:55:00Z, 5m0s ago)

FIRING ALERTS (1)
ALERT                     SEVERITY  SINCE                 VALUE  THRESHOLD  SUMMARY
CandlekeepMissingSymbols  warning   2026-12-04T11:00:00Z  1      0          1 configured pair has no complete data
                                                                              ETHUSDT/4h
                                                                              runbook: docs/alerts.md#candlekeepmissingsymbols

problems (fail) at 2026-12-04T12:00:00Z
`
	if out != want {
		t.Fatalf("table:\n%s\nwant:\n%s", out, want)
	}
	// On a terminal the statuses are coloured and still line up.
	var b bytes.Buffer
	printHealth(&b, hr, true)
	if !strings.Contains(b.String(), "coverage   "+ansiRed+"fail"+ansiReset+"     1/2") {
		t.Fatalf("coloured table:\n%q", b.String())
	}
}

// With no monitor, or one that does not answer in time, health cannot tell:
// exit 2 with a message that says what to check.
func TestHealthWithoutAMonitorCannotTell(t *testing.T) {
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	code, out, errOut := runCmd(t, "health", "--nats-url", ns.ClientURL())
	want := "candlekeep health: no monitor answered on candles.api.health: is candlekeep up or candlekeep monitor running?\n"
	if code != 2 || out != "" || errOut != want {
		t.Fatalf("no responders: exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, want)
	}
	// A monitor that hears the request but never answers.
	sub, err := nc.SubscribeSync(candles.SubjectAPIHealth)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCmd(t, "health", "--timeout", "300ms", "--nats-url", ns.ClientURL())
	want = "candlekeep health: no monitor answered on candles.api.health within 300ms: is candlekeep up or candlekeep monitor running?\n"
	if code != 2 || errOut != want {
		t.Fatalf("silent monitor: exit %d, stderr %q; want 2 and %q", code, errOut, want)
	}
	// No NATS at all.
	code, _, errOut = runCmd(t, "health", "--nats-url", "nats://127.0.0.1:1")
	if code != 2 || !strings.Contains(errOut, "connect to nats://127.0.0.1:1") {
		t.Fatalf("no NATS: exit %d, stderr %q", code, errOut)
	}
}
