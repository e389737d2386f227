package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/monitor/sla"
)

// slaMonth is the simulated month: 30 days of October 2026.
var (
	slaFrom  = time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	slaTo    = slaFrom.AddDate(0, 0, 30)
	slaPairs = []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}, {Symbol: "SOLUSDT", Interval: "4h"}}
)

// at is a time of the simulated month: October day, hour, minute.
func at(day, hour, minute int) time.Time {
	return time.Date(2026, 10, day, hour, minute, 0, 0, time.UTC)
}

// timed is an event and when it happened (the clock's time when published).
type timed struct {
	at time.Time
	ev candles.Event
	id string
}

// recordMonth builds 30 simulated days the way the services record them:
// hourly freshness heartbeats (ETHUSDT stale all of October 10th), a daily
// sync at 01:00 of 3 minutes (40 minutes on the 15th, one pair failed on
// the 5th), 429s on the 15th and the 22nd, daily backups at 02:00 in two
// tiers (the 20th's failed: the next came 30 h after the one before), a
// drill on the 25th, and the alerts those faults fire.
func recordMonth() []timed {
	var out []timed
	add := func(t time.Time, ev candles.Event, id string) { out = append(out, timed{t, ev, id}) }
	hdr := func(kind string) candles.EventHeader { return candles.NewHeader(kind, "") }

	fresh := func(t time.Time, stale bool, reason string) {
		e := &candles.FreshnessChanged{EventHeader: hdr(candles.KindFreshnessChanged), Configured: slaPairs, Fresh: 3, Reason: reason, NotFresh: []candles.PairFreshness{}}
		if stale {
			e.NotFresh = []candles.PairFreshness{{Symbol: "ETHUSDT", Interval: "4h", State: candles.FreshnessStale}}
			e.Fresh = 2
		}
		add(t, e, candles.FreshnessHeartbeatID(t))
	}
	// The state at the window's start comes from before it.
	fresh(slaFrom.Add(-30*time.Minute), false, candles.FreshnessReasonStart)
	for t := slaFrom; t.Before(slaTo); t = t.Add(time.Hour) {
		stale := t.Day() == 10
		reason := candles.FreshnessReasonHeartbeat
		if t.Equal(at(10, 0, 0)) || t.Equal(at(11, 0, 0)) {
			reason = candles.FreshnessReasonChanged
		}
		fresh(t, stale, reason)
	}

	for day := 1; day <= 30; day++ {
		start, d, ok := at(day, 1, 0), 3*time.Minute, 3
		if day == 15 {
			d = 40 * time.Minute
		}
		if day == 5 {
			ok = 2
		}
		add(start.Add(d), &candles.SyncCompleted{EventHeader: hdr(candles.KindSyncCompleted), PairsTotal: 3, PairsOK: ok, PairsFailed: 3 - ok,
			StartedAt: start, FinishedAt: start.Add(d)}, "")
	}
	for _, t := range []time.Time{at(15, 1, 10), at(15, 1, 20), at(15, 1, 30), at(22, 13, 5)} {
		add(t, &candles.RateLimitHit{EventHeader: hdr(candles.KindRateLimitHit), Symbol: "BTCUSDT", Interval: "4h", RetryAfter: 5}, "")
	}

	backup := func(t time.Time) {
		for _, tier := range []string{"hot", "warm"} {
			add(t.Add(time.Minute), &candles.BackupCompleted{EventHeader: hdr(candles.KindBackupCompleted), Tier: tier, Verified: true, TakenAt: t}, "")
		}
	}
	backup(slaFrom.Add(-22 * time.Hour)) // September 30th, 02:00
	for day := 1; day <= 30; day++ {
		if day == 20 {
			add(at(20, 2, 5), &candles.BackupFailed{EventHeader: hdr(candles.KindBackupFailed), Tier: "hot", Reason: "disk full"}, "")
			backup(at(20, 8, 0))
			continue
		}
		backup(at(day, 2, 0))
	}
	add(at(25, 3, 0), &candles.DrillCompleted{EventHeader: hdr(candles.KindDrillCompleted), OK: true,
		Recovery: candles.Recovery{Tier: "hot", StartedAt: at(25, 3, 0).Add(-45 * time.Second), FinishedAt: at(25, 3, 0), RTOSeconds: 45}}, "")

	alert := func(name, severity string, since, resolved time.Time) {
		add(since, &candles.AlertEvent{EventHeader: hdr(candles.KindAlertFiring), Alert: name, Severity: severity, Summary: name + " fired",
			ActiveSince: since, FiringSince: since}, "")
		if !resolved.IsZero() {
			add(resolved, &candles.AlertEvent{EventHeader: hdr(candles.KindAlertResolved), Alert: name, Severity: severity, Summary: name + " fired",
				ActiveSince: since, FiringSince: since, ResolvedAt: resolved}, "")
		}
	}
	alert("CandlekeepDataStale", "critical", at(10, 0, 5), at(11, 0, 0))
	alert("CandlekeepRateLimitAbuse", "warning", at(15, 1, 10), at(15, 2, 30))
	alert("CandlekeepSyncSlow", "warning", at(15, 1, 40), at(16, 1, 3))
	alert("CandlekeepBackupStale", "warning", at(20, 4, 10), at(20, 8, 0))
	alert("CandlekeepRateLimitAbuse", "warning", at(22, 13, 5), at(22, 14, 5))
	alert("CandlekeepDiskSpaceLow", "info", at(30, 12, 0), time.Time{})

	slices.SortStableFunc(out, func(a, b timed) int { return a.at.Compare(b.at) })
	return out
}

// publishMonth publishes the month into EVENTS, each event stamped by the
// settable clock standing at its time, as the services stamp theirs.
func publishMonth(t *testing.T, js jetstream.JetStream, clock *testclock.Clock) {
	t.Helper()
	ctx := context.Background()
	for _, e := range recordMonth() {
		clock.Set(e.at)
		if err := candles.PublishEvent(ctx, js, e.ev, e.id, clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
}

// slaServer runs NATS with candlekeep's streams and the recorded month.
func slaServer(t *testing.T) (url string, clock *testclock.Clock) {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	clock = testclock.New(slaFrom.Add(-24 * time.Hour))
	publishMonth(t, js, clock)
	return ns.ClientURL(), clock
}

func runSLAIn(t *testing.T, clock *testclock.Clock, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	noEnv := func(string) (string, bool) { return "", false }
	code = slaCommand(context.Background(), args, &out, &errOut, noEnv, clock.Now)
	return code, out.String(), errOut.String()
}

// TestSLAMonth audits the recorded month and checks every figure.
func TestSLAMonth(t *testing.T) {
	url, clock := slaServer(t)
	html := filepath.Join(t.TempDir(), "sla.html")
	code, out, errOut := runSLAIn(t, clock, "--nats-url", url, "--from", "2026-10-01", "--to", "2026-10-31T00:00:00Z", "--json", "--html", html)
	if code != 1 {
		t.Fatalf("exit %d, want 1 (targets missed); stderr:\n%s", code, errOut)
	}
	var r sla.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	hours := func(h float64) float64 { return h * 3600 }

	if !r.From.Equal(slaFrom) || !r.To.Equal(slaTo) || r.NoData || !r.HistoryStart.Equal(slaFrom.Add(-30*time.Minute)) {
		t.Errorf("window %s..%s no_data %v history %s", r.From, r.To, r.NoData, r.HistoryStart)
	}
	if len(r.Notes) != 0 {
		t.Errorf("notes = %q, want none", r.Notes)
	}
	wantAv := sla.Availability{Share: 29.0 / 30, FreshSeconds: hours(29 * 24), StaleSeconds: hours(24), FreshDays: 29, Days: 30}
	if r.Availability != wantAv {
		t.Errorf("availability = %+v, want %+v", r.Availability, wantAv)
	}
	if want := []string{"BTCUSDT/4h", "ETHUSDT/4h", "SOLUSDT/4h"}; !slices.Equal(r.Pairs, want) {
		t.Errorf("pairs = %q, want %q", r.Pairs, want)
	}
	if len(r.Days) != 30 {
		t.Fatalf("%d days, want 30", len(r.Days))
	}
	for i, d := range r.Days {
		want := sla.Day{Date: slaFrom.AddDate(0, 0, i).Format("2006-01-02"), Fresh: 1, Pairs: []string{"fresh", "fresh", "fresh"}}
		if i == 9 {
			want.Fresh, want.Stale, want.Pairs = 0, 1, []string{"fresh", "stale", "fresh"}
		}
		if d.Date != want.Date || d.Fresh != want.Fresh || d.Stale != want.Stale || d.NoData != 0 || !slices.Equal(d.Pairs, want.Pairs) {
			t.Errorf("day %d = %+v, want %+v", i, d, want)
		}
	}
	wantSync := sla.Sync{Runs: 30, P50Seconds: 180, P99Seconds: 2400, MaxSeconds: 2400, Slow: 1,
		PairsOKMin: 2, PairsOKMean: 89.0 / 30, PairsOKLast: 3, PairsTotalLast: 3, RunsAllOK: 29}
	if r.Sync != wantSync {
		t.Errorf("sync = %+v, want %+v", r.Sync, wantSync)
	}
	if want := (sla.RateLimit{Hits: 4, MaxPerHour: 3, MeanPerHour: 4.0 / 720, HoursWithHits: 2}); r.RateLimit != want {
		t.Errorf("rate limit = %+v, want %+v", r.RateLimit, want)
	}
	if want := (sla.Backups{Count: 30, Last: at(30, 2, 0), WorstAgeSeconds: hours(30), WorstFrom: at(19, 2, 0), WorstTo: at(20, 8, 0), Failed: 1}); r.Backups != want {
		t.Errorf("backups = %+v, want %+v", r.Backups, want)
	}
	if want := (sla.Recovery{Drills: 1, RTOSeconds: 45}); r.Recovery != want {
		t.Errorf("recovery = %+v, want %+v", r.Recovery, want)
	}
	wantAlerts := []sla.Alert{
		{Alert: "CandlekeepDataStale", Severity: "critical", Start: at(10, 0, 5), End: at(11, 0, 0), DurationSeconds: hours(23) + 55*60},
		{Alert: "CandlekeepRateLimitAbuse", Severity: "warning", Start: at(15, 1, 10), End: at(15, 2, 30), DurationSeconds: hours(1) + 20*60},
		{Alert: "CandlekeepSyncSlow", Severity: "warning", Start: at(15, 1, 40), End: at(16, 1, 3), DurationSeconds: hours(23) + 23*60},
		{Alert: "CandlekeepBackupStale", Severity: "warning", Start: at(20, 4, 10), End: at(20, 8, 0), DurationSeconds: hours(3) + 50*60},
		{Alert: "CandlekeepRateLimitAbuse", Severity: "warning", Start: at(22, 13, 5), End: at(22, 14, 5), DurationSeconds: hours(1)},
		{Alert: "CandlekeepDiskSpaceLow", Severity: "info", Start: at(30, 12, 0), StillFiring: true, DurationSeconds: hours(12)},
	}
	if len(r.Alerts) != len(wantAlerts) {
		t.Fatalf("alerts = %+v\nwant %+v", r.Alerts, wantAlerts)
	}
	for i, want := range wantAlerts {
		want.Summary = want.Alert + " fired"
		if r.Alerts[i] != want {
			t.Errorf("alert %d = %+v\nwant %+v", i, r.Alerts[i], want)
		}
	}
	wantTargets := []sla.Target{
		{Name: "availability", Status: sla.Missed, Figure: "96.667 % (29 of 30 days fresh throughout)", Target: ">= 99.500 %"},
		{Name: "sync duration", Status: sla.Missed, Figure: "p99 40m00s, p50 3m00s over 30 runs", Target: "p99 < 30m00s", Note: "1 run over 30m00s"},
		{Name: "pairs ok per run", Status: sla.Missed, Figure: "min 2, mean 2.97, last 3/3", Target: "every pair ok in every run", Note: "1 of 30 runs had failed pairs"},
		{Name: "rate-limit hits", Status: sla.Met, Figure: "mean 0.006/h, max 3 in one hour, 4 hits", Target: "< 1/h", Note: "429s in 2 hours"},
		{Name: "backup age", Status: sla.Missed, Figure: "worst 30h00m (2026-10-19T02:00:00Z to 2026-10-20T08:00:00Z), 30 backups", Target: "< 26h00m", Note: "1 backup failed"},
		{Name: "RPO", Status: sla.Met, Figure: "worst 0s over 0 restores and 1 drill", Target: "< 2h00m"},
		{Name: "RTO", Status: sla.Met, Figure: "worst 45s over 0 restores and 1 drill", Target: "< 30m00s"},
	}
	if !slices.Equal(r.Targets, wantTargets) {
		t.Errorf("targets:\n%s", diffTargets(r.Targets, wantTargets))
	}

	// The same window as a table, from --since and the clock.
	clock.Set(slaTo)
	code, text, errOut := runSLAIn(t, clock, "--nats-url", url, "--since", "30d")
	if code != 1 {
		t.Fatalf("--since 30d: exit %d, want 1; stderr:\n%s", code, errOut)
	}
	for _, line := range []string{
		"SLA audit 2026-10-01T00:00:00Z .. 2026-10-31T00:00:00Z (30 days)",
		"availability      MISSED        96.667 % (29 of 30 days fresh throughout)",
		"RTO               MET           worst 45s over 0 restores and 1 drill",
		"2026-10-10  0.0 %    100.0 %  0.0 %    ETHUSDT/4h stale",
		"Backups: 30, last 2026-10-30T02:00:00Z; worst age 30h00m (2026-10-19T02:00:00Z .. 2026-10-20T08:00:00Z); 1 failed",
		"CandlekeepDiskSpaceLow    info      2026-10-30T12:00:00Z  still firing          12h00m",
	} {
		if !strings.Contains(squash(text), squash(line)) {
			t.Errorf("table lacks %q:\n%s", line, text)
		}
	}

	checkHTMLInChromium(t, html, len(r.Pairs)*len(r.Days))
}

// squash makes table columns one space apart, so a check does not depend
// on the widths of the other rows.
func squash(s string) string { return regexp.MustCompile(`[ \t]+`).ReplaceAllString(s, " ") }

func diffTargets(got, want []sla.Target) string {
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		var g, w sla.Target
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, " got %+v\nwant %+v\n", g, w)
		}
	}
	return b.String()
}

// checkHTMLInChromium opens the page in headless Chromium: the script ran
// to its end (title "rendered"), reported no error, and drew one heatmap
// cell per pair and day; a screenshot of it is a real image.
func checkHTMLInChromium(t *testing.T, page string, cells int) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs Debian's chromium package): the HTML page is not checked in a browser")
	}
	body, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?i)(src|href)=|https?://|@import|url\(`).Find(body); m != nil {
		t.Errorf("the page refers outside itself: %q", m)
	}
	run := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + t.TempDir(), "--window-size=1400,1600"}
		cmd := exec.CommandContext(ctx, chromium, append(base, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return out
	}
	dom := string(run("--dump-dom", "file://"+page))
	if !strings.Contains(dom, "<title>rendered</title>") {
		t.Errorf("document.title is not \"rendered\": the script did not finish\n%s", dom)
	}
	if m := regexp.MustCompile(`<div id="errors">([^<]*)</div>`).FindStringSubmatch(dom); m == nil || m[1] != "" {
		t.Errorf("#errors = %q, want present and empty", m)
	}
	if n := strings.Count(dom, `class="cell `); n != cells {
		t.Errorf("heatmap has %d cells, want %d (pairs × days)", n, cells)
	}
	for _, state := range []string{"fresh", "stale"} {
		if !strings.Contains(dom, `class="cell `+state+`"`) {
			t.Errorf("no %s cell in the heatmap", state)
		}
	}
	shot := filepath.Join(t.TempDir(), "sla.png")
	run("--screenshot="+shot, "file://"+page)
	fi, err := os.Stat(shot)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if fi.Size() < 20_000 {
		t.Errorf("screenshot is %d bytes: too small to show the page", fi.Size())
	}
}

// TestSLABadInput: bad flags are refused with exit 2 naming the flag; no
// server and a window before any history are "no answer" (2), not 100 %.
func TestSLABadInput(t *testing.T) {
	url, clock := slaServer(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad --since", []string{"--since", "30x"}, "--since \"30x\": want days or hours"},
		{"negative --since", []string{"--since", "-3d"}, "--since \"-3d\""},
		{"bad --from", []string{"--from", "yesterday"}, "--from \"yesterday\": want RFC 3339"},
		{"bad --to", []string{"--to", "2026-13-01"}, "--to \"2026-13-01\""},
		{"--since with --from", []string{"--since", "7d", "--from", "2026-10-01"}, "--since and --from: give one"},
		{"--to before --from", []string{"--from", "2026-10-05", "--to", "2026-10-01"}, "is not after --from"},
		{"no server", []string{"--nats-url", "nats://127.0.0.1:1"}, "candlekeep sla: connect to nats://127.0.0.1:1"},
		{"before any history", []string{"--nats-url", url, "--from", "2026-09-01", "--to", "2026-09-05"}, "nothing was recorded for 2026-09-01T00:00:00Z .. 2026-09-05T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runSLAIn(t, clock, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errOut, tt.want)
			}
			if strings.Contains(out, "100.000 %") {
				t.Errorf("a window without data reports 100 %%:\n%s", out)
			}
		})
	}
}

// TestSLABeforeHistory: a window that starts before the history says "no
// data before" its first record and counts that time against availability.
func TestSLABeforeHistory(t *testing.T) {
	url, clock := slaServer(t)
	code, out, errOut := runSLAIn(t, clock, "--nats-url", url, "--from", "2026-09-29", "--to", "2026-10-03")
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
	}
	for _, want := range []string{
		"availability      MISSED        50.521 % (2 of 4 days fresh throughout)",
		"no data before 2026-09-30T23:30:00Z (the first freshness.changed recorded)",
		"2026-09-29  0.0 %    0.0 %  100.0 %  BTCUSDT/4h nodata, ETHUSDT/4h nodata, SOLUSDT/4h nodata",
		"backup age        MISSED        worst 26h00m (2026-09-29T00:00:00Z to 2026-09-30T02:00:00Z), 3 backups  < 26h00m                    no backup before the window: its first gap counts from the start",
	} {
		if !strings.Contains(squash(out), squash(want)) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestSLAScheduleFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
		err  string
	}{
		{nil, "0 0 3 1 * *", ""},
		{[]string{"--sla-schedule", "@every 1s"}, "@every 1s", ""},
		{[]string{"--sla-schedule", "off"}, "off", ""},
		{[]string{"--sla-schedule", "3 1 *"}, "3 1 *", `--sla-schedule "3 1 *": 3 fields`},
	} {
		var f slaScheduleFlag
		fs := flagSet("monitor", "", "", &bytes.Buffer{})
		f.register(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		err := f.check()
		if f.value != tt.want || (tt.err == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), tt.err)) {
			t.Errorf("%q: value %q err %v; want %q err %q", tt.args, f.value, err, tt.want, tt.err)
		}
	}
}

// TestSLAShortRetentionNote: EVENTS keeping less than a month and a margin
// is said in the report.
func TestSLAShortRetentionNote(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{EventsMaxAge: 30 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	clock := testclock.New(slaFrom)
	ev := &candles.FreshnessChanged{EventHeader: candles.NewHeader(candles.KindFreshnessChanged, ""), Configured: slaPairs, Fresh: 3}
	if err := candles.PublishEvent(context.Background(), js, ev, "", clock.Now()); err != nil {
		t.Fatal(err)
	}
	_, out, errOut := runSLAIn(t, clock, "--nats-url", ns.ClientURL(), "--from", "2026-10-01", "--to", "2026-10-01T01:00:00Z")
	want := "EVENTS keeps events for 30 days only; a monthly audit needs at least 35 days (candlekeep config set events-max-age=960h0m0s)"
	if !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s\n%s", want, out, errOut)
	}
}

// TestSLAOfARunningSystem: the monitor inside `candlekeep up` records the
// freshness history and `candlekeep sla` audits it: the three pairs fresh
// since the sync, "no data" before the history started (never 100 %).
func TestSLAOfARunningSystem(t *testing.T) {
	if testing.Short() {
		t.Skip("runs candlekeep up with its monitor; runs without -short")
	}
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}, []string{"4h"}, 20
	natsURL, _ := startUpMonitored(t, t.TempDir(), fo, testMonitorSettings(t))
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"reason":"manual"}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	var fc candles.FreshnessChanged
	ev.waitMatch(t, candles.KindFreshnessChanged, time.Minute, &fc, func() bool { return fc.Fresh == 3 && len(fc.NotFresh) == 0 })

	code, out, errOut := runCmd(t, "sla", "--nats-url", natsURL, "--since", "1h", "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (availability has no data for most of the hour); stderr:\n%s", code, errOut)
	}
	var r sla.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := []string{"BTCUSDT/4h", "ETHUSDT/4h", "SOLUSDT/4h"}; !slices.Equal(r.Pairs, want) {
		t.Errorf("pairs %q, want %q", r.Pairs, want)
	}
	av := r.Targets[0]
	if r.HistoryStart.IsZero() || av.Name != sla.TargetAvailability || av.Status != sla.Missed ||
		av.Note != "no data before "+r.HistoryStart.Format(time.RFC3339) || r.Availability.Share >= 0.5 || r.Availability.FreshSeconds <= 0 {
		t.Errorf("history from %s, availability %+v %+v", r.HistoryStart, av, r.Availability)
	}
	if r.Sync.Runs != 1 || r.Sync.PairsOKLast != 3 {
		t.Errorf("sync figures %+v, want the one run with 3 pairs ok", r.Sync)
	}
}

// TestSLAAllMet: the month's first four days met every target (RPO and
// RTO not measured: no drill yet, neither met nor missed): exit 0.
func TestSLAAllMet(t *testing.T) {
	url, clock := slaServer(t)
	code, out, errOut := runSLAIn(t, clock, "--nats-url", url, "--from", "2026-10-01", "--to", "2026-10-05")
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr %s\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"availability MET 100.000 % (4 of 4 days fresh throughout) >= 99.500 % -",
		"sync duration MET p99 3m00s, p50 3m00s over 4 runs p99 < 30m00s -",
		"pairs ok per run MET min 3, mean 3.00, last 3/3 every pair ok in every run -",
		"backup age MET worst 24h00m (2026-09-30T02:00:00Z to 2026-10-01T02:00:00Z), 4 backups < 26h00m -",
		"RPO NOT MEASURED not measured: no restore or drill recorded < 2h00m -",
		"Alerts (0):",
	} {
		if !strings.Contains(squash(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
