package backup

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// Defaults of the service, the old setup's promises.
const (
	// DefaultSchedule is the daily backup at 02:00:00 UTC.
	DefaultSchedule = "0 0 2 * * *"
	// DefaultMinInterval: at most one backup after sync.completed per hour.
	DefaultMinInterval = time.Hour
	// Retention per tier.
	DefaultHotRetention  = 14 * 24 * time.Hour
	DefaultWarmRetention = 30 * 24 * time.Hour
	DefaultColdRetention = 90 * 24 * time.Hour
	// DefaultDrillSchedule: a restore drill on the 1st of every month at
	// 04:00:00 UTC, after the nightly backup and the SLA audit.
	DefaultDrillSchedule = "0 0 4 1 * *"
	// DefaultPoll is how often a debounced backup checks whether its time
	// has come.
	DefaultPoll = time.Second
	// ScheduleOff installs no backup schedule.
	ScheduleOff = cluster.ScheduleOff
)

// TierConfig is one tier and how long it keeps copies.
type TierConfig struct {
	Tier Tier
	// Retention: a copy whose created_at is this old is deleted, except
	// the tier's newest complete copy, which is always kept.
	Retention time.Duration
}

// Options configure a Service.
type Options struct {
	// Database is the live candles.db (absolute path); it is only read.
	Database string
	// ScratchDir holds the snapshot while it is checked and compressed; on
	// the data volume (it needs about the database's size). Default:
	// <database dir>/backups/.scratch. Only the service writes there: what
	// it finds at start is the leftover of a crash and is removed.
	ScratchDir string
	// Tiers are written in order; at least one.
	Tiers []TierConfig
	// Schedule is the backup schedule installed in JetStream (cron, see
	// cluster.ParseSchedule) or "off".
	Schedule string
	// MinInterval: a sync.completed starts a backup at most this often.
	MinInterval time.Duration
	// Streams sizes the streams as the cluster settings say; Run creates
	// or updates them like every service. Its CandlesMaxAge (the cluster's
	// candles-max-age; 0: the default) must outlive the backup interval,
	// as CANDLES is the recovery log (CheckRetention).
	Streams candles.StreamOptions
	// Conn is the NATS connection for events, triggers and the API; nil
	// runs none of them (Backup can still be called).
	Conn *nats.Conn
	// Logger, Now and Version are the usual dependencies.
	Logger  *slog.Logger
	Now     func() time.Time
	Version string
	// Poll is how often a pending debounced backup looks at the clock.
	Poll time.Duration
	// PathTier opens a directory holding a copy as a tier, for a restore
	// --from PATH (file.New; the file package imports this one).
	PathTier func(dir string) (Tier, error)
	// ReplayTimeout bounds how long a restore follows the writer's replay.
	ReplayTimeout time.Duration
	// AutoRestore restores by itself on integrity.failed, once per
	// incident (auto.go); false only alerts.
	AutoRestore bool
	// DrillSchedule is the restore drill's schedule (cron) or "off".
	DrillSchedule string
	// SnapshotMethod is how a snapshot copies the live database ("":
	// SnapshotBackupAPI). Not a flag: the benchmark compares the methods.
	SnapshotMethod SnapshotMethod
}

// DefaultOptions returns the defaults; Database, Tiers and Conn are the
// caller's.
func DefaultOptions() Options {
	return Options{
		Schedule:    DefaultSchedule,
		MinInterval: DefaultMinInterval,
		Now:         time.Now,
		Version:     "dev",
		Poll:        DefaultPoll,

		ReplayTimeout: DefaultReplayTimeout,
		AutoRestore:   true,
		DrillSchedule: DefaultDrillSchedule,
	}
}

// Validate checks o; its errors name the flag.
func (o *Options) Validate() error {
	var errs []error
	if o.Database == "" {
		errs = append(errs, errors.New("--data-dir: no database path"))
	} else if !filepath.IsAbs(o.Database) {
		errs = append(errs, fmt.Errorf("database path %q is not absolute", o.Database))
	}
	if len(o.Tiers) == 0 {
		errs = append(errs, errors.New("no backup tier: set --backup-hot-dir, --backup-warm-dir or --backup-s3-url"))
	}
	seen := map[string]bool{}
	for _, t := range o.Tiers {
		if t.Tier == nil {
			errs = append(errs, errors.New("a tier is nil"))
			continue
		}
		if seen[t.Tier.Name()] {
			errs = append(errs, fmt.Errorf("tier %s given twice", t.Tier.Name()))
		}
		seen[t.Tier.Name()] = true
		if t.Retention < time.Hour {
			errs = append(errs, fmt.Errorf("--backup-%s-retention %s: at least 1h", t.Tier.Name(), t.Retention))
		}
	}
	if _, err := SchedulePeriod(o.Schedule, time.Now()); err != nil {
		errs = append(errs, err)
	}
	if o.MinInterval < time.Minute {
		errs = append(errs, fmt.Errorf("--backup-min-interval %s: at least 1m", o.MinInterval))
	}
	if o.ReplayTimeout <= 0 {
		errs = append(errs, errors.New("replay timeout must be positive"))
	}
	if o.DrillSchedule != "" {
		if _, _, err := cluster.ParseSchedule(o.DrillSchedule, time.Now()); err != nil {
			errs = append(errs, errors.New(strings.ReplaceAll(err.Error(), "--sync-schedule", "--drill-schedule")))
		}
	}
	if o.Poll <= 0 {
		errs = append(errs, errors.New("poll interval must be positive"))
	}
	if o.Now == nil {
		errs = append(errs, errors.New("no clock (Now)"))
	}
	return errors.Join(errs...)
}

// SchedulePeriod parses a backup schedule and returns the longest time
// between two of its ticks (over the next year), or 0 for "off".
func SchedulePeriod(schedule string, now time.Time) (time.Duration, error) {
	pattern, next, err := cluster.ParseSchedule(schedule, now)
	if err != nil {
		return 0, errors.New(strings.ReplaceAll(err.Error(), "--sync-schedule", "--backup-schedule"))
	}
	if pattern == ScheduleOff {
		return 0, nil
	}
	if d, ok := strings.CutPrefix(pattern, "@every "); ok {
		return time.ParseDuration(d)
	}
	var longest time.Duration
	t := next
	for i := 0; i < 400 && t.Sub(next) < 366*24*time.Hour; i++ {
		_, n, err := cluster.ParseSchedule(pattern, t)
		if err != nil {
			return 0, err
		}
		longest = max(longest, n.Sub(t))
		t = n
	}
	return longest, nil
}

// retentionMargin: CANDLES must keep batches for twice the backup interval
// plus this, so one missed backup and a slow restore still find every
// batch after the newest copy in the stream.
const retentionMargin = time.Hour

// CheckRetention is the start-up guarantee: the CANDLES stream (the
// recovery log) keeps batches longer than 2 × the backup interval + 1h.
// The interval is the schedule's longest period, or MinInterval when the
// schedule is off. Its error says which setting to change.
func CheckRetention(schedule string, minInterval, candlesMaxAge time.Duration, now time.Time) error {
	interval, err := SchedulePeriod(schedule, now)
	if err != nil {
		return err
	}
	what := "--backup-schedule " + schedule
	if interval == 0 {
		interval, what = minInterval, "--backup-min-interval "+minInterval.String()+" (the schedule is off)"
	}
	need := 2*interval + retentionMargin
	if candlesMaxAge <= need {
		return fmt.Errorf("the CANDLES stream keeps batches %s (cluster setting candles-max-age), but a restore replays it from the newest backup, "+
			"so it must keep them longer than 2 × the backup interval (%s, from %s) + %s = %s: "+
			"raise it with `candlekeep config set candles-max-age=%s`, or back up more often",
			candlesMaxAge, interval, what, retentionMargin, need, suggest(need))
	}
	return nil
}

// suggest rounds d up to whole days (hours below a day) for the message.
func suggest(d time.Duration) string {
	if d >= 24*time.Hour {
		days := (d + 24*time.Hour - 1) / (24 * time.Hour)
		return fmt.Sprintf("%dh", int64(days)*24)
	}
	return (d + time.Hour - 1).Truncate(time.Hour).String()
}
