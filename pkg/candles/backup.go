package candles

import "time"

// Subjects of the backup service (services/backup, docs/backup.md).
const (
	// SubjectAPIBackup takes one backup now and answers the per-tier
	// results (micro endpoint candlekeep-backup.backup).
	SubjectAPIBackup = "candles.api.backup"
	// SubjectAPIBackupList answers every copy in every tier (micro
	// endpoint candlekeep-backup.ls).
	SubjectAPIBackupList = "candles.api.backup.ls"
	// SubjectBackupSchedule holds the backup schedule: a JetStream message
	// schedule (Nats-Schedule) in the SYNC stream, beside the sync
	// schedule, whose target is SubjectBackupRequest.
	SubjectBackupSchedule = "candles.sync.schedule.backup"
	// SubjectBackupRequest receives the schedule's ticks (SYNC stream); the
	// backup service consumes it. A `nats pub candles.sync.backup ''`
	// starts a backup too.
	SubjectBackupRequest = "candles.sync.backup"
)

// Subjects of restores and drills (docs/backup.md).
const (
	// SubjectAPIWriterSwap is internal: the backup service asks the writer
	// lease holder to put a prepared, verified database file in place of
	// the live one (micro endpoint candlekeep-writer.swap). Body: a
	// SwapRequest; reply: a SwapResult.
	SubjectAPIWriterSwap = "candles.api.writer.swap"
	// SubjectAPIRestore restores the newest verified copy (micro endpoint
	// candlekeep-backup.restore). Body: a RestoreRequest (or empty).
	SubjectAPIRestore = "candles.api.restore"
	// SubjectAPIDrill runs a restore drill into a scratch directory (micro
	// endpoint candlekeep-backup.drill); production is not touched.
	SubjectAPIDrill = "candles.api.drill"
	// SubjectDrillSchedule holds the drill schedule (SYNC stream, like the
	// backup schedule); its ticks go to SubjectDrillRequest.
	SubjectDrillSchedule = "candles.sync.schedule.drill"
	SubjectDrillRequest  = "candles.sync.drill"
)

// SwapRequest asks the writer to swap in the database file Restored, which
// must be a verified copy in the same directory as the live database.
type SwapRequest struct {
	Restored string `json:"restored"`
	// Reason is logged (a restore's copy name, "auto-restore", ...).
	Reason string `json:"reason,omitempty"`
}

// SwapResult is the writer's answer to a swap: the live file now is the
// restored copy, at Watermark, and the writer replays CANDLES from
// Watermark+1 up to at least StreamLast (the stream's last sequence when
// the writer resumed). Follow the replay by reading the database's CANDLES
// watermark until it reaches StreamLast.
type SwapResult struct {
	Database string `json:"database"`
	// MovedAside is where the previous file went (empty when there was
	// none: it had been deleted). It is never deleted.
	MovedAside string    `json:"moved_aside,omitempty"`
	Watermark  uint64    `json:"watermark"`
	StreamLast uint64    `json:"stream_last"`
	PausedFor  float64   `json:"paused_seconds"`
	At         time.Time `json:"at"`
}
