package candles

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	StreamSync    = "SYNC"
	StreamJobs    = "JOBS"
	StreamCandles = "CANDLES"
	StreamEvents  = "EVENTS"
)

// StreamOptions sizes the streams. Zero values take the defaults below.
type StreamOptions struct {
	// Replicas is the replication factor (1 embedded, 3 in a cluster).
	Replicas int
	// CandlesMaxAge is how long CANDLES keeps batches. It is the recovery
	// log, so it must outlive the backup interval.
	CandlesMaxAge time.Duration
	// EventsMaxAge is how long EVENTS keeps events; the monthly SLA audit
	// reads a month of them, so less than MinEventsMaxAge is warned about.
	EventsMaxAge time.Duration
	// DuplicateWindow is how long a Nats-Msg-Id is remembered for dedupe.
	DuplicateWindow time.Duration
}

// Defaults for StreamOptions.
const (
	DefaultCandlesMaxAge   = 30 * 24 * time.Hour
	DefaultEventsMaxAge    = 40 * 24 * time.Hour
	DefaultDuplicateWindow = 15 * time.Minute
	syncMaxAge             = 7 * 24 * time.Hour
	jobsMaxAge             = 24 * time.Hour
)

// StreamConfigs returns the configuration of every stream candlekeep uses.
func StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.CandlesMaxAge == 0 {
		o.CandlesMaxAge = DefaultCandlesMaxAge
	}
	if o.EventsMaxAge == 0 {
		o.EventsMaxAge = DefaultEventsMaxAge
	}
	if o.DuplicateWindow == 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	return []jetstream.StreamConfig{{
		Name:        StreamSync,
		Description: "sync requests from the schedule, the nats CLI and candles.api.sync",
		Subjects:    []string{"candles.sync.>"},
		// The sync schedule is a message in this stream; the server
		// publishes its body to candles.sync.request on every tick.
		AllowMsgSchedules: true,
		Retention:         jetstream.LimitsPolicy,
		MaxAge:            syncMaxAge,
		Storage:           jetstream.FileStorage,
		Replicas:          o.Replicas,
		Duplicates:        o.DuplicateWindow,
	}, {
		Name:        StreamJobs,
		Description: "per-pair fetch jobs shared by all fetchers",
		Subjects:    []string{SubjectJobPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      jobsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
	}, {
		Name:        StreamCandles,
		Description: "pages of closed candles; the writer's input and the recovery log",
		Subjects:    []string{SubjectBatchPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.CandlesMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
		// Uncompressed on purpose: the server compresses a block with S2
		// when it is full, reading the whole 8 MB block and building the
		// compressed copy in memory (about 30 MB at once during a
		// backfill, and its CPU) in the process that embeds the server.
		// The disk it saves (about 2/3 of ~190 bytes per candle) matters
		// less than the memory target; see docs/architecture.md, "Memory".
		// Changing this on an existing stream affects new blocks only.
	}, {
		Name:        StreamEvents,
		Description: "lifecycle events of runs, pairs, backups and alerts",
		Subjects:    []string{SubjectEventPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.EventsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
	}}
}

// EnsureStreams creates or updates every stream; safe to call from each
// service at start-up.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range StreamConfigs(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
