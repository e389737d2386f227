package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/config"
	"github.com/candlekeep/candlekeep/pkg/logging"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/services/fetcher"
)

// Defaults of the flags of the external contract (docs/architecture.md).
const (
	defaultDataDir    = "./data"
	defaultNATSListen = "127.0.0.1:4222"
	defaultNATSURL    = "nats://127.0.0.1:4222"
	databaseFile      = "candles.db"
)

// flagSet is a FlagSet that prints its usage to stderr and never exits.
func flagSet(name, synopsis, description string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config.SetUsage(fs, synopsis, description)
	return fs
}

// parseFlags parses args with environment fallbacks. ok is false when the
// command should stop with code (0 after --help, 2 after a bad flag).
func parseFlags(fs *flag.FlagSet, args []string, getenv env) (code int, ok bool) {
	err := config.Parse(fs, args, getenv)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		return 0, false
	default:
		// The flag package names flags with one dash; the docs use two.
		msg := strings.Replace(err.Error(), " for flag -", " for flag --", 1)
		fmt.Fprintf(fs.Output(), "candlekeep %s: %s\n(see candlekeep %s --help)\n", fs.Name(), msg, fs.Name())
		return 2, false
	}
}

// logFlags are the logging flags every command has.
type logFlags struct{ level, format string }

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", logging.FormatAuto, "log format: auto (colour text on a terminal, JSON otherwise), text or json")
}

func (l *logFlags) logger(stderr io.Writer) (*slog.Logger, error) {
	return logging.New(stderr, l.level, l.format)
}

// clusterFlags are the cluster-wide settings (pkg/cluster), one flag per
// key of the configuration bucket. Every service takes them: they seed the
// configuration when it is new; after that `candlekeep up` writes the ones
// given explicitly and the other services warn when theirs disagree.
type clusterFlags struct {
	s  cluster.Settings
	fs *flag.FlagSet
}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	c.s, c.fs = cluster.Defaults(), fs
	cluster.RegisterFlags(fs, &c.s)
}

// membership returns how this process joins the configuration after parsing.
func (c *clusterFlags) membership(authoritative bool, by string) membership {
	m := membership{seed: c.s, explicit: map[string]bool{}, authoritative: authoritative, by: by}
	c.fs.Visit(func(f *flag.Flag) { // command line and environment (config.Parse sets both)
		if _, ok := cluster.KeyByName(f.Name); ok {
			m.explicit[f.Name] = true
		}
	})
	return m
}

// fetcherFlags are the fetcher's own, per-process settings.
type fetcherFlags struct {
	o fetcher.Options
}

func (f *fetcherFlags) register(fs *flag.FlagSet) {
	f.o = fetcher.DefaultOptions()
	fs.IntVar(&f.o.Concurrency, "fetch-concurrency", f.o.Concurrency, "pairs this fetcher fetches at once")
	fs.DurationVar(&f.o.RequestTimeout, "request-timeout", f.o.RequestTimeout, "timeout of one HTTP request to the exchange")
}

// options returns the fetcher options for the settings s.
func (f *fetcherFlags) options(s cluster.Settings) fetcher.Options {
	return withSettings(f.o, s)
}

// withSettings copies the cluster settings into fetcher options.
func withSettings(o fetcher.Options, s cluster.Settings) fetcher.Options {
	o.Symbols, o.Intervals, o.Lookback = s.Symbols, s.Intervals, s.Lookback
	o.SyncSchedule, o.SyncTimeout, o.CatchUp = s.SyncSchedule, s.SyncTimeout, s.CatchUp
	o.BinanceURL, o.WeightLimit, o.MaxDeliver, o.RetryBase = s.BinanceURL, s.WeightLimit, s.MaxAttempts, s.RetryBase
	o.Streams = s.Streams()
	return o
}

// settingsOf is the inverse of withSettings, for callers (tests, benchmarks)
// that configure a fetcher directly.
func settingsOf(o fetcher.Options) cluster.Settings {
	s := cluster.Defaults()
	s.Symbols, s.Intervals, s.Lookback = o.Symbols, o.Intervals, o.Lookback
	s.SyncSchedule, s.SyncTimeout, s.CatchUp = o.SyncSchedule, o.SyncTimeout, o.CatchUp
	s.BinanceURL, s.WeightLimit, s.MaxAttempts, s.RetryBase = o.BinanceURL, o.WeightLimit, o.MaxDeliver, o.RetryBase
	if s.SyncSchedule == "" {
		s.SyncSchedule = cluster.ScheduleOff
	}
	if o.Streams.Replicas > 0 {
		s.StreamReplicas = o.Streams.Replicas
	}
	if o.Streams.CandlesMaxAge > 0 {
		s.CandlesMaxAge = o.Streams.CandlesMaxAge
	}
	if o.Streams.EventsMaxAge > 0 {
		s.EventsMaxAge = o.Streams.EventsMaxAge
	}
	return s
}

// databasePath creates the data directory (0700) and returns the database path.
func databasePath(dataDir string) (string, error) {
	if dataDir == "" {
		return "", errors.New("--data-dir: empty; give a directory for candles.db")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("--data-dir %s: %w", dataDir, err)
	}
	return filepath.Join(dataDir, databaseFile), nil
}

// shutdownGrace bounds a clean stop after SIGTERM.
const shutdownGrace = 10 * time.Second

// natsFlags are the connection flags of every service: several servers,
// the user's nkey seed or creds file, TLS files.
type natsFlags struct {
	urls config.List
	set  bool
	c    natsutil.Client
}

func (n *natsFlags) register(fs *flag.FlagSet) {
	n.urls = config.List{defaultNATSURL}
	fs.Var(&natsURLs{n}, "nats-url", "NATS server URL; several (a cluster) comma-separated or by repeating the flag")
	fs.StringVar(&n.c.NKeyFile, "nats-nkey", "", "nkey seed file of this service's user (candlekeep auth init writes DIR/<user>.nk)")
	fs.StringVar(&n.c.CredsFile, "nats-creds", "", "JWT credentials file of this service's user")
	fs.StringVar(&n.c.TLSCA, "nats-tls-ca", "", "CA certificate (PEM) that signed the NATS servers' certificates")
	fs.StringVar(&n.c.TLSCert, "nats-tls-cert", "", "client certificate (PEM) for servers that verify clients")
	fs.StringVar(&n.c.TLSKey, "nats-tls-key", "", "client certificate's key (PEM)")
	n.c.URLs = n.urls
}

// natsURLs is --nats-url: the first use replaces the default, later ones add.
type natsURLs struct{ n *natsFlags }

func (u *natsURLs) String() string {
	if u == nil || u.n == nil {
		return ""
	}
	return u.n.urls.String()
}

func (u *natsURLs) Set(s string) error {
	var l config.List
	if err := l.Set(s); err != nil {
		return err
	}
	if !u.n.set {
		u.n.urls, u.n.set = nil, true
	}
	u.n.urls = append(u.n.urls, l...)
	u.n.c.URLs = u.n.urls
	return nil
}

// dialTimeout bounds a command's connection to NATS (nats.go's default).
const dialTimeout = 2 * time.Second

// connectHint is what a command that cannot reach NATS tells to check.
const connectHint = "is candlekeep running? check --nats-url"

// dial connects a short-lived command (health, status, sync, ...) with
// these flags: one attempt within timeout; the error says what to do (an
// *natsutil.AuthError names the credentials the server rejected).
func (n *natsFlags) dial(name string, timeout time.Duration, hint string) (*nats.Conn, error) {
	if hint == "" {
		hint = connectHint
	}
	return natsutil.Dial(n.c, name, timeout, hint)
}

// serviceExit logs why a service stopped and returns its exit code:
// natsutil.ExitConfig (78) when the server rejected its credentials, which
// a restart does not fix (the systemd units do not restart on 78), 1 for
// other errors.
func serviceExit(log *slog.Logger, service string, err error) int {
	if natsutil.IsAuthError(err) {
		log.Error(service + " cannot run: " + err.Error())
		return natsutil.ExitConfig
	}
	log.Error(service+" stopped", "err", err)
	return 1
}
