package candles

import "time"

// The operator's view of the system: what the database's owner reports to
// the monitor, what the monitor reports to operators, and the monitor's
// and the backup service's events. docs/monitoring.md and docs/messages.md
// document them.

// Subjects of the monitor and of the database's owner.
const (
	// SubjectAPIHealth answers the six health checks (HealthReport), from
	// the monitor (micro endpoint candlekeep-monitor.health).
	SubjectAPIHealth = "candles.api.health"
	// SubjectAPIStatus answers the runs in progress and the last runs
	// (StatusReport), from the monitor (candlekeep-monitor.status).
	SubjectAPIStatus = "candles.api.status"
	// SubjectAPIDatabase answers the state of the database file
	// (DatabaseHealth), from its owner, the writer holding the lease
	// (candlekeep-writer.database). Each request runs PRAGMA quick_check
	// on a read connection.
	SubjectAPIDatabase = "candles.api.database"
)

// Event kinds of the monitor and the backup service.
const (
	KindAlertFiring      = "alert.firing"
	KindAlertResolved    = "alert.resolved"
	KindBackupCompleted  = "backup.completed"
	KindBackupFailed     = "backup.failed"
	KindRestoreCompleted = "restore.completed"
	KindDrillCompleted   = "drill.completed"
)

// DatabaseHealth is the reply of candles.api.database: the database file
// as its owner sees it. The monitor needs no access to the file.
type DatabaseHealth struct {
	V        int    `json:"v"`
	Database string `json:"database"` // absolute path of candles.db
	// Holder is the writer lease holder answering.
	Holder        string `json:"holder"`
	FileBytes     int64  `json:"file_bytes"`
	WALBytes      int64  `json:"wal_bytes"`
	Candles       int64  `json:"candles"`
	SchemaVersion int    `json:"schema_version"`
	// DiskFreeBytes and DiskSizeBytes are the filesystem holding the file.
	DiskFreeBytes uint64 `json:"disk_free_bytes"`
	DiskSizeBytes uint64 `json:"disk_size_bytes"`
	// QuickCheck is the quick_check this request ran.
	QuickCheck CheckRun `json:"quick_check"`
	// IntegrityCheckAt is when a full integrity_check last passed on this
	// file (zero: never); the writer runs one at least daily.
	IntegrityCheckAt time.Time `json:"integrity_check_at,omitzero"`
	// Damaged is set once the file was found damaged: writes stopped.
	Damaged *IntegrityFailed `json:"damaged,omitempty"`
	// Runs are the runs in progress, oldest first.
	Runs []RunProgress `json:"runs,omitempty"`
	At   time.Time     `json:"at"`
}

// CheckRun is one run of a database check.
type CheckRun struct {
	OK       bool      `json:"ok"`
	Problems []string  `json:"problems,omitempty"`
	Seconds  float64   `json:"seconds"`
	At       time.Time `json:"at"`
}

// RunProgress is a run in progress as the writer counts it.
type RunProgress struct {
	RunID      string    `json:"run_id"`
	PairsTotal int       `json:"pairs_total"`
	PairsDone  int       `json:"pairs_done"`
	Candles    int64     `json:"candles"`
	StartedAt  time.Time `json:"started_at"`
	Deadline   time.Time `json:"deadline,omitzero"`
}

// FetcherStats is the custom data of a fetcher's micro service STATS
// reply ($SRV.STATS.candlekeep-fetcher): one per fetcher process.
type FetcherStats struct {
	// ID is the fetcher's id in the shared weight budget.
	ID string `json:"id"`
	// Requests counts klines and other REST requests sent; Errors those
	// that failed (transport, 5xx, malformed); RequestSeconds is their
	// summed round-trip time (so avg = RequestSeconds/Requests).
	Requests       int64   `json:"requests"`
	Errors         int64   `json:"errors"`
	RequestSeconds float64 `json:"request_seconds"`
	// Weight is the request weight this fetcher reserved since it started;
	// UsedWeight the exchange's last X-MBX-USED-WEIGHT-1M it saw and
	// WeightLimit the budget per window.
	Weight      int64 `json:"weight"`
	UsedWeight  int   `json:"used_weight"`
	WeightLimit int   `json:"weight_limit"`
	// RateLimitHits counts 429 answers, Bans 418 answers; BannedUntil is
	// set while a ban pauses every request.
	RateLimitHits int64     `json:"ratelimit_hits"`
	Bans          int64     `json:"bans"`
	BannedUntil   time.Time `json:"banned_until,omitzero"`
}

// CheckStatus is a health check's verdict.
type CheckStatus string

// Health check verdicts, from best to worst. "unknown" is "cannot tell":
// the monitor has not (yet, or no longer) heard what the check needs.
const (
	CheckOK      CheckStatus = "ok"
	CheckWarn    CheckStatus = "warn"
	CheckFail    CheckStatus = "fail"
	CheckUnknown CheckStatus = "unknown"
)

// Check is one of the six health checks.
type Check struct {
	Name   string      `json:"name"` // freshness, coverage, integrity, size, backup, activity
	Status CheckStatus `json:"status"`
	// Value is what was measured and Threshold what it is held to, both as
	// text an operator reads ("26h0m0s", "60/60", "1.2 GB"); Reason is one
	// line saying why the status is what it is.
	Value     string `json:"value"`
	Threshold string `json:"threshold"`
	Reason    string `json:"reason"`
	// Details name what is wrong (the stale or missing pairs, the services down).
	Details []string `json:"details,omitempty"`
	// AsOf is when the data behind the check was measured; older than the
	// evaluation when its source stopped answering (last known values).
	AsOf time.Time `json:"as_of,omitzero"`
}

// HealthReport is the reply of candles.api.health, /healthz and
// `candlekeep health --json`.
type HealthReport struct {
	V int `json:"v"`
	// Status is the worst of the checks: ok (healthy, exit 0), warn or
	// fail (problems, exit 1), unknown (cannot tell, exit 2).
	Status CheckStatus `json:"status"`
	Checks []Check     `json:"checks"`
	At     time.Time   `json:"at"`
	// Firing are the alerts firing now.
	Firing []AlertEvent `json:"firing,omitempty"`
	// NATS is the monitor's own connection to NATS.
	NATS *NATSState `json:"nats,omitempty"`
}

// NATSState is a connection to NATS as the monitor reports it.
type NATSState struct {
	Connected bool `json:"connected"`
	// Server is the server connected to, user info redacted.
	Server string `json:"server,omitempty"`
	// DisconnectedSince is when the connection was lost.
	DisconnectedSince time.Time `json:"disconnected_since,omitzero"`
	// Reconnects counts reconnections since the monitor started.
	Reconnects uint64 `json:"reconnects"`
}

// RunStatus is a run as `candlekeep status` shows it.
type RunStatus struct {
	RunID       string    `json:"run_id"`
	Reason      string    `json:"reason,omitempty"`
	PairsTotal  int       `json:"pairs_total"`
	PairsDone   int       `json:"pairs_done"`
	PairsFailed int       `json:"pairs_failed"`
	Candles     int64     `json:"candles"`
	Weight      int64     `json:"weight,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	Deadline    time.Time `json:"deadline,omitzero"`
	// ETA is the expected finish of a run in progress, from its pace so far.
	ETA time.Time `json:"eta,omitzero"`
	// Outcome: "running", "completed", "failed", "timeout".
	Outcome string `json:"outcome"`
}

// StatusReport is the reply of candles.api.status.
type StatusReport struct {
	V       int         `json:"v"`
	Running []RunStatus `json:"running"`
	Recent  []RunStatus `json:"recent"`
	At      time.Time   `json:"at"`
}

// AlertEvent is alert.firing and alert.resolved: a rule's group of alerts
// (one per label set, e.g. per stale pair) started or stopped firing.
type AlertEvent struct {
	EventHeader
	Alert    string `json:"alert"`    // the rule, e.g. CandlekeepDataStale
	Severity string `json:"severity"` // critical, warning, info
	Summary  string `json:"summary"`
	// Value and Threshold are the measurement that made it fire.
	Value     string `json:"value"`
	Threshold string `json:"threshold"`
	Runbook   string `json:"runbook"`
	// Members are the label sets firing (e.g. "BTCUSDT/4h"), empty for a
	// rule without labels.
	Members []string `json:"members,omitempty"`
	// ActiveSince is when the condition first held (before its "for"),
	// FiringSince when the alert fired; ResolvedAt is set on alert.resolved.
	ActiveSince time.Time `json:"active_since"`
	FiringSince time.Time `json:"firing_since"`
	ResolvedAt  time.Time `json:"resolved_at,omitzero"`
}

// BackupCompleted: a backup was written and verified (integrity and
// checksum) in Tier ("hot", "warm", "cold"). Watermark is the CANDLES
// sequence the backup contains everything up to.
type BackupCompleted struct {
	EventHeader
	Tier      string    `json:"tier"`
	Location  string    `json:"location"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	Watermark uint64    `json:"watermark"`
	Verified  bool      `json:"verified"`
	TakenAt   time.Time `json:"taken_at"`
}

// BackupFailed: a backup to Tier could not be written or verified.
type BackupFailed struct {
	EventHeader
	Tier   string `json:"tier"`
	Reason string `json:"reason"`
}
