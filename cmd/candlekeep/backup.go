package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/file"
	"github.com/candlekeep/candlekeep/services/backup/s3"
)

// backupOff as --backup-hot-dir keeps no hot tier.
const backupOff = "off"

// backupConfig is the backup service's per-process configuration: its
// tiers and when it runs. The zero value runs no backup service.
type backupConfig struct {
	HotDir, WarmDir                            string
	S3URL, S3Endpoint, S3Region, S3Class       string
	HotRetention, WarmRetention, ColdRetention time.Duration
	Schedule                                   string
	MinInterval                                time.Duration
	// AutoRestore restores by itself on integrity.failed (default true);
	// DrillSchedule is the restore drill's schedule.
	AutoRestore   bool
	DrillSchedule string
}

// enabled: at least one tier is configured.
func (c backupConfig) enabled() bool {
	return (c.HotDir != "" && c.HotDir != backupOff) || c.WarmDir != "" || c.S3URL != ""
}

// register adds the backup flags; the hot tier defaults to
// <data-dir>/backups/hot, resolved by resolve once --data-dir is known.
func (c *backupConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.HotDir, "backup-hot-dir", "", `hot backup tier, on the data volume (default <data-dir>/backups/hot; "off" for none)`)
	fs.StringVar(&c.WarmDir, "backup-warm-dir", "", "warm backup tier: an existing directory on a second disk (default none); a missing one fails the tier (unmounted disk)")
	fs.StringVar(&c.S3URL, "backup-s3-url", "", "cold backup tier: s3://bucket/prefix of any S3-compatible store; credentials from the standard AWS environment and files only (default none)")
	fs.StringVar(&c.S3Endpoint, "backup-s3-endpoint", "", "S3 endpoint URL for S3-compatible stores (MinIO, Ceph, R2…); empty: AWS")
	fs.StringVar(&c.S3Region, "backup-s3-region", "", "bucket region (default AWS_REGION or the AWS profile's, else "+s3.DefaultRegion+")")
	fs.StringVar(&c.S3Class, "backup-s3-storage-class", s3.DefaultStorageClass, "storage class of cold copies (STANDARD, STANDARD_IA, GLACIER_IR, …); every copy is encrypted at rest (SSE AES256)")
	c.HotRetention, c.WarmRetention, c.ColdRetention = backup.DefaultHotRetention, backup.DefaultWarmRetention, backup.DefaultColdRetention
	fs.Var((*days)(&c.HotRetention), "backup-hot-retention", "how long the hot tier keeps copies (14d; its newest copy is always kept)")
	fs.Var((*days)(&c.WarmRetention), "backup-warm-retention", "how long the warm tier keeps copies (30d)")
	fs.Var((*days)(&c.ColdRetention), "backup-cold-retention", "how long the cold tier keeps copies (90d)")
	fs.StringVar(&c.Schedule, "backup-schedule", backup.DefaultSchedule, `backup schedule, UTC: a 6-field cron with seconds, a 5-field cron, "@every 6h", "@daily"… or "off"; installed as a JetStream message schedule`)
	fs.DurationVar(&c.MinInterval, "backup-min-interval", backup.DefaultMinInterval, "a completed sync starts a backup at most this often")
	fs.BoolVar(&c.AutoRestore, "auto-restore", true, "restore the newest verified copy by itself when the database is found damaged (integrity.failed), once per incident; false only alerts")
	fs.StringVar(&c.DrillSchedule, "drill-schedule", backup.DefaultDrillSchedule, `restore drill schedule, UTC (cron as --backup-schedule, or "off"): the newest copy of each tier restored into a scratch directory and verified`)
}

// resolve fills the hot tier's default from the data directory.
func (c *backupConfig) resolve(dataDir string) {
	if c.HotDir == "" {
		c.HotDir = filepath.Join(dataDir, "backups", "hot")
	}
}

// validate checks the flags without touching disk or network.
func (c backupConfig) validate() error {
	if !c.enabled() {
		return errors.New(`--backup-hot-dir off and no --backup-warm-dir or --backup-s3-url: no backup tier to write`)
	}
	if c.S3URL != "" {
		if _, _, err := s3.ParseURL(c.S3URL); err != nil {
			return err
		}
	}
	if _, err := backup.SchedulePeriod(c.Schedule, time.Now()); err != nil {
		return err
	}
	if c.MinInterval < time.Minute {
		return fmt.Errorf("--backup-min-interval %s: at least 1m", c.MinInterval)
	}
	if c.DrillSchedule != "" {
		if _, _, err := cluster.ParseSchedule(c.DrillSchedule, time.Now()); err != nil {
			return errors.New(strings.ReplaceAll(err.Error(), "--sync-schedule", "--drill-schedule"))
		}
	}
	for _, r := range []struct {
		name string
		d    time.Duration
	}{{"hot", c.HotRetention}, {"warm", c.WarmRetention}, {"cold", c.ColdRetention}} {
		if r.d < time.Hour {
			return fmt.Errorf("--backup-%s-retention %s: at least 1h", r.name, r.d)
		}
	}
	return nil
}

// tiers builds the configured tiers, hot first.
func (c backupConfig) tiers(ctx context.Context) ([]backup.TierConfig, error) {
	var out []backup.TierConfig
	if c.HotDir != "" && c.HotDir != backupOff {
		t, err := file.New(backup.TierHot, c.HotDir)
		if err != nil {
			return nil, fmt.Errorf("--backup-hot-dir: %w", err)
		}
		out = append(out, backup.TierConfig{Tier: t, Retention: c.HotRetention})
	}
	if c.WarmDir != "" {
		// The second disk's directory must be there: a missing one is an
		// unmounted disk, not a directory to create on the first.
		t, err := file.New(backup.TierWarm, c.WarmDir, file.MustExist())
		if err != nil {
			return nil, fmt.Errorf("--backup-warm-dir: %w", err)
		}
		out = append(out, backup.TierConfig{Tier: t, Retention: c.WarmRetention})
	}
	if c.S3URL != "" {
		t, err := s3.New(ctx, s3.Options{Name: backup.TierCold, URL: c.S3URL, Endpoint: c.S3Endpoint, Region: c.S3Region, StorageClass: c.S3Class})
		if err != nil {
			return nil, err
		}
		out = append(out, backup.TierConfig{Tier: t, Retention: c.ColdRetention})
	}
	return out, nil
}

// days is a duration flag that also takes whole days ("14d").
type days time.Duration

func (d *days) String() string {
	if d == nil {
		return ""
	}
	v := time.Duration(*d)
	if v > 0 && v%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	return v.String()
}

func (d *days) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.Atoi(n)
		if err != nil || v <= 0 {
			return errors.New(`want a number of days such as "14d" or a duration such as "36h"`)
		}
		*d = days(time.Duration(v) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(`want a number of days such as "14d" or a duration such as "36h"`)
	}
	*d = days(v)
	return nil
}

// serveBackup connects to natsURL, joins the cluster configuration (for
// candles-max-age) and runs the backup service of the database at dbPath
// until ctx ends.
func serveBackup(ctx context.Context, nc0 natsutil.Client, dbPath string, c backupConfig, m membership, log *slog.Logger) error {
	log = log.With("service", "backup")
	abs, err := filepath.Abs(dbPath)
	if err != nil {
		return fmt.Errorf("database path %s: %w", dbPath, err)
	}
	tiers, err := c.tiers(ctx)
	if err != nil {
		return err
	}
	return withServiceConn(ctx, nc0, backup.ServiceName, log, func(ctx context.Context, nc *nats.Conn) error {
		cfg, err := joinCluster(ctx, nc, m, log)
		if err != nil {
			return err
		}
		o := backup.DefaultOptions()
		o.Database, o.Tiers = abs, tiers // scratch: <data-dir>/backups/.scratch
		o.Schedule, o.MinInterval = c.Schedule, c.MinInterval
		o.Streams = cfg.Current().Streams()
		o.Conn, o.Logger, o.Version = nc, log, versionString()
		o.AutoRestore, o.DrillSchedule = c.AutoRestore, c.DrillSchedule
		o.PathTier = func(dir string) (backup.Tier, error) { return file.New("path", dir, file.MustExist()) }
		s, err := backup.New(o)
		if err != nil {
			return err
		}
		// The guarantee is checked at start; a later change that breaks it
		// is reported at once rather than at the next start.
		cfg.OnChange(func(key string, st cluster.Settings) {
			if key != "candles-max-age" {
				return
			}
			if err := backup.CheckRetention(c.Schedule, c.MinInterval, st.CandlesMaxAge, time.Now()); err != nil {
				log.Error("the changed candles-max-age breaks the backup guarantee; a restore may not find every batch to replay", "err", err)
			}
		})
		return following(ctx, cfg, s.Run)
	})
}

// runBackup is `candlekeep backup` (the service), `candlekeep backup now`
// and `candlekeep backup ls`.
func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	if len(args) > 0 {
		switch args[0] {
		case "now":
			return runBackupNow(ctx, args[1:], stdout, stderr, getenv)
		case "ls":
			return runBackupList(ctx, args[1:], stdout, stderr, getenv)
		}
	}
	fs := flagSet("backup", "candlekeep backup [flags] | candlekeep backup now | candlekeep backup ls",
		"Runs the backup service against --nats-url, beside the writer on the data volume:\n"+
			"verified copies of <data-dir>/candles.db in up to three tiers (hot, warm, cold S3),\n"+
			"after every completed sync (at most once per --backup-min-interval), on\n"+
			"--backup-schedule and on request (candlekeep backup now). `candlekeep backup ls`\n"+
			"lists every copy. See docs/backup.md.", stderr)
	var lf logFlags
	lf.register(fs)
	var cf clusterFlags
	cf.register(fs)
	var bc backupConfig
	bc.register(fs)
	dataDir := fs.String("data-dir", defaultDataDir, "directory of candles.db")
	var nf natsFlags
	nf.register(fs)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep backup:", err)
		return 2
	}
	bc.resolve(*dataDir)
	if err := bc.validate(); err != nil {
		fmt.Fprintf(stderr, "candlekeep backup: %v\n(see candlekeep backup --help)\n", err)
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(stderr, "candlekeep backup: --data-dir: empty; give the directory of candles.db")
		return 2
	}
	dbPath := filepath.Join(*dataDir, databaseFile)
	if err := serveBackup(ctx, nf.c, dbPath, bc, cf.membership(false, "backup"), log); err != nil {
		return serviceExit(log, "backup service", err)
	}
	return 0
}

// backupRequest sends an empty request to subject and returns the reply.
func backupRequest(ctx context.Context, name string, nf *natsFlags, subject string, timeout time.Duration, stderr io.Writer) ([]byte, bool) {
	nc, err := nf.dial("candlekeep-"+strings.ReplaceAll(name, " ", "-"), dialTimeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep %s: %v\n", name, err)
		return nil, false
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		fmt.Fprintf(stderr, "candlekeep %s: no backup service answers on %s (start `candlekeep backup`, or `candlekeep up` with a backup tier)\n", name, subject)
		return nil, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep %s: %s: %v\n", name, subject, err)
		return nil, false
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		fmt.Fprintf(stderr, "candlekeep %s: the backup service answered %s: %s\n", name, code, msg.Header.Get("Nats-Service-Error"))
		return nil, false
	}
	return msg.Data, true
}

func runBackupNow(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("backup now", "candlekeep backup now [flags]",
		"Asks the backup service (candles.api.backup) for one backup now and prints each\n"+
			"tier's result. Exit 0 when every tier holds a verified copy, 1 otherwise.", stderr)
	var nf natsFlags
	nf.register(fs)
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for the backup")
	asJSON := fs.Bool("json", false, "print the service's JSON reply instead of a table")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	data, ok := backupRequest(ctx, "backup now", &nf, candles.SubjectAPIBackup, *timeout, stderr)
	if !ok {
		return 1
	}
	var rep backup.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		fmt.Fprintf(stderr, "candlekeep backup now: bad reply: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(append(data, '\n'))
	} else {
		if rep.Name != "" {
			fmt.Fprintf(stdout, "%s  watermark %d  %d candles  database %s\n", rep.Name, rep.Watermark, rep.Candles, humanBytes(rep.DBBytes))
		}
		if rep.Error != "" {
			fmt.Fprintf(stdout, "no snapshot: %s\n", rep.Error)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIER\tRESULT\tSIZE\tLOCATION\tERROR")
		for _, t := range rep.Tiers {
			result, size := "failed", ""
			if t.OK {
				result, size = "verified", humanBytes(t.Bytes)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Tier, result, size, t.Location, t.Error)
		}
		tw.Flush()
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

func runBackupList(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("backup ls", "candlekeep backup ls [flags]",
		"Lists every copy in every tier (candles.api.backup.ls): tier, name, age, size,\n"+
			"watermark and whether it is verified. Incomplete copies (no manifest: an upload\n"+
			"that failed) are listed too, and never restored. Exit 1 if a tier cannot be listed.", stderr)
	var nf natsFlags
	nf.register(fs)
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the listing")
	asJSON := fs.Bool("json", false, "print the service's JSON reply instead of a table")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	data, ok := backupRequest(ctx, "backup ls", &nf, candles.SubjectAPIBackupList, *timeout, stderr)
	if !ok {
		return 1
	}
	var l backup.Listing
	if err := json.Unmarshal(data, &l); err != nil {
		fmt.Fprintf(stderr, "candlekeep backup ls: bad reply: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(append(data, '\n'))
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIER\tNAME\tAGE\tSIZE\tWATERMARK\tVERIFIED")
		for _, tl := range l.Tiers {
			if tl.Error != "" {
				fmt.Fprintf(tw, "%s\t(cannot list %s: %s)\t\t\t\t\n", tl.Tier, tl.Location, tl.Error)
				continue
			}
			for _, c := range tl.Copies {
				verified := "yes"
				if !c.Complete() {
					verified = "no: " + c.Problem
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", tl.Tier, c.Name, age(l.At.Sub(c.CreatedAt())), humanBytes(c.Bytes), c.Watermark, verified)
			}
		}
		tw.Flush()
	}
	for _, tl := range l.Tiers {
		if tl.Error != "" {
			return 1
		}
	}
	return 0
}

// age prints a duration as an operator reads an age: 3d4h, 5h12m, 40s.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), (d%(24*time.Hour))/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, (d%time.Hour)/time.Minute)
	default:
		return d.Truncate(time.Second).String()
	}
}

// humanBytes prints a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
