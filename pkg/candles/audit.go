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
	RestoreDetail
}

// DrillCompleted: a restore drill restored the newest backup into a
// scratch copy; OK says whether it proved the backup restores.
type DrillCompleted struct {
	EventHeader
	Recovery
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	// Tiers is each tier's part of the drill (newest copy of each).
	Tiers []DrillTier `json:"tiers,omitempty"`
}

// DrillTier is one tier's restore in a drill.
type DrillTier struct {
	Tier string `json:"tier"`
	Copy string `json:"copy,omitempty"`
	OK   bool   `json:"ok"`
	// RTOSeconds is fetch + verify + open of the copy.
	RTOSeconds float64 `json:"rto_seconds"`
	Watermark  uint64  `json:"watermark"`
	Candles    int64   `json:"candles"`
	// LiveCandles is the live database's count at the drill; PairsBehind
	// the pairs whose newest candle in the copy is older than the live
	// one's (the replay would bring them), PairsMissing those the copy
	// lacks.
	LiveCandles  int64         `json:"live_candles"`
	PairsBehind  int           `json:"pairs_behind"`
	PairsMissing int           `json:"pairs_missing"`
	Skipped      []SkippedCopy `json:"skipped,omitempty"`
	Error        string        `json:"error,omitempty"`
}

// Event kinds of restores and drills besides restore.completed and
// drill.completed (services/backup, docs/backup.md).
const (
	// KindRestoreStarted: a restore began (by request, or automatically on
	// integrity.failed: Reason says which).
	KindRestoreStarted = "restore.started"
	// KindRestoreFailed: no copy could be restored; the database in place
	// was left as it was.
	KindRestoreFailed = "restore.failed"
	// KindDrillFailed: a drill could not prove a tier restores (a
	// DrillCompleted with OK false).
	KindDrillFailed = "drill.failed"
)

// SkippedCopy is a copy a restore or drill did not use, and why (corrupt,
// truncated, tampered, incomplete).
type SkippedCopy struct {
	Tier   string `json:"tier"`
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// RestoreDetail is what a restore event says besides the Recovery figures.
type RestoreDetail struct {
	// Reason: "request", "auto-restore" (integrity.failed) ...
	Reason string `json:"reason,omitempty"`
	// AgeSeconds is the copy's age when the restore began.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	// Watermark is the copy's CANDLES watermark; ReplayedTo the writer's
	// watermark once the replay caught up; BatchesReplayed the difference.
	Watermark       uint64 `json:"watermark"`
	ReplayedTo      uint64 `json:"replayed_to,omitempty"`
	BatchesReplayed uint64 `json:"batches_replayed"`
	// CandlesReplayed is how many more candles the database holds after
	// the replay than the copy did.
	CandlesReplayed int64 `json:"candles_replayed"`
	// BatchesNotInStream counts the batches after the copy's watermark
	// that CANDLES no longer held (its retention shortened below the
	// guarantee): the gap-audit sync fetches their candles again from the
	// exchange, and rpo_seconds spans them.
	BatchesNotInStream uint64 `json:"batches_not_in_stream,omitempty"`
	// MovedAside is where the previous database file was kept.
	MovedAside string        `json:"moved_aside,omitempty"`
	Skipped    []SkippedCopy `json:"skipped,omitempty"`
	// Incident is the integrity.failed that started an automatic restore
	// (its database and detected_at).
	Incident string `json:"incident,omitempty"`
	// SyncRunID is the gap-audit sync asked for after the replay.
	SyncRunID string `json:"sync_run_id,omitempty"`
	Error     string `json:"error,omitempty"`
}

// RestoreStarted is restore.started.
type RestoreStarted struct {
	EventHeader
	RestoreDetail
}

// RestoreFailed is restore.failed.
type RestoreFailed struct {
	EventHeader
	Recovery
	RestoreDetail
}
