// Package sla is the monthly SLA audit: from what EVENTS recorded over a
// window (the monitor's freshness history, sync runs, 429s, backups,
// restores and drills, alerts) it computes the figures the old setup's
// validation plan held candlekeep to and says for each target whether it
// was met. Compute is pure; Read loads a window's events from EVENTS;
// WriteText, WriteHTML and Summary show a Report. `candlekeep sla` and the
// monitor's scheduled sla.report use it.
package sla

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Default targets: the old setup's SLA.
const (
	DefaultAvailability     = 0.995
	DefaultSyncDuration     = 30 * time.Minute
	DefaultRateLimitPerHour = 1.0
	DefaultBackupAge        = 26 * time.Hour
	DefaultRPO              = 2 * time.Hour
	DefaultRTO              = 30 * time.Minute
)

// Targets are what the audit holds the window's figures to.
type Targets struct {
	// Availability is the least share of the window in which every
	// configured pair was fresh.
	Availability float64 `json:"availability"`
	// SyncDuration bounds the p99 of the runs' durations.
	SyncDuration time.Duration `json:"sync_duration"`
	// RateLimitPerHour bounds the mean number of 429s per hour.
	RateLimitPerHour float64 `json:"ratelimit_per_hour"`
	// BackupAge bounds the age of the newest backup at every moment.
	BackupAge time.Duration `json:"backup_age"`
	// RPO and RTO bound the worst recovery a restore or drill measured.
	RPO time.Duration `json:"rpo"`
	RTO time.Duration `json:"rto"`
}

// DefaultTargets returns the old setup's targets.
func DefaultTargets() Targets {
	return Targets{
		Availability:     DefaultAvailability,
		SyncDuration:     DefaultSyncDuration,
		RateLimitPerHour: DefaultRateLimitPerHour,
		BackupAge:        DefaultBackupAge,
		RPO:              DefaultRPO,
		RTO:              DefaultRTO,
	}
}

// Validate checks that every target is usable.
func (t Targets) Validate() error {
	var errs []error
	if t.Availability <= 0 || t.Availability > 1 {
		errs = append(errs, fmt.Errorf("availability target %v: want a share in (0, 1], such as 0.995", t.Availability))
	}
	for name, d := range map[string]time.Duration{"sync duration": t.SyncDuration, "backup age": t.BackupAge, "RPO": t.RPO, "RTO": t.RTO} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s target %v: want a positive duration", name, d))
		}
	}
	if t.RateLimitPerHour <= 0 {
		errs = append(errs, fmt.Errorf("rate-limit target %v: want a positive rate per hour", t.RateLimitPerHour))
	}
	return errors.Join(errs...)
}

// Status is a target's verdict.
type Status string

// Verdicts. NotMeasured is neither met nor missed: nothing in the window
// measured it (no restore or drill for RPO and RTO).
const (
	Met         Status = "met"
	Missed      Status = "missed"
	NotMeasured Status = "not measured"
)

// Target names, in the order a report lists them.
const (
	TargetAvailability = "availability"
	TargetSyncDuration = "sync duration"
	TargetPairsOK      = "pairs ok per run"
	TargetRateLimit    = "rate-limit hits"
	TargetBackupAge    = "backup age"
	TargetRPO          = "RPO"
	TargetRTO          = "RTO"
)

// Target is one target's verdict with the figure it was judged on.
type Target struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Figure string `json:"figure"`
	Target string `json:"target"`
	Note   string `json:"note,omitempty"`
}

// Cell states of the per-day heatmap, from best to worst. NoData is a
// time nobody recorded (the monitor was not running, or before history)
// or a pair with nothing stored.
const (
	CellFresh  = "fresh"
	CellNoData = "nodata"
	CellStale  = "stale"
)

// Report is the audit of one window.
type Report struct {
	V    int       `json:"v"`
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// NoData is set when nothing at all was recorded for the window: no
	// freshness history covers any of it and no event falls in it.
	NoData bool `json:"no_data"`
	// HistoryStart is the first freshness.changed the audit saw.
	HistoryStart time.Time    `json:"history_start,omitzero"`
	Notes        []string     `json:"notes,omitempty"`
	Targets      []Target     `json:"targets"`
	Availability Availability `json:"availability"`
	// Pairs are the heatmap's rows (every pair configured at some time of
	// the window), Days its columns.
	Pairs     []string  `json:"pairs"`
	Days      []Day     `json:"days"`
	Sync      Sync      `json:"sync"`
	RateLimit RateLimit `json:"ratelimit"`
	Backups   Backups   `json:"backups"`
	Recovery  Recovery  `json:"recovery"`
	Alerts    []Alert   `json:"alerts"`
}

// Availability is how much of the window every configured pair was fresh.
type Availability struct {
	// Share is FreshSeconds over the window's length: time nobody
	// recorded counts against it.
	Share         float64 `json:"share"`
	FreshSeconds  float64 `json:"fresh_seconds"`
	StaleSeconds  float64 `json:"stale_seconds"`
	NoDataSeconds float64 `json:"nodata_seconds"`
	// FreshDays counts the days (UTC) fresh throughout, of Days.
	FreshDays int `json:"fresh_days"`
	Days      int `json:"days"`
}

// Day is one UTC day of the window (the first and last may be partial).
type Day struct {
	Date string `json:"date"` // 2006-01-02
	// Fresh, Stale and NoData share the day's time in the window.
	Fresh  float64 `json:"fresh"`
	Stale  float64 `json:"stale"`
	NoData float64 `json:"nodata"`
	// Pairs is each pair's worst state that day, in Report.Pairs order.
	Pairs []string `json:"pairs"`
}

// Sync is the runs that finished in the window.
type Sync struct {
	Runs       int     `json:"runs"`
	Timeouts   int     `json:"timeouts"`
	P50Seconds float64 `json:"p50_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
	MaxSeconds float64 `json:"max_seconds"`
	// Slow counts runs longer than the target.
	Slow int `json:"slow"`
	// PairsOK of the runs: the least, the mean and the last run's (of
	// PairsTotalLast); RunsAllOK counts runs with every pair ok.
	PairsOKMin     int     `json:"pairs_ok_min"`
	PairsOKMean    float64 `json:"pairs_ok_mean"`
	PairsOKLast    int     `json:"pairs_ok_last"`
	PairsTotalLast int     `json:"pairs_total_last"`
	RunsAllOK      int     `json:"runs_all_ok"`
}

// RateLimit is the exchange's 429s (and 418 bans) in the window.
type RateLimit struct {
	Hits int `json:"hits"`
	Bans int `json:"bans"`
	// MaxPerHour is the most hits in one clock hour (UTC); MeanPerHour the
	// hits over the window's hours; HoursWithHits the hours with any.
	MaxPerHour    int     `json:"max_per_hour"`
	MeanPerHour   float64 `json:"mean_per_hour"`
	HoursWithHits int     `json:"hours_with_hits"`
}

// Backups is the verified backups of the window.
type Backups struct {
	// Count is the distinct backup times in the window (a backup copied to
	// three tiers counts once).
	Count int       `json:"count"`
	Last  time.Time `json:"last,omitzero"`
	// WorstAgeSeconds is the oldest the newest backup got in the window:
	// the longest gap between backups, from WorstFrom (a backup, or the
	// window's start when none was seen before it) to WorstTo.
	WorstAgeSeconds float64   `json:"worst_age_seconds"`
	WorstFrom       time.Time `json:"worst_from,omitzero"`
	WorstTo         time.Time `json:"worst_to,omitzero"`
	// NoneBefore: no backup was recorded before the window, so the first
	// gap counts from the window's start (the age was at least that).
	NoneBefore bool `json:"none_before,omitempty"`
	// Failed counts backup.failed events.
	Failed int `json:"failed"`
}

// Recovery is what the window's restores and drills measured.
type Recovery struct {
	Restores     int `json:"restores"`
	Drills       int `json:"drills"`
	DrillsFailed int `json:"drills_failed"`
	// RTOSeconds and RPOSeconds are the worst measured.
	RTOSeconds float64 `json:"rto_seconds"`
	RPOSeconds float64 `json:"rpo_seconds"`
}

// Alert is one alert group's time firing.
type Alert struct {
	Alert    string    `json:"alert"`
	Severity string    `json:"severity"`
	Summary  string    `json:"summary"`
	Start    time.Time `json:"start"`
	// End is zero while it still fires at the window's end.
	End             time.Time `json:"end,omitzero"`
	StillFiring     bool      `json:"still_firing"`
	DurationSeconds float64   `json:"duration_seconds"`
}

// Context is how long before the window's start Read loads events: the
// freshness state at the start, the backup before it and alerts that were
// already firing.
const Context = 3 * 24 * time.Hour

// Compute audits [from, to) from events (which may include events before
// from, read as context: the freshness state and the newest backup at the
// window's start, alerts already firing). It is pure: the same events give
// the same report.
func Compute(events []candles.Event, from, to time.Time, t Targets) Report {
	from, to = from.UTC(), to.UTC()
	r := Report{V: candles.Version, From: from, To: to, Pairs: []string{}, Days: []Day{}, Alerts: []Alert{}}
	if !to.After(from) {
		r.NoData = true
		r.Notes = append(r.Notes, "empty window: --to is not after --from")
		return r
	}
	in := func(tm time.Time) bool { return !tm.Before(from) && tm.Before(to) }

	var (
		fresh      []*candles.FreshnessChanged
		durations  []time.Duration
		backups    []time.Time
		hitsByHour = map[time.Time]int{}
		alerts     = map[string]*Alert{}
		inWindow   int
	)
	for _, ev := range events {
		h := ev.Head()
		if !h.Time.Before(to) {
			continue // after the window: the audit sees the window as it ended
		}
		if in(h.Time) {
			inWindow++
		}
		switch e := ev.(type) {
		case *candles.FreshnessChanged:
			fresh = append(fresh, e)
		case *candles.SyncCompleted:
			end := e.FinishedAt
			if end.IsZero() {
				end = h.Time
			}
			if !in(end) {
				continue
			}
			r.Sync.Runs++
			d := end.Sub(e.StartedAt)
			durations = append(durations, d)
			if d > t.SyncDuration {
				r.Sync.Slow++
			}
			if r.Sync.Runs == 1 || e.PairsOK < r.Sync.PairsOKMin {
				r.Sync.PairsOKMin = e.PairsOK
			}
			r.Sync.PairsOKMean += float64(e.PairsOK)
			r.Sync.PairsOKLast, r.Sync.PairsTotalLast = e.PairsOK, e.PairsTotal
			if e.PairsOK == e.PairsTotal {
				r.Sync.RunsAllOK++
			}
		case *candles.SyncTimeout:
			if in(h.Time) {
				r.Sync.Timeouts++
			}
		case *candles.RateLimitHit:
			if in(h.Time) {
				r.RateLimit.Hits++
				hitsByHour[h.Time.UTC().Truncate(time.Hour)]++
			}
		case *candles.RateLimitBanned:
			if in(h.Time) {
				r.RateLimit.Bans++
			}
		case *candles.BackupCompleted:
			at := e.TakenAt
			if at.IsZero() {
				at = h.Time
			}
			if at.Before(to) {
				backups = append(backups, at.UTC())
			}
		case *candles.BackupFailed:
			if in(h.Time) {
				r.Backups.Failed++
			}
		case *candles.RestoreCompleted:
			if in(h.Time) {
				r.Recovery.Restores++
				r.Recovery.observe(e.Recovery)
			}
		case *candles.DrillCompleted:
			if in(h.Time) {
				r.Recovery.Drills++
				if !e.OK {
					r.Recovery.DrillsFailed++
					continue
				}
				r.Recovery.observe(e.Recovery)
			}
		case *candles.AlertEvent:
			start := e.FiringSince
			if start.IsZero() {
				start = h.Time
			}
			key := e.Alert + "@" + start.UTC().Format(time.RFC3339Nano)
			a := alerts[key]
			if a == nil {
				a = &Alert{Alert: e.Alert, Severity: e.Severity, Summary: e.Summary, Start: start.UTC()}
				alerts[key] = a
			}
			if h.Kind == candles.KindAlertResolved {
				end := e.ResolvedAt
				if end.IsZero() {
					end = h.Time
				}
				a.End = end.UTC()
			} else if e.Summary != "" {
				a.Summary = e.Summary
			}
		}
	}

	r.computeFreshness(fresh)
	r.computeSync(durations)
	r.computeRateLimit(hitsByHour)
	r.computeBackups(backups)
	r.computeAlerts(alerts)
	r.NoData = inWindow == 0 && r.Availability.NoDataSeconds == to.Sub(from).Seconds()
	r.Targets = r.targets(t)
	return r
}

func (rc *Recovery) observe(m candles.Recovery) {
	rc.RTOSeconds = max(rc.RTOSeconds, m.RTOSeconds)
	rc.RPOSeconds = max(rc.RPOSeconds, m.RPOSeconds)
}

// segment is a time the monitor's last freshness.changed describes.
type segment struct {
	from, to time.Time
	ev       *candles.FreshnessChanged
}

func (s segment) allFresh() bool {
	return len(s.ev.NotFresh) == 0 && (len(s.ev.Configured) > 0 || s.ev.Fresh > 0)
}

// computeFreshness lays the freshness history over the window: each event
// holds until the next one, but no longer than a heartbeat and its slack
// (after that nobody was watching: no data).
func (r *Report) computeFreshness(evs []*candles.FreshnessChanged) {
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	validity := candles.FreshnessHeartbeat + candles.FreshnessSlack
	var segs []segment
	pairSet := map[string]bool{}
	for i, e := range evs {
		start, end := e.Time.UTC(), e.Time.UTC().Add(validity)
		if i+1 < len(evs) && evs[i+1].Time.Before(end) {
			end = evs[i+1].Time.UTC()
		}
		if i == 0 {
			r.HistoryStart = start
		}
		start, end = maxTime(start, r.From), minTime(end, r.To)
		if !end.After(start) {
			continue
		}
		segs = append(segs, segment{start, end, e})
		for _, p := range e.Configured {
			pairSet[p.String()] = true
		}
	}
	r.Pairs = slices.Sorted(maps.Keys(pairSet))
	index := map[string]int{}
	for i, p := range r.Pairs {
		index[p] = i
	}
	switch {
	case len(evs) == 0:
		r.Notes = append(r.Notes, "no data: no freshness history (freshness.changed) recorded; is the monitor running?")
	case r.HistoryStart.After(r.From):
		r.Notes = append(r.Notes, "no data before "+r.HistoryStart.Format(time.RFC3339)+" (the first freshness.changed recorded)")
	}

	var fresh, stale time.Duration
	for dayStart := r.From.Truncate(24 * time.Hour); dayStart.Before(r.To); dayStart = dayStart.Add(24 * time.Hour) {
		lo, hi := maxTime(dayStart, r.From), minTime(dayStart.Add(24*time.Hour), r.To)
		day := Day{Date: dayStart.Format("2006-01-02"), Pairs: make([]string, len(r.Pairs))}
		rank := make([]int, len(r.Pairs))
		for i := range rank {
			rank[i] = -1
		}
		var dFresh, dStale time.Duration
		for _, s := range segs {
			a, b := maxTime(s.from, lo), minTime(s.to, hi)
			if !b.After(a) {
				continue
			}
			if s.allFresh() {
				dFresh += b.Sub(a)
			} else {
				dStale += b.Sub(a)
			}
			notFresh := map[string]string{}
			for _, p := range s.ev.NotFresh {
				notFresh[candles.Pair{Symbol: p.Symbol, Interval: p.Interval}.String()] = p.State
			}
			for _, p := range s.ev.Configured {
				i := index[p.String()]
				state := CellFresh
				switch notFresh[p.String()] {
				case candles.FreshnessStale:
					state = CellStale
				case candles.FreshnessNoData:
					state = CellNoData
				}
				rank[i] = max(rank[i], cellRank(state))
			}
		}
		span := hi.Sub(lo)
		unknown := span - dFresh - dStale
		for i := range rank {
			if unknown > 0 || rank[i] < 0 {
				rank[i] = max(rank[i], cellRank(CellNoData))
			}
			day.Pairs[i] = cellStates[rank[i]]
		}
		day.Fresh = dFresh.Seconds() / span.Seconds()
		day.Stale = dStale.Seconds() / span.Seconds()
		day.NoData = unknown.Seconds() / span.Seconds()
		if dFresh == span {
			r.Availability.FreshDays++
		}
		fresh, stale = fresh+dFresh, stale+dStale
		r.Days = append(r.Days, day)
	}
	window := r.To.Sub(r.From)
	r.Availability.Days = len(r.Days)
	r.Availability.FreshSeconds = fresh.Seconds()
	r.Availability.StaleSeconds = stale.Seconds()
	r.Availability.NoDataSeconds = (window - fresh - stale).Seconds()
	r.Availability.Share = float64(fresh) / float64(window)
}

var cellStates = []string{CellFresh, CellNoData, CellStale}

func cellRank(s string) int { return slices.Index(cellStates, s) }

// computeSync takes nearest-rank percentiles: p99 of 30 runs is the
// slowest run, as an operator reading "p99" of a month expects.
func (r *Report) computeSync(ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return ds[max(i, 0)]
	}
	r.Sync.P50Seconds = rank(0.50).Seconds()
	r.Sync.P99Seconds = rank(0.99).Seconds()
	r.Sync.MaxSeconds = ds[len(ds)-1].Seconds()
	r.Sync.PairsOKMean /= float64(r.Sync.Runs)
}

func (r *Report) computeRateLimit(byHour map[time.Time]int) {
	for _, n := range byHour {
		r.RateLimit.MaxPerHour = max(r.RateLimit.MaxPerHour, n)
	}
	r.RateLimit.HoursWithHits = len(byHour)
	r.RateLimit.MeanPerHour = float64(r.RateLimit.Hits) / r.To.Sub(r.From).Hours()
}

// computeBackups finds the oldest the newest backup got in the window: the
// gap before each backup of the window and from the last one to the end.
// Without a backup before the window, the first gap counts from the
// window's start (the age was at least that).
func (r *Report) computeBackups(times []time.Time) {
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	times = slices.CompactFunc(times, func(a, b time.Time) bool { return a.Equal(b) })
	var prev time.Time
	worst := func(from, to time.Time) {
		if age := to.Sub(from).Seconds(); age > r.Backups.WorstAgeSeconds || r.Backups.WorstTo.IsZero() {
			r.Backups.WorstAgeSeconds, r.Backups.WorstFrom, r.Backups.WorstTo = age, from, to
		}
	}
	for _, b := range times {
		if b.Before(r.From) {
			prev = b
			continue
		}
		r.Backups.Count++
		r.Backups.Last = b
		if prev.IsZero() {
			r.Backups.NoneBefore = true
			worst(r.From, b)
		} else {
			worst(prev, b)
		}
		prev = b
	}
	if !prev.IsZero() {
		worst(prev, r.To)
	}
}

func (r *Report) computeAlerts(alerts map[string]*Alert) {
	for _, a := range alerts {
		end := a.End
		if end.IsZero() || !end.Before(r.To) {
			// Still firing when the window ended.
			a.StillFiring, a.End, end = true, time.Time{}, r.To
		}
		if !end.After(r.From) || !a.Start.Before(r.To) {
			continue // not firing in the window
		}
		a.DurationSeconds = end.Sub(a.Start).Seconds()
		r.Alerts = append(r.Alerts, *a)
	}
	slices.SortFunc(r.Alerts, func(a, b Alert) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.Alert, b.Alert)
	})
}

// targets judges each figure against its target.
func (r *Report) targets(t Targets) []Target {
	var out []Target
	verdict := func(ok bool) Status {
		if ok {
			return Met
		}
		return Missed
	}

	av := Target{Name: TargetAvailability, Target: ">= " + Percent(t.Availability),
		Figure: Percent(r.Availability.Share) + fmt.Sprintf(" (%d of %d days fresh throughout)", r.Availability.FreshDays, r.Availability.Days),
		Status: verdict(r.Availability.Share >= t.Availability)}
	switch {
	case r.HistoryStart.IsZero():
		av.Figure, av.Status, av.Note = "no data", Missed, "no freshness history recorded"
	case r.HistoryStart.After(r.From):
		av.Note = "no data before " + r.HistoryStart.Format(time.RFC3339)
	case r.Availability.NoDataSeconds > 0:
		av.Note = "no data for " + Duration(time.Duration(r.Availability.NoDataSeconds*float64(time.Second))) + " (monitor not running)"
	}
	out = append(out, av)

	sd := Target{Name: TargetSyncDuration, Target: "p99 < " + Duration(t.SyncDuration)}
	if r.Sync.Runs == 0 {
		sd.Figure, sd.Status = "no sync completed", Missed
	} else {
		sd.Figure = fmt.Sprintf("p99 %s, p50 %s over %d runs", Duration(secs(r.Sync.P99Seconds)), Duration(secs(r.Sync.P50Seconds)), r.Sync.Runs)
		sd.Status = verdict(secs(r.Sync.P99Seconds) < t.SyncDuration && r.Sync.Timeouts == 0)
	}
	if r.Sync.Timeouts > 0 {
		sd.Note = plural(r.Sync.Timeouts, "run") + " timed out"
	} else if r.Sync.Slow > 0 {
		sd.Note = plural(r.Sync.Slow, "run") + " over " + Duration(t.SyncDuration)
	}
	out = append(out, sd)

	po := Target{Name: TargetPairsOK, Target: "every pair ok in every run"}
	if r.Sync.Runs == 0 {
		po.Figure, po.Status = "no sync completed", Missed
	} else {
		po.Figure = fmt.Sprintf("min %d, mean %.2f, last %d/%d", r.Sync.PairsOKMin, r.Sync.PairsOKMean, r.Sync.PairsOKLast, r.Sync.PairsTotalLast)
		po.Status = verdict(r.Sync.RunsAllOK == r.Sync.Runs)
		if r.Sync.RunsAllOK < r.Sync.Runs {
			po.Note = fmt.Sprintf("%d of %d runs had failed pairs", r.Sync.Runs-r.Sync.RunsAllOK, r.Sync.Runs)
		}
	}
	out = append(out, po)

	rl := Target{Name: TargetRateLimit, Target: fmt.Sprintf("< %g/h", t.RateLimitPerHour),
		Figure: fmt.Sprintf("mean %.3f/h, max %d in one hour, %d hits", r.RateLimit.MeanPerHour, r.RateLimit.MaxPerHour, r.RateLimit.Hits),
		Status: verdict(r.RateLimit.MeanPerHour < t.RateLimitPerHour)}
	if r.RateLimit.HoursWithHits > 0 {
		rl.Note = "429s in " + plural(r.RateLimit.HoursWithHits, "hour")
	}
	if r.RateLimit.Bans > 0 {
		rl.Note = strings.TrimPrefix(rl.Note+"; "+plural(r.RateLimit.Bans, "ban")+" (418)", "; ")
	}
	out = append(out, rl)

	ba := Target{Name: TargetBackupAge, Target: "< " + Duration(t.BackupAge)}
	if r.Backups.WorstTo.IsZero() {
		ba.Figure, ba.Status = "no backups recorded", Missed
	} else {
		worst := secs(r.Backups.WorstAgeSeconds)
		ba.Figure = fmt.Sprintf("worst %s (%s to %s), %s", Duration(worst),
			r.Backups.WorstFrom.Format(time.RFC3339), r.Backups.WorstTo.Format(time.RFC3339), plural(r.Backups.Count, "backup"))
		ba.Status = verdict(worst < t.BackupAge)
	}
	var notes []string
	if r.Backups.NoneBefore {
		notes = append(notes, "no backup before the window: its first gap counts from the start")
	}
	if r.Backups.Failed > 0 {
		notes = append(notes, plural(r.Backups.Failed, "backup")+" failed")
	}
	ba.Note = strings.Join(notes, "; ")
	out = append(out, ba)

	measured := r.Recovery.Restores+r.Recovery.Drills-r.Recovery.DrillsFailed > 0
	for _, rec := range []struct {
		name    string
		target  time.Duration
		seconds float64
	}{{TargetRPO, t.RPO, r.Recovery.RPOSeconds}, {TargetRTO, t.RTO, r.Recovery.RTOSeconds}} {
		tg := Target{Name: rec.name, Target: "< " + Duration(rec.target)}
		switch {
		case r.Recovery.DrillsFailed > 0:
			tg.Figure, tg.Status = plural(r.Recovery.DrillsFailed, "drill")+" failed", Missed
			if measured {
				tg.Note = "worst measured " + Duration(secs(rec.seconds))
			}
		case !measured:
			tg.Figure, tg.Status = "not measured: no restore or drill recorded", NotMeasured
		default:
			tg.Figure = fmt.Sprintf("worst %s over %s and %s", Duration(secs(rec.seconds)), plural(r.Recovery.Restores, "restore"), plural(r.Recovery.Drills, "drill"))
			tg.Status = verdict(secs(rec.seconds) < rec.target)
		}
		out = append(out, tg)
	}
	return out
}

// Missed reports whether any target was missed.
func (r Report) Missed() bool {
	return slices.ContainsFunc(r.Targets, func(t Target) bool { return t.Status == Missed })
}

// plural is "1 run", "2 runs".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// Percent formats a share as a percentage with three decimals.
func Percent(share float64) string { return fmt.Sprintf("%.3f %%", share*100) }

// Duration formats d for a report: "30h00m", "40m00s", "12s".
func Duration(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, s := int64(d/time.Hour), int64(d%time.Hour/time.Minute), int64(d%time.Minute/time.Second)
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

func secs(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
