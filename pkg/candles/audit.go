package candles

import (
	"strconv"
	"time"
)

// What the monthly SLA audit (`candlekeep sla`, the monitor's sla.report)
// reads from EVENTS besides the run, backup and alert events: the
// monitor's freshness history and the recoveries' measured RPO and RTO.
// docs/messages.md documents them.

// Event kinds of the audit.
const (
	// KindFreshnessChanged: the monitor's view of which configured pairs
	// are fresh, at its first evaluation, whenever the set of not-fresh
	// pairs changes and at least every FreshnessHeartbeat.
	KindFreshnessChanged = "freshness.changed"
	// KindSLAReport: the monitor's scheduled monthly audit.
	KindSLAReport = "sla.report"
)

// Subjects of the monthly audit's schedule, in the SYNC stream (the stream
// that allows message schedules): the server publishes the schedule's body
// to SubjectSLATick on every tick and the monitor consumes it.
const (
	SubjectSLASchedule = "candles.sync.schedule.sla"
	SubjectSLATick     = "candles.sync.sla"
)

// DefaultSLASchedule runs the audit of the previous month on the 1st of
// each month at 03:00:00 UTC, after the daily sync and backup.
const DefaultSLASchedule = "0 0 3 1 * *"

// FreshnessHeartbeat is the longest time between two freshness.changed
// events while the monitor runs; a longer gap (plus FreshnessSlack) in the
// history means nobody was watching, which the audit counts as "no data".
const (
	FreshnessHeartbeat = time.Hour
	FreshnessSlack     = 10 * time.Minute
)

// MinEventsMaxAge is the EVENTS retention the monthly audit needs: a
// month of history and a few days' margin.
const MinEventsMaxAge = 35 * 24 * time.Hour

// Pair states in freshness.changed.
const (
	FreshnessStale  = "stale"  // newest candle older than the freshness limit
	FreshnessNoData = "nodata" // nothing stored for the pair
)

// Reasons of a freshness.changed event.
const (
	FreshnessReasonStart     = "start"     // the monitor's first evaluation
	FreshnessReasonChanged   = "changed"   // the set of not-fresh pairs changed
	FreshnessReasonHeartbeat = "heartbeat" // an hour passed without a change
)

// PairFreshness is a configured pair that is not fresh.
type PairFreshness struct {
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	State    string `json:"state"` // FreshnessStale or FreshnessNoData
}

// FreshnessChanged is freshness.changed: which configured pairs were fresh
// from Time on. Every configured pair not in NotFresh was fresh.
type FreshnessChanged struct {
	EventHeader
	Configured []Pair          `json:"configured"`
	NotFresh   []PairFreshness `json:"not_fresh"`
	Fresh      int             `json:"fresh"`
	Reason     string          `json:"reason"`
}

// FreshnessHeartbeatID is the Nats-Msg-Id of the heartbeat of the hour
// holding t: monitors publishing the same hour's heartbeat (a restart, a
// standby) store it once.
func FreshnessHeartbeatID(t time.Time) string {
	return "freshness.heartbeat:" + strconv.FormatInt(t.UTC().Truncate(time.Hour).Unix(), 10)
}

// SLAReportID is the Nats-Msg-Id of the scheduled audit of the window
// starting at from, so a tick delivered twice publishes one report.
func SLAReportID(from time.Time) string {
	return "sla.report:" + strconv.FormatInt(from.UTC().Unix(), 10)
}

// Recovery is what a restore or a drill measured: how long the database
// could not serve (RTO) and how much acknowledged history it lost (RPO).
type Recovery struct {
	// Tier and Backup name the backup restored from ("hot", its location).
	Tier   string `json:"tier,omitempty"`
	Backup string `json:"backup,omitempty"`
	// BackupTakenAt is when that backup was taken.
	BackupTakenAt time.Time `json:"backup_taken_at,omitzero"`
	// StartedAt is when the need was detected (a damaged file) or the
	// restore or drill was asked for; FinishedAt when the restored database
	// (after the replay) served again.
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// RTOSeconds is FinishedAt - StartedAt. RPOSeconds is the span of
	// acknowledged history not recovered: 0 when the replay of CANDLES
	// restored everything up to the failure.
	RTOSeconds float64 `json:"rto_seconds"`
	RPOSeconds float64 `json:"rpo_seconds"`
}

// RestoreCompleted: the database was restored from a backup.
type RestoreCompleted struct {
	EventHeader
	Recovery
}

// DrillCompleted: a restore drill restored the newest backup into a
// scratch copy; OK says whether it proved the backup restores.
type DrillCompleted struct {
	EventHeader
	Recovery
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}
