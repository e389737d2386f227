package monitor

import (
	"fmt"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Thresholds of the checks that are not flags.
const (
	// integrityCheckMaxAge: the writer runs a full integrity_check daily;
	// one older than this means the daily check stopped running.
	integrityCheckMaxAge = 25 * time.Hour
	// backupMaxAge is the old setup's backup SLA.
	backupMaxAge = 26 * time.Hour
	// drillMaxAge: the restore drill runs monthly (--drill-schedule); with
	// no drill passed for longer than a month and a few days of margin
	// (a run missed over a restart, a long month) nobody knows whether the
	// backups still restore.
	drillMaxAge = 35 * 24 * time.Hour
	// activitySlack is added to the schedule period and the sync timeout:
	// a run takes time to start and to report.
	activitySlack = 10 * time.Minute
	// diskWarnFraction and diskFailFraction are the free space of the data
	// volume below which the size check warns and fails.
	diskWarnFraction = 0.10
	diskFailFraction = 0.02
)

// Check names, in the order the report lists them.
const (
	checkFreshness = "freshness"
	checkCoverage  = "coverage"
	checkIntegrity = "integrity"
	checkSize      = "size"
	checkBackup    = "backup"
	checkActivity  = "activity"
)

// checkNames lists the six checks in report order.
var checkNames = []string{checkFreshness, checkCoverage, checkIntegrity, checkSize, checkBackup, checkActivity}

// Service names the activity check expects to answer a micro PING.
const (
	serviceFetcher = "candlekeep-fetcher"
	serviceWriter  = "candlekeep-writer"
	serviceMonitor = "candlekeep-monitor"
	serviceBackup  = "candlekeep-backup"
)

// snapshot is everything the checks and the metrics read, as the monitor
// knew it at one evaluation. The checks are pure functions of it.
type snapshot struct {
	Now          time.Time
	MaxStaleness time.Duration
	// Pairs are the configured pairs; SchedulePeriod the time between two
	// scheduled syncs (0: the schedule is off); SyncTimeout the run deadline.
	Pairs          []candles.Pair
	SchedulePeriod time.Duration
	SyncTimeout    time.Duration

	// DB is the owner's last answer (nil: it never answered), measured at
	// DBAt; OwnerAnswering says whether it answered this evaluation.
	DB             *candles.DatabaseHealth
	DBAt           time.Time
	OwnerAnswering bool
	// OwnerProblem is the owner's error answer (e.g. its quick_check
	// could not run): it is alive, and the file's state is unknown.
	OwnerProblem string
	// Coverage is the owner's last coverage answer (nil: never).
	Coverage   map[candles.Pair]candles.PairCoverage
	CoverageAt time.Time

	// Alive counts the instances of each service that answered PING.
	Alive map[string]int
	// BackupSeen: a backup service answered PING or a backup event was
	// read, so backups are expected; BackupServiceSeen: the service
	// answered PING since the monitor started, so it is expected alive.
	BackupSeen        bool
	BackupServiceSeen bool
	LastSync          *candles.SyncCompleted
	// LastBackup is the newest verified backup.completed; FirstBackupAt
	// when the oldest verified backup the monitor knows of was taken.
	LastBackup    *candles.BackupCompleted
	FirstBackupAt time.Time
	// LastDrill is the newest restore drill (drill.completed or
	// drill.failed), LastGoodDrill the newest that passed.
	LastDrill, LastGoodDrill *candles.DrillCompleted

	Fetchers  []candles.FetcherStats
	Consumers []consumerState
	// Damage is an integrity.failed read since the owner last answered:
	// the file is damaged even if the owner cannot say so any more.
	Damage *candles.IntegrityFailed
	// BannedUntil is the end of the latest ban ratelimit.banned announced.
	BannedUntil time.Time

	// Checks are the six checks' results over this snapshot.
	Checks []candles.Check
}

// consumerState is one durable consumer's info.
type consumerState struct {
	Stream, Consumer                 string
	Pending, AckPending, Redelivered uint64
	AckFloorConsumerSeq              uint64
	Found                            bool
}

// runChecks runs the six checks over s, in report order.
func runChecks(s snapshot) []candles.Check {
	return []candles.Check{
		checkFreshnessOf(s), checkCoverageOf(s), checkIntegrityOf(s),
		checkSizeOf(s), checkBackupOf(s), checkActivityOf(s),
	}
}

// overall is the report's status: unknown until the database's owner has
// answered once (cannot tell); then the worst check, where a known failure
// outranks a check that cannot tell.
func overall(s snapshot, cs []candles.Check) candles.CheckStatus {
	if s.DB == nil {
		return candles.CheckUnknown
	}
	worst := candles.CheckOK
	for _, c := range cs {
		if rank(c.Status) > rank(worst) {
			worst = c.Status
		}
	}
	return worst
}

// rank orders the statuses for overall: ok < unknown < warn < fail.
func rank(s candles.CheckStatus) int {
	switch s {
	case candles.CheckOK:
		return 0
	case candles.CheckUnknown:
		return 1
	case candles.CheckWarn:
		return 2
	default:
		return 3
	}
}

// unknownCheck is a check whose source has never answered.
func unknownCheck(name, threshold, reason string) candles.Check {
	return candles.Check{Name: name, Status: candles.CheckUnknown, Value: "unknown", Threshold: threshold, Reason: reason}
}

const ownerNeverAnswered = "the database's owner (candlekeep-writer, " + candles.SubjectAPIDatabase + ") has not answered yet"

func checkFreshnessOf(s snapshot) candles.Check {
	threshold := s.MaxStaleness.String()
	if s.Coverage == nil {
		return unknownCheck(checkFreshness, threshold, ownerNeverAnswered)
	}
	c := candles.Check{Name: checkFreshness, Threshold: threshold, AsOf: s.CoverageAt}
	var worst time.Duration
	for _, p := range s.Pairs {
		pc, ok := s.Coverage[p]
		iv, err := candles.ParseInterval(p.Interval)
		if err != nil {
			continue
		}
		limit := candles.StalenessLimit(iv, s.MaxStaleness)
		if !ok || pc.Count == 0 {
			c.Details = append(c.Details, p.String()+": no candles")
			continue
		}
		age := pc.Staleness(s.Now)
		worst = max(worst, age)
		if age > limit {
			c.Details = append(c.Details, fmt.Sprintf("%s: newest candle closed %s ago (limit %s)", p, roundAge(age), limit))
		}
	}
	switch {
	case len(s.Pairs) == 0:
		c.Status, c.Value, c.Reason = candles.CheckOK, "no pairs", "no pairs are configured"
	case len(c.Details) > 0:
		c.Status = candles.CheckFail
		c.Value = fmt.Sprintf("%d/%d pairs stale", len(c.Details), len(s.Pairs))
		c.Reason = fmt.Sprintf("%d of %d pairs have no candle newer than their limit", len(c.Details), len(s.Pairs))
	default:
		c.Status = candles.CheckOK
		c.Value = "newest candle of the stalest pair closed " + roundAge(worst).String() + " ago"
		c.Reason = fmt.Sprintf("all %d pairs fresh", len(s.Pairs))
	}
	return c
}

func checkCoverageOf(s snapshot) candles.Check {
	if s.Coverage == nil {
		return unknownCheck(checkCoverage, "all configured pairs complete", ownerNeverAnswered)
	}
	c := candles.Check{Name: checkCoverage, AsOf: s.CoverageAt}
	complete := 0
	for _, p := range s.Pairs {
		pc, ok := s.Coverage[p]
		if !ok {
			pc = candles.PairCoverage{Symbol: p.Symbol, Interval: p.Interval}
		}
		status, healthy := pc.Status(s.Now, s.MaxStaleness)
		if healthy {
			complete++
			continue
		}
		c.Details = append(c.Details, p.String()+": "+status)
	}
	c.Value = fmt.Sprintf("%d/%d", complete, len(s.Pairs))
	c.Threshold = fmt.Sprintf("%d/%d", len(s.Pairs), len(s.Pairs))
	if complete == len(s.Pairs) {
		c.Status, c.Reason = candles.CheckOK, "every configured pair has complete, fresh data"
	} else {
		c.Status = candles.CheckWarn
		c.Reason = fmt.Sprintf("%d configured pairs are missing data", len(s.Pairs)-complete)
	}
	return c
}

func checkIntegrityOf(s snapshot) candles.Check {
	const threshold = "quick_check ok; integrity_check passed within 25h"
	if s.DB == nil && s.Damage == nil {
		return unknownCheck(checkIntegrity, threshold, ownerNeverAnswered)
	}
	if s.DB == nil {
		s.DB = &candles.DatabaseHealth{} // only the damage is known
	}
	db := s.DB
	c := candles.Check{Name: checkIntegrity, Threshold: threshold, AsOf: s.DBAt}
	damaged := db.Damaged
	if s.Damage != nil {
		damaged, c.AsOf = s.Damage, s.Now
	}
	switch {
	case damaged == nil && s.OwnerProblem != "":
		c.Status, c.Value = candles.CheckUnknown, "unknown"
		c.Reason = "the database's owner could not check the file: " + s.OwnerProblem
	case damaged != nil:
		c.Status, c.Value = candles.CheckFail, "damaged"
		c.Reason = fmt.Sprintf("%s found the database damaged at %s; writes stopped", damaged.Check, damaged.DetectedAt.UTC().Format(time.RFC3339))
		c.Details = append([]string(nil), damaged.Problems...)
	case !db.QuickCheck.OK:
		c.Status, c.Value = candles.CheckFail, "quick_check failed"
		c.Reason = "PRAGMA quick_check found problems"
		c.Details = append([]string(nil), db.QuickCheck.Problems...)
	case db.IntegrityCheckAt.IsZero():
		c.Status, c.Value = candles.CheckOK, "quick_check ok"
		c.Reason = "quick_check passed; the first full integrity_check has not finished yet"
	case s.Now.Sub(db.IntegrityCheckAt) > integrityCheckMaxAge:
		c.Status = candles.CheckWarn
		c.Value = fmt.Sprintf("quick_check ok, integrity_check %s ago", roundAge(s.Now.Sub(db.IntegrityCheckAt)))
		c.Reason = "the daily full integrity_check has not passed for over 25h"
	default:
		c.Status = candles.CheckOK
		c.Value = fmt.Sprintf("quick_check ok, integrity_check %s ago", roundAge(s.Now.Sub(db.IntegrityCheckAt)))
		c.Reason = "quick_check and the daily integrity_check passed"
	}
	return c
}

// storedCandles is the candle count: the owner recounts the table at most
// every 30 s, so the configured pairs' own counts (coverage, exact at each
// evaluation) are a floor, and a fresh database is not judged by a count
// taken before its first sync.
func (s snapshot) storedCandles() int64 {
	var stored int64
	for _, p := range s.Pairs {
		stored += s.Coverage[p].Count
	}
	if s.DB != nil {
		return max(s.DB.Candles, stored)
	}
	return stored
}

func checkSizeOf(s snapshot) candles.Check {
	threshold := fmt.Sprintf("candles ≥ half of expected; disk free ≥ %d %%", int(diskWarnFraction*100))
	if s.DB == nil {
		return unknownCheck(checkSize, threshold, ownerNeverAnswered)
	}
	db := s.DB
	c := candles.Check{Name: checkSize, AsOf: s.DBAt, Status: candles.CheckOK}
	var expected int64
	for _, p := range s.Pairs {
		expected += s.Coverage[p].Expected
	}
	rows := s.storedCandles()
	c.Threshold = fmt.Sprintf("candles ≥ %d (half of %d expected); disk free ≥ %d %%", expected/2, expected, int(diskWarnFraction*100))
	free := 0.0
	if db.DiskSizeBytes > 0 {
		free = float64(db.DiskFreeBytes) / float64(db.DiskSizeBytes)
	}
	c.Value = fmt.Sprintf("%s, %d candles, %s free (%d %%)", humanBytes(uint64(max(db.FileBytes, 0))), rows, humanBytes(db.DiskFreeBytes), int(free*100))
	var reasons []string
	worse := func(st candles.CheckStatus, reason string) {
		if rank(st) > rank(c.Status) {
			c.Status = st
		}
		reasons = append(reasons, reason)
	}
	switch {
	case len(s.Pairs) > 0 && rows == 0:
		worse(candles.CheckFail, "the database holds no candles")
	case rows*2 < expected:
		worse(candles.CheckFail, fmt.Sprintf("%d candles, fewer than half of the %d coverage expects", rows, expected))
	}
	switch {
	case db.DiskSizeBytes == 0:
	case free < diskFailFraction:
		worse(candles.CheckFail, fmt.Sprintf("disk almost full: %d %% free", int(free*100)))
	case free < diskWarnFraction:
		worse(candles.CheckWarn, fmt.Sprintf("disk filling up: %d %% free", int(free*100)))
	}
	if len(reasons) == 0 {
		c.Reason = "record count as coverage expects; disk space enough"
	} else {
		c.Reason = strings.Join(reasons, "; ")
	}
	return c
}

func checkBackupOf(s snapshot) candles.Check {
	c := candles.Check{Name: checkBackup, AsOf: s.Now,
		Threshold: "newest verified backup < " + backupMaxAge.String() + "; newest restore drill passed, one within " + roundDays(drillMaxAge)}
	switch {
	case s.LastBackup != nil:
		age := s.Now.Sub(s.LastBackup.TakenAt)
		c.Value = fmt.Sprintf("%s ago (%s)", roundAge(age), s.LastBackup.Tier)
		if age < backupMaxAge {
			c.Status, c.Reason = candles.CheckOK, "a verified backup is recent"
		} else {
			c.Status, c.Reason = candles.CheckFail, "the newest verified backup is older than "+backupMaxAge.String()
		}
	case !s.BackupSeen:
		c.Status, c.Value, c.Reason = candles.CheckWarn, "none", "no backups configured (no candlekeep-backup service and no backup.completed)"
	default:
		c.Status, c.Value, c.Reason = candles.CheckFail, "none", "the backup service runs but no verified backup exists"
	}
	drillStatus, drillReason := drillVerdict(s)
	if drillReason != "" {
		if rank(drillStatus) > rank(c.Status) {
			c.Status, c.Reason = drillStatus, drillReason
		} else if c.Status != candles.CheckOK {
			c.Reason += "; " + drillReason
		}
	}
	c.Details = drillDetails(s)
	return c
}

// drillVerdict is what the restore drills say about the backups: fail when
// the newest drill failed, warn when backups exist and no drill passed
// within drillMaxAge (counted from the oldest known backup when none ever
// passed); "" when the drills give no cause for concern.
func drillVerdict(s snapshot) (candles.CheckStatus, string) {
	if d := s.LastDrill; d != nil && drillFailed(d) {
		why := d.Reason
		if why == "" {
			why = "no reason given"
		}
		return candles.CheckFail, fmt.Sprintf("the restore drill of %s failed: %s", d.FinishedAt.UTC().Format(time.RFC3339), why)
	}
	if s.LastBackup == nil {
		return candles.CheckOK, ""
	}
	if g := s.LastGoodDrill; g != nil {
		if age := s.Now.Sub(g.FinishedAt); age > drillMaxAge {
			return candles.CheckWarn, fmt.Sprintf("no restore drill passed for %s (limit %s)", roundDays(age), roundDays(drillMaxAge))
		}
		return candles.CheckOK, ""
	}
	if !s.FirstBackupAt.IsZero() && s.Now.Sub(s.FirstBackupAt) > drillMaxAge {
		return candles.CheckWarn, fmt.Sprintf("backups exist since %s and no restore drill has passed (limit %s)",
			s.FirstBackupAt.UTC().Format(time.DateOnly), roundDays(drillMaxAge))
	}
	return candles.CheckOK, ""
}

// drillDetails describes the newest drill: when, its outcome and its RTO,
// and each tier's part.
func drillDetails(s snapshot) []string {
	d := s.LastDrill
	if d == nil && !s.BackupSeen {
		return nil
	}
	if d == nil {
		return []string{"no restore drill yet (candlekeep drill, --drill-schedule)"}
	}
	outcome := "passed"
	if drillFailed(d) {
		outcome = "failed"
	}
	out := []string{fmt.Sprintf("last restore drill %s at %s (%s ago), RTO %.1fs",
		outcome, d.FinishedAt.UTC().Format(time.RFC3339), roundAge(s.Now.Sub(d.FinishedAt)), d.RTOSeconds)}
	for _, t := range d.Tiers {
		if t.OK {
			out = append(out, fmt.Sprintf("%s: %s restores in %.1fs, %d candles (watermark %d)", t.Tier, t.Copy, t.RTOSeconds, t.Candles, t.Watermark))
		} else {
			out = append(out, fmt.Sprintf("%s: %s", t.Tier, t.Error))
		}
	}
	if g := s.LastGoodDrill; drillFailed(d) && g != nil {
		out = append(out, "last drill that passed: "+g.FinishedAt.UTC().Format(time.RFC3339))
	}
	return out
}

// roundDays formats a long span in days ("35d").
func roundDays(d time.Duration) string {
	return fmt.Sprintf("%dd", int(d.Round(24*time.Hour)/(24*time.Hour)))
}

func checkActivityOf(s snapshot) candles.Check {
	c := candles.Check{Name: checkActivity, AsOf: s.Now, Status: candles.CheckOK}
	window := s.SchedulePeriod + s.SyncTimeout + activitySlack
	var problems []string
	if s.SchedulePeriod > 0 {
		c.Threshold = "sync.completed within " + window.String() + "; fetcher and writer alive"
	} else {
		c.Threshold = "fetcher and writer alive (sync schedule off)"
	}
	switch {
	case s.LastSync != nil:
		age := s.Now.Sub(s.LastSync.FinishedAt)
		c.Value = fmt.Sprintf("last sync completed %s ago", roundAge(age))
		if s.SchedulePeriod > 0 && age > window {
			problems = append(problems, fmt.Sprintf("no sync completed for %s (limit %s)", roundAge(age), window))
		}
	default:
		c.Value = "no sync completed"
		if s.SchedulePeriod > 0 {
			problems = append(problems, "no sync.completed seen")
		}
	}
	expected := []string{serviceFetcher, serviceWriter}
	if s.BackupServiceSeen {
		expected = append(expected, serviceBackup)
	}
	var down []string
	for _, name := range expected {
		if s.Alive[name] == 0 {
			down = append(down, strings.TrimPrefix(name, "candlekeep-"))
		}
	}
	if len(down) > 0 {
		problems = append(problems, "services down: "+strings.Join(down, ", "))
		for _, d := range down {
			c.Details = append(c.Details, d+" not answering PING")
		}
	}
	if s.DB != nil && !s.OwnerAnswering {
		f := fmt.Sprintf("writer not answering %s since %s", candles.SubjectAPIDatabase, s.DBAt.UTC().Format(time.RFC3339))
		problems = append(problems, f)
		c.Details = append(c.Details, f)
	}
	if len(problems) > 0 {
		c.Status, c.Reason = candles.CheckFail, strings.Join(problems, "; ")
	} else {
		c.Reason = "syncs complete on schedule and every service answers"
	}
	return c
}

// roundAge rounds an age for a reader: seconds under a minute, else minutes.
func roundAge(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(time.Minute)
}

// humanBytes formats n in decimal units ("1.2 GB").
func humanBytes(n uint64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// unix is t in seconds since the epoch, as Prometheus timestamps go.
func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
