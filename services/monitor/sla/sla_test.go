package sla

import (
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

var (
	t0    = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	btc   = candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	eth   = candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	pairs = []candles.Pair{btc, eth}
)

func head(kind string, at time.Time) candles.EventHeader {
	return candles.EventHeader{V: candles.Version, Kind: kind, Time: at}
}

// heartbeats are freshness.changed every hour over [from, to), all fresh.
func heartbeats(from, to time.Time) []candles.Event {
	var out []candles.Event
	for at := from; at.Before(to); at = at.Add(time.Hour) {
		out = append(out, freshness(at, nil))
	}
	return out
}

func freshness(at time.Time, notFresh map[candles.Pair]string) *candles.FreshnessChanged {
	e := &candles.FreshnessChanged{EventHeader: head(candles.KindFreshnessChanged, at), Configured: pairs, NotFresh: []candles.PairFreshness{}}
	for _, p := range pairs {
		if s, ok := notFresh[p]; ok {
			e.NotFresh = append(e.NotFresh, candles.PairFreshness{Symbol: p.Symbol, Interval: p.Interval, State: s})
		}
	}
	e.Fresh = len(pairs) - len(e.NotFresh)
	return e
}

func target(t *testing.T, r Report, name string) Target {
	t.Helper()
	for _, tg := range r.Targets {
		if tg.Name == name {
			return tg
		}
	}
	t.Fatalf("no target %q in %+v", name, r.Targets)
	return Target{}
}

func TestComputeFreshness(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		name       string
		events     []candles.Event
		from, to   time.Time
		share      float64
		fresh      float64 // seconds
		stale      float64
		nodata     float64
		freshDays  int
		days       []Day
		status     Status
		figure     string
		note       string
		reportNote string
		noData     bool
	}{{
		name: "nothing recorded", from: t0, to: t0.Add(2 * day),
		share: 0, nodata: (2 * day).Seconds(), noData: true,
		days: []Day{
			{Date: "2026-11-01", NoData: 1, Pairs: []string{}},
			{Date: "2026-11-02", NoData: 1, Pairs: []string{}},
		},
		status: Missed, figure: "no data", note: "no freshness history recorded",
		reportNote: "no data: no freshness history (freshness.changed) recorded; is the monitor running?",
	}, {
		name:   "history starts in the window: never 100 %",
		events: heartbeats(t0.Add(12*time.Hour), t0.Add(2*day)),
		from:   t0, to: t0.Add(2 * day),
		share: 36.0 / 48, fresh: (36 * time.Hour).Seconds(), nodata: (12 * time.Hour).Seconds(), freshDays: 1,
		days: []Day{
			{Date: "2026-11-01", Fresh: 0.5, NoData: 0.5, Pairs: []string{CellNoData, CellNoData}},
			{Date: "2026-11-02", Fresh: 1, Pairs: []string{CellFresh, CellFresh}},
		},
		status: Missed, figure: "75.000 % (1 of 2 days fresh throughout)", note: "no data before 2026-11-01T12:00:00Z",
		reportNote: "no data before 2026-11-01T12:00:00Z (the first freshness.changed recorded)",
	}, {
		name: "a stale pair for six hours, the state at the start from before the window",
		events: append(append(heartbeats(t0.Add(-30*time.Minute), t0.Add(6*time.Hour)),
			freshness(t0.Add(6*time.Hour), map[candles.Pair]string{eth: candles.FreshnessStale}),
			freshness(t0.Add(7*time.Hour), map[candles.Pair]string{eth: candles.FreshnessStale})),
			heartbeats(t0.Add(12*time.Hour), t0.Add(day))...),
		from: t0, to: t0.Add(day),
		// 6h..12h: stale (the last stale event holds 1h10m, then nobody
		// recorded until 12h: 8h10m..12h no data).
		share: 18.0 / 24, fresh: (18 * time.Hour).Seconds(), stale: (2*time.Hour + 10*time.Minute).Seconds(),
		nodata: (3*time.Hour + 50*time.Minute).Seconds(),
		days: []Day{{Date: "2026-11-01", Fresh: 18.0 / 24, Stale: (130.0 / 60) / 24, NoData: (230.0 / 60) / 24,
			Pairs: []string{CellNoData, CellStale}}},
		status: Missed, figure: "75.000 % (0 of 1 days fresh throughout)", note: "no data for 3h50m (monitor not running)",
	}, {
		name:   "fresh throughout, a pair with no data counts against",
		events: []candles.Event{freshness(t0.Add(-time.Hour), nil), freshness(t0, map[candles.Pair]string{btc: candles.FreshnessNoData})},
		from:   t0, to: t0.Add(time.Hour),
		share: 0, stale: 3600,
		days:   []Day{{Date: "2026-11-01", Stale: 1, Pairs: []string{CellNoData, CellFresh}}},
		status: Missed, figure: "0.000 % (0 of 1 days fresh throughout)",
	}, {
		name:   "met",
		events: heartbeats(t0.Add(-time.Hour), t0.Add(3*time.Hour)),
		from:   t0, to: t0.Add(3 * time.Hour),
		share: 1, fresh: 3 * 3600, freshDays: 1,
		days:   []Day{{Date: "2026-11-01", Fresh: 1, Pairs: []string{CellFresh, CellFresh}}},
		status: Met, figure: "100.000 % (1 of 1 days fresh throughout)",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Compute(tt.events, tt.from, tt.to, DefaultTargets())
			a := r.Availability
			if a.Share != tt.share || a.FreshSeconds != tt.fresh || a.StaleSeconds != tt.stale || a.NoDataSeconds != tt.nodata || a.FreshDays != tt.freshDays {
				t.Errorf("availability = %+v, want share %v fresh %v stale %v nodata %v fresh days %d", a, tt.share, tt.fresh, tt.stale, tt.nodata, tt.freshDays)
			}
			if len(r.Days) != len(tt.days) {
				t.Fatalf("days = %+v, want %+v", r.Days, tt.days)
			}
			for i, d := range r.Days {
				w := tt.days[i]
				if d.Date != w.Date || !near(d.Fresh, w.Fresh) || !near(d.Stale, w.Stale) || !near(d.NoData, w.NoData) || strings.Join(d.Pairs, ",") != strings.Join(w.Pairs, ",") {
					t.Errorf("day %d = %+v, want %+v", i, d, w)
				}
			}
			av := target(t, r, TargetAvailability)
			if av.Status != tt.status || av.Figure != tt.figure || av.Note != tt.note || av.Target != ">= 99.500 %" {
				t.Errorf("availability target = %+v, want %s %q note %q", av, tt.status, tt.figure, tt.note)
			}
			if got := strings.Join(r.Notes, "|"); got != tt.reportNote {
				t.Errorf("notes = %q, want %q", got, tt.reportNote)
			}
			if r.NoData != tt.noData {
				t.Errorf("NoData = %v, want %v", r.NoData, tt.noData)
			}
		})
	}
}

// near compares shares computed from durations with the test's fractions
// (one rounding apart at most).
func near(a, b float64) bool { d := a - b; return d < 1e-12 && d > -1e-12 }

func TestComputeFigures(t *testing.T) {
	from, to := t0, t0.Add(10*time.Hour)
	run := func(at time.Time, d time.Duration, ok, total int) candles.Event {
		return &candles.SyncCompleted{EventHeader: head(candles.KindSyncCompleted, at), StartedAt: at.Add(-d), FinishedAt: at, PairsOK: ok, PairsTotal: total}
	}
	backup := func(at time.Time, tier string) candles.Event {
		return &candles.BackupCompleted{EventHeader: head(candles.KindBackupCompleted, at.Add(time.Minute)), Tier: tier, TakenAt: at, Verified: true}
	}
	hit := func(at time.Time) candles.Event {
		return &candles.RateLimitHit{EventHeader: head(candles.KindRateLimitHit, at)}
	}
	alert := func(kind, name string, since, resolved, at time.Time) candles.Event {
		return &candles.AlertEvent{EventHeader: head(kind, at), Alert: name, Severity: "warning", Summary: name + " summary", FiringSince: since, ResolvedAt: resolved}
	}
	rec := func(kind string, at time.Time, rto, rpo time.Duration, ok bool) candles.Event {
		m := candles.Recovery{StartedAt: at.Add(-rto), FinishedAt: at, RTOSeconds: rto.Seconds(), RPOSeconds: rpo.Seconds()}
		if kind == candles.KindRestoreCompleted {
			return &candles.RestoreCompleted{EventHeader: head(kind, at), Recovery: m}
		}
		return &candles.DrillCompleted{EventHeader: head(kind, at), Recovery: m, OK: ok}
	}
	h := func(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Hour))) }

	tests := []struct {
		name    string
		events  []candles.Event
		check   func(t *testing.T, r Report)
		targets map[string]Target
	}{{
		name:   "nothing but freshness",
		events: heartbeats(from, to),
		targets: map[string]Target{
			TargetSyncDuration: {Name: TargetSyncDuration, Status: Missed, Figure: "no sync completed", Target: "p99 < 30m00s"},
			TargetPairsOK:      {Name: TargetPairsOK, Status: Missed, Figure: "no sync completed", Target: "every pair ok in every run"},
			TargetRateLimit:    {Name: TargetRateLimit, Status: Met, Figure: "mean 0.000/h, max 0 in one hour, 0 hits", Target: "< 1/h"},
			TargetBackupAge:    {Name: TargetBackupAge, Status: Missed, Figure: "no backups recorded", Target: "< 26h00m"},
			TargetRPO:          {Name: TargetRPO, Status: NotMeasured, Figure: "not measured: no restore or drill recorded", Target: "< 2h00m"},
			TargetRTO:          {Name: TargetRTO, Status: NotMeasured, Figure: "not measured: no restore or drill recorded", Target: "< 30m00s"},
		},
	}, {
		name: "runs, 429s, backups, recoveries and alerts",
		events: append(heartbeats(from, to),
			run(h(-1), time.Hour, 1, 2), // before the window: not counted
			run(h(1), 2*time.Minute, 2, 2), run(h(2), 3*time.Minute, 1, 2), run(h(3), 40*time.Minute, 2, 2), run(h(4), time.Minute, 2, 2),
			&candles.SyncTimeout{EventHeader: head(candles.KindSyncTimeout, h(5))},
			hit(h(1.1)), hit(h(1.2)), hit(h(1.9)), hit(h(7.5)), hit(h(10)), // the last one after the window
			&candles.RateLimitBanned{EventHeader: head(candles.KindRateLimitBanned, h(7.6))},
			backup(h(-20), "hot"), backup(h(2), "hot"), backup(h(2), "warm"), backup(h(4), "hot"),
			&candles.BackupFailed{EventHeader: head(candles.KindBackupFailed, h(6))},
			rec(candles.KindRestoreCompleted, h(3), 90*time.Second, 0, true),
			rec(candles.KindDrillCompleted, h(5), 40*time.Second, 3*time.Hour, true),
			rec(candles.KindDrillCompleted, h(6), time.Hour, 5*time.Hour, false), // failed: counts as failed only
			alert(candles.KindAlertFiring, "CandlekeepBackupStale", h(-2), time.Time{}, h(-2)),
			alert(candles.KindAlertResolved, "CandlekeepBackupStale", h(-2), h(2), h(2)),
			alert(candles.KindAlertFiring, "CandlekeepSyncSlow", h(3), time.Time{}, h(3)),
			alert(candles.KindAlertResolved, "CandlekeepSyncSlow", h(3), h(3.5), h(3.5)),
			alert(candles.KindAlertFiring, "CandlekeepRateLimitAbuse", h(7.5), time.Time{}, h(7.5)),
			alert(candles.KindAlertFiring, "CandlekeepDataStale", h(-5), time.Time{}, h(-5)), // resolved before the window
			alert(candles.KindAlertResolved, "CandlekeepDataStale", h(-5), h(-4), h(-4)),
		),
		check: func(t *testing.T, r Report) {
			wantSync := Sync{Runs: 4, Timeouts: 1, P50Seconds: 120, P99Seconds: 2400, MaxSeconds: 2400, Slow: 1,
				PairsOKMin: 1, PairsOKMean: 1.75, PairsOKLast: 2, PairsTotalLast: 2, RunsAllOK: 3}
			if r.Sync != wantSync {
				t.Errorf("sync = %+v, want %+v", r.Sync, wantSync)
			}
			if want := (RateLimit{Hits: 4, Bans: 1, MaxPerHour: 3, MeanPerHour: 0.4, HoursWithHits: 2}); r.RateLimit != want {
				t.Errorf("rate limit = %+v, want %+v", r.RateLimit, want)
			}
			if want := (Backups{Count: 2, Last: h(4), WorstAgeSeconds: 22 * 3600, WorstFrom: h(-20), WorstTo: h(2), Failed: 1}); r.Backups != want {
				t.Errorf("backups = %+v, want %+v", r.Backups, want)
			}
			if want := (Recovery{Restores: 1, Drills: 2, DrillsFailed: 1, RTOSeconds: 90, RPOSeconds: 3 * 3600}); r.Recovery != want {
				t.Errorf("recovery = %+v, want %+v", r.Recovery, want)
			}
			want := []Alert{
				{Alert: "CandlekeepBackupStale", Severity: "warning", Summary: "CandlekeepBackupStale summary", Start: h(-2), End: h(2), DurationSeconds: 4 * 3600},
				{Alert: "CandlekeepSyncSlow", Severity: "warning", Summary: "CandlekeepSyncSlow summary", Start: h(3), End: h(3.5), DurationSeconds: 1800},
				{Alert: "CandlekeepRateLimitAbuse", Severity: "warning", Summary: "CandlekeepRateLimitAbuse summary", Start: h(7.5), StillFiring: true, DurationSeconds: 2.5 * 3600},
			}
			if len(r.Alerts) != len(want) {
				t.Fatalf("alerts = %+v, want %+v", r.Alerts, want)
			}
			for i := range want {
				if r.Alerts[i] != want[i] {
					t.Errorf("alert %d = %+v, want %+v", i, r.Alerts[i], want[i])
				}
			}
		},
		targets: map[string]Target{
			TargetSyncDuration: {Name: TargetSyncDuration, Status: Missed, Figure: "p99 40m00s, p50 2m00s over 4 runs", Target: "p99 < 30m00s", Note: "1 run timed out"},
			TargetPairsOK:      {Name: TargetPairsOK, Status: Missed, Figure: "min 1, mean 1.75, last 2/2", Target: "every pair ok in every run", Note: "1 of 4 runs had failed pairs"},
			TargetRateLimit:    {Name: TargetRateLimit, Status: Met, Figure: "mean 0.400/h, max 3 in one hour, 4 hits", Target: "< 1/h", Note: "429s in 2 hours; 1 ban (418)"},
			TargetBackupAge: {Name: TargetBackupAge, Status: Met, Target: "< 26h00m", Note: "1 backup failed",
				Figure: "worst 22h00m (2026-10-31T04:00:00Z to 2026-11-01T02:00:00Z), 2 backups"},
			TargetRPO: {Name: TargetRPO, Status: Missed, Figure: "1 drill failed", Target: "< 2h00m", Note: "worst measured 3h00m"},
			TargetRTO: {Name: TargetRTO, Status: Missed, Figure: "1 drill failed", Target: "< 30m00s", Note: "worst measured 1m30s"},
		},
	}, {
		name: "backups only before the window, recoveries within target",
		events: append(heartbeats(from, to), backup(h(-20), "hot"),
			rec(candles.KindDrillCompleted, h(5), 40*time.Second, 0, true)),
		targets: map[string]Target{
			TargetBackupAge: {Name: TargetBackupAge, Status: Missed, Target: "< 26h00m",
				Figure: "worst 30h00m (2026-10-31T04:00:00Z to 2026-11-01T10:00:00Z), 0 backups"},
			TargetRPO: {Name: TargetRPO, Status: Met, Figure: "worst 0s over 0 restores and 1 drill", Target: "< 2h00m"},
			TargetRTO: {Name: TargetRTO, Status: Met, Figure: "worst 40s over 0 restores and 1 drill", Target: "< 30m00s"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Compute(tt.events, from, to, DefaultTargets())
			if tt.check != nil {
				tt.check(t, r)
			}
			for name, want := range tt.targets {
				if got := target(t, r, name); got != want {
					t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
				}
			}
			if !r.Missed() {
				t.Error("Missed() = false; every case misses a target")
			}
		})
	}
}

func TestTargetsValidate(t *testing.T) {
	if err := DefaultTargets().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := DefaultTargets()
	bad.Availability, bad.RTO = 1.5, 0
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "availability target 1.5") || !strings.Contains(err.Error(), "RTO target 0s") {
		t.Fatalf("Validate() = %v, want errors naming availability and RTO", err)
	}
}

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 12 * time.Second: "12s", 40 * time.Minute: "40m00s", 30 * time.Hour: "30h00m",
		26*time.Hour + 5*time.Minute + 40*time.Second: "26h05m", 90 * time.Second: "1m30s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %q, want %q", d, got, want)
		}
	}
}
