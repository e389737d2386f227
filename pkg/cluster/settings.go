// Package cluster holds what candlekeep's processes share as one system: the
// cluster-wide settings (the pair set, the schedule, the exchange, retries,
// stream sizing), stored once in the JetStream KV bucket ConfigBucket, one
// key per setting named like its flag, and the one code path that
// provisions streams from them.
//
// A process joins with Join: keys missing from the bucket are seeded with
// the process's values (create-only, so a later process never writes its
// defaults over what is there), flags the operator gave explicitly are
// compared with the stored values — `candlekeep up` and `candlekeep config
// set` write them, any other process warns and follows the store — and a
// watch keeps every process on the current values.
//
//	nats kv ls candlekeep_config
//	nats kv get candlekeep_config sync-schedule --raw
//	nats kv put candlekeep_config sync-schedule "@every 15s"
package cluster

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Defaults of the settings.
const (
	DefaultBinanceURL     = "https://api.binance.com"
	DefaultInterval       = "4h"
	DefaultLookback       = 1000
	DefaultMaxAttempts    = 4 // the first try and three retries
	DefaultRetryBase      = 2 * time.Second
	DefaultWeightLimit    = 6000
	DefaultSyncTimeout    = 30 * time.Minute
	DefaultStreamReplicas = 1
)

// Settings are the cluster-wide settings. Every field is one key of
// ConfigBucket and one flag of the same name.
type Settings struct {
	// Symbols × Intervals is the configured pair set.
	Symbols   []string
	Intervals []string
	// Lookback is how many bars a pair with nothing stored starts with.
	Lookback int
	// SyncSchedule is installed as a JetStream message schedule.
	SyncSchedule string
	// SyncTimeout is the run deadline (sync.timeout); 0 means none.
	SyncTimeout time.Duration
	// BinanceURL is the exchange every fetcher asks and the database is
	// bound to.
	BinanceURL string
	// WeightLimit is the request weight per minute used until the
	// exchange's exchangeInfo tells the real limit.
	WeightLimit int
	// MaxAttempts and RetryBase shape a pair's retries.
	MaxAttempts int
	RetryBase   time.Duration
	// CatchUp syncs at start-up when stored data is older than one interval.
	CatchUp bool
	// StreamReplicas, CandlesMaxAge and EventsMaxAge size the streams.
	StreamReplicas int
	CandlesMaxAge  time.Duration
	EventsMaxAge   time.Duration
}

// Defaults returns the production settings.
func Defaults() Settings {
	return Settings{
		Symbols:        candles.DefaultSymbols(),
		Intervals:      []string{DefaultInterval},
		Lookback:       DefaultLookback,
		SyncSchedule:   DefaultSyncSchedule,
		SyncTimeout:    DefaultSyncTimeout,
		BinanceURL:     DefaultBinanceURL,
		WeightLimit:    DefaultWeightLimit,
		MaxAttempts:    DefaultMaxAttempts,
		RetryBase:      DefaultRetryBase,
		CatchUp:        true,
		StreamReplicas: DefaultStreamReplicas,
		CandlesMaxAge:  candles.DefaultCandlesMaxAge,
		EventsMaxAge:   candles.DefaultEventsMaxAge,
	}
}

// Streams returns the stream sizing of s.
func (s Settings) Streams() candles.StreamOptions {
	return candles.StreamOptions{Replicas: s.StreamReplicas, CandlesMaxAge: s.CandlesMaxAge, EventsMaxAge: s.EventsMaxAge}
}

// Pairs returns the configured pair set, symbols first.
func (s Settings) Pairs() []candles.Pair {
	out := make([]candles.Pair, 0, len(s.Symbols)*len(s.Intervals))
	for _, sym := range s.Symbols {
		for _, iv := range s.Intervals {
			out = append(out, candles.Pair{Symbol: sym, Interval: iv})
		}
	}
	return out
}

// Key is one setting: its name (the flag and the KV key), what it means and
// how it reads and writes as text.
type Key struct {
	Name  string
	Usage string
	get   func(*Settings) string
	set   func(*Settings, string) error
}

// Show returns v as it may be shown in logs, events and listings: a URL
// may carry user info or a key in its query, so URL settings are redacted.
func (k Key) Show(v string) string {
	switch k.Name {
	case "binance-url":
		return candles.RedactURL(v)
	}
	return v
}

// Get formats the key's value in s.
func (k Key) Get(s *Settings) string { return k.get(s) }

// Set parses v into s and validates it; the error names the key as a flag.
func (k Key) Set(s *Settings, v string) error {
	if err := k.set(s, strings.TrimSpace(v)); err != nil {
		return fmt.Errorf("--%s %q: %w", k.Name, k.Show(v), err)
	}
	return nil
}

// Keys returns every setting, in the order `config get` lists them.
func Keys() []Key {
	return []Key{
		{"symbols", "comma-separated symbols to keep (default: the 60 shipped in pkg/candles/symbols.txt)",
			func(s *Settings) string { return strings.Join(s.Symbols, ",") },
			func(s *Settings, v string) error {
				l, err := list(v)
				if err != nil {
					return err
				}
				if len(l) > candles.MaxSymbols {
					return fmt.Errorf("%d symbols; at most %d", len(l), candles.MaxSymbols)
				}
				for _, sym := range l {
					if !candles.ValidSymbol(sym) {
						return fmt.Errorf("%q is not a symbol (2-20 of A-Z and 0-9, such as BTCUSDT)", sym)
					}
				}
				s.Symbols = l
				return nil
			}},
		{"intervals", "comma-separated kline intervals to keep: " + strings.Join(candles.IntervalNames(), ","),
			func(s *Settings) string { return strings.Join(s.Intervals, ",") },
			func(s *Settings, v string) error {
				l, err := list(v)
				if err != nil {
					return err
				}
				for _, iv := range l {
					if _, err := candles.ParseInterval(iv); err != nil {
						return fmt.Errorf("%q is not an interval; want one of %s", iv, strings.Join(candles.IntervalNames(), ","))
					}
				}
				s.Intervals = l
				return nil
			}},
		{"lookback", "bars fetched for a pair with nothing stored yet",
			func(s *Settings) string { return strconv.Itoa(s.Lookback) },
			intSetter(func(s *Settings) *int { return &s.Lookback }, 1, candles.MaxLookback, "bars")},
		{"sync-schedule", `when to sync, installed as a JetStream message schedule: 6-field cron with seconds (UTC), 5-field cron, "@every 30s", "@hourly", "@daily", or "off"`,
			func(s *Settings) string { return s.SyncSchedule },
			func(s *Settings, v string) error {
				if _, _, err := ParseSchedule(v, time.Now()); err != nil {
					return errors.New(strings.TrimPrefix(err.Error(), fmt.Sprintf("--sync-schedule %q: ", v)))
				}
				s.SyncSchedule = v
				return nil
			}},
		{"sync-timeout", "a run still open after this emits sync.timeout naming its open pairs (0: no deadline)",
			func(s *Settings) string { return s.SyncTimeout.String() },
			durSetter(func(s *Settings) *time.Duration { return &s.SyncTimeout }, 0)},
		{"binance-url", "Binance REST API base URL (the simulator: http://127.0.0.1:9100); the database is bound to it",
			func(s *Settings) string { return s.BinanceURL },
			func(s *Settings, v string) error {
				u, err := url.Parse(v)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return fmt.Errorf("want an http(s) URL such as %s", DefaultBinanceURL)
				}
				s.BinanceURL = strings.TrimRight(v, "/")
				return nil
			}},
		{"weight-limit", "request weight per minute to stay under until exchangeInfo tells the real limit",
			func(s *Settings) string { return strconv.Itoa(s.WeightLimit) },
			intSetter(func(s *Settings) *int { return &s.WeightLimit }, 10, 1_000_000_000, "weight per minute")},
		{"max-attempts", "attempts in a row at one page, with no page stored in between, before the pair fails with pair.failed",
			func(s *Settings) string { return strconv.Itoa(s.MaxAttempts) },
			intSetter(func(s *Settings) *int { return &s.MaxAttempts }, 1, 100, "attempts")},
		{"retry-base", "first retry delay of a failed pair; doubles per attempt",
			func(s *Settings) string { return s.RetryBase.String() },
			durSetter(func(s *Settings) *time.Duration { return &s.RetryBase }, time.Millisecond)},
		{"catch-up", "at start-up, sync at once if stored data is older than one interval",
			func(s *Settings) string { return strconv.FormatBool(s.CatchUp) },
			func(s *Settings, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return errors.New("want true or false")
				}
				s.CatchUp = b
				return nil
			}},
		{"stream-replicas", "replicas of every stream and KV bucket (1 for one server, 3 for a 3-node cluster)",
			func(s *Settings) string { return strconv.Itoa(s.StreamReplicas) },
			intSetter(func(s *Settings) *int { return &s.StreamReplicas }, 1, 5, "replicas")},
		{"candles-max-age", "how long the CANDLES stream (the recovery log) keeps batches; must outlive the backup interval",
			func(s *Settings) string { return s.CandlesMaxAge.String() },
			durSetter(func(s *Settings) *time.Duration { return &s.CandlesMaxAge }, time.Hour)},
		{"events-max-age", "how long the EVENTS stream keeps events (the monthly SLA audit needs at least 35 days)",
			func(s *Settings) string { return s.EventsMaxAge.String() },
			durSetter(func(s *Settings) *time.Duration { return &s.EventsMaxAge }, time.Hour)},
	}
}

// KeyByName returns the key called name.
func KeyByName(name string) (Key, bool) {
	i := slices.IndexFunc(Keys(), func(k Key) bool { return k.Name == name })
	if i < 0 {
		return Key{}, false
	}
	return Keys()[i], true
}

// KeyNames lists the keys' names.
func KeyNames() []string {
	var out []string
	for _, k := range Keys() {
		out = append(out, k.Name)
	}
	return out
}

// Validate checks every setting by formatting and parsing it again, so a
// Settings built in code obeys the same rules as flags and the store.
func (s Settings) Validate() error {
	var probe Settings
	for _, k := range Keys() {
		if err := k.Set(&probe, k.Get(&s)); err != nil {
			return err
		}
	}
	return nil
}

// RegisterFlags registers one flag per key on fs, backed by s.
func RegisterFlags(fs *flag.FlagSet, s *Settings) {
	for _, k := range Keys() {
		fs.Var(&keyFlag{k: k, s: s}, k.Name, k.Usage)
	}
}

// keyFlag is a flag.Value writing one key of a Settings.
type keyFlag struct {
	k Key
	s *Settings
}

func (f *keyFlag) String() string {
	if f.s == nil {
		return ""
	}
	return f.k.Get(f.s)
}

func (f *keyFlag) Set(v string) error {
	if err := f.k.set(f.s, strings.TrimSpace(v)); err != nil {
		return err
	}
	return nil
}

// IsBoolFlag lets --catch-up stand alone.
func (f *keyFlag) IsBoolFlag() bool { return f.k.Name == "catch-up" }

func list(v string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty list; name at least one")
	}
	return out, nil
}

func intSetter(field func(*Settings) *int, lo, hi int, unit string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want %d to %d %s", lo, hi, unit)
		}
		*field(s) = n
		return nil
	}
}

func durSetter(field func(*Settings) *time.Duration, least time.Duration) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || (d != 0 && d < least) || (d == 0 && least > 0) {
			if least == 0 {
				return errors.New("want a duration such as 30m, or 0 for none")
			}
			return fmt.Errorf("want a duration of at least %v, such as 720h", least)
		}
		*field(s) = d
		return nil
	}
}
