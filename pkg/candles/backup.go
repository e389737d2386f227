package candles

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
