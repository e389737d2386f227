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

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/config"
	"github.com/candlekeep/candlekeep/pkg/logging"
	"github.com/candlekeep/candlekeep/services/fetcher"
)

// Defaults of the flags that DESIGN.md section 3 fixes.
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
		fmt.Fprintf(fs.Output(), "candlekeep %s: %v\n(see candlekeep %s --help)\n", fs.Name(), err, fs.Name())
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

// fetcherFlags configure the fetcher.
type fetcherFlags struct {
	o         fetcher.Options
	symbols   config.List
	intervals config.List
}

func (f *fetcherFlags) register(fs *flag.FlagSet) {
	f.o = fetcher.DefaultOptions()
	f.symbols = config.List(f.o.Symbols)
	f.intervals = config.List(f.o.Intervals)
	fs.StringVar(&f.o.BinanceURL, "binance-url", f.o.BinanceURL, "Binance REST API base URL (the simulator: http://127.0.0.1:9100)")
	fs.Var(&f.symbols, "symbols", "comma-separated symbols to keep (default: the 60 shipped in pkg/candles/symbols.txt)")
	fs.Var(&f.intervals, "intervals", "comma-separated kline intervals to keep: "+strings.Join(candles.IntervalNames(), ","))
	fs.IntVar(&f.o.Lookback, "lookback", f.o.Lookback, "bars fetched for a pair with nothing stored yet")
	fs.IntVar(&f.o.Concurrency, "fetch-concurrency", f.o.Concurrency, "pairs this fetcher fetches at once")
	fs.IntVar(&f.o.MaxDeliver, "max-attempts", f.o.MaxDeliver, "attempts per pair before it fails with pair.failed")
	fs.DurationVar(&f.o.RetryBase, "retry-base", f.o.RetryBase, "first retry delay of a failed pair; doubles per attempt")
	fs.DurationVar(&f.o.RequestTimeout, "request-timeout", f.o.RequestTimeout, "timeout of one HTTP request to the exchange")
	fs.IntVar(&f.o.WeightLimit, "weight-limit", f.o.WeightLimit, "request weight per minute to stay under until exchangeInfo tells the real limit")
	fs.StringVar(&f.o.SyncSchedule, "sync-schedule", f.o.SyncSchedule, `when to sync, installed as a JetStream message schedule: 6-field cron with seconds (UTC), 5-field cron, "@every 30s", "@hourly", "@daily", or "off"`)
	fs.DurationVar(&f.o.SyncTimeout, "sync-timeout", f.o.SyncTimeout, "a run still open after this emits sync.timeout naming its open pairs (0: no deadline)")
	fs.BoolVar(&f.o.CatchUp, "catch-up", f.o.CatchUp, "at start-up, sync at once if stored data is older than one interval")
}

// options returns the fetcher options after parsing.
func (f *fetcherFlags) options() fetcher.Options {
	o := f.o
	o.Symbols = []string(f.symbols)
	o.Intervals = []string(f.intervals)
	return o
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
