package candles

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Event kinds; each is published on candles.events.<kind>.
const (
	KindSyncStarted     = "sync.started"
	KindSyncCompleted   = "sync.completed"
	KindSyncFailed      = "sync.failed"
	KindSyncTimeout     = "sync.timeout"
	KindSyncSkipped     = "sync.skipped"
	KindSyncWaiting     = "sync.waiting"
	KindPairCompleted   = "pair.completed"
	KindPairFailed      = "pair.failed"
	KindRateLimitHit    = "ratelimit.hit"
	KindRateLimitBanned = "ratelimit.banned"
	KindBatchRejected   = "batch.rejected"
	KindWriterActive    = "writer.active"
	KindIntegrityFailed = "integrity.failed"
	// KindResourceRecreated: a stream, consumer or KV bucket a service
	// owns had disappeared and the service created it again.
	KindResourceRecreated = "resource.recreated"
	// KindDiskFull and KindDiskRecovered bracket a time when a store
	// (the database or the NATS store) could not write for lack of space.
	KindDiskFull      = "disk.full"
	KindDiskRecovered = "disk.recovered"
	// KindStreamReplaced: a stream the database keeps a watermark for was
	// created again; see StreamReplaced.
	KindStreamReplaced = "stream.replaced"
)

// EventHeader starts every event.
type EventHeader struct {
	V     int       `json:"v"`
	Kind  string    `json:"kind"`
	Time  time.Time `json:"time"`
	RunID string    `json:"run_id,omitempty"`
}

// Head gives PublishEvent access to the header.
func (h *EventHeader) Head() *EventHeader { return h }

// Event is any event struct embedding EventHeader.
type Event interface{ Head() *EventHeader }

// SyncStarted: a request was accepted and split into pairs. Deadline is when
// the run times out (sync.timeout) if pairs are still open.
type SyncStarted struct {
	EventHeader
	Pairs      []Pair    `json:"pairs"`
	PairsTotal int       `json:"pairs_total"`
	Reason     string    `json:"reason,omitempty"`
	Deadline   time.Time `json:"deadline,omitzero"`
	// Notes say where the run's plan differs from the request, e.g. a start
	// before the exchange's first candles moved to the listing.
	Notes []string `json:"notes,omitempty"`
	// Listing lists the pairs of Pairs whose jobs fetch from the pair's
	// listing (a request with "start":"listing", or a pair whose history
	// from its listing never reached the database): the writer then
	// expects their history to start at the first candle the run's first
	// page brings, even if that page is lost.
	Listing []Pair `json:"listing,omitempty"`
	// Jobs are the jobs of the run, one per pair of Pairs: what each may
	// write. The writer applies a batch only when it carries the token
	// whose hash is here and its candles lie in the job's ranges.
	Jobs []JobGrant `json:"jobs,omitempty"`
}

// JobGrant is what one job of a run may write: candles of its pair opening
// in [From, Until) or in a Repair range, in batches carrying the token
// whose SHA-256 (hex) is TokenSHA256. The token itself is only in the job
// message (Job.Token), which only fetchers read.
type JobGrant struct {
	Symbol      string  `json:"symbol"`
	Interval    string  `json:"interval"`
	From        int64   `json:"from"`
	Until       int64   `json:"until"`
	Repair      []Range `json:"repair,omitempty"`
	TokenSHA256 string  `json:"token_sha256"`
}

// Ranges are the spans of open times the job may write, repairs first.
func (g JobGrant) Ranges() []Range {
	out := make([]Range, 0, len(g.Repair)+1)
	out = append(out, g.Repair...)
	return append(out, Range{From: g.From, Until: g.Until})
}

// SyncCompleted: every pair of the run is written or failed.
type SyncCompleted struct {
	EventHeader
	PairsTotal  int   `json:"pairs_total"`
	PairsOK     int   `json:"pairs_ok"`
	PairsFailed int   `json:"pairs_failed"`
	Candles     int64 `json:"candles"`
	// CandlesNew counts the candles that were not stored before this run;
	// CandlesRefetched those it fetched again (the last stored candle, a
	// re-sync of a stored range). Candles is their sum.
	CandlesNew       int64        `json:"candles_new"`
	CandlesRefetched int64        `json:"candles_refetched"`
	StartedAt        time.Time    `json:"started_at"`
	FinishedAt       time.Time    `json:"finished_at"`
	Failed           []PairFailed `json:"failed,omitempty"`
	// Repaired counts candles written into holes found by the gap audit;
	// GapsRecorded the candle slots newly known not to exist on the exchange.
	Repaired     int64 `json:"repaired"`
	GapsRecorded int64 `json:"gaps_recorded"`
}

// SyncTimeout: the run's deadline passed with pairs still open. What was
// written stays; the open pairs are named.
type SyncTimeout struct {
	EventHeader
	Deadline    time.Time `json:"deadline"`
	OpenPairs   []Pair    `json:"open_pairs"`
	PairsOK     int       `json:"pairs_ok"`
	PairsFailed int       `json:"pairs_failed"`
}

// SyncFailed: a request could not be run at all.
type SyncFailed struct {
	EventHeader
	Reason string `json:"reason"`
}

// SyncSkipped: pairs of a request were left out of its run because a run
// that is already syncing them has not finished (their job is still queued
// or in flight), so runs coalesce instead of piling up behind a long
// backfill. PairsStarted is how many pairs the run does sync; 0 means every
// pair was skipped and the run was not started (no sync.started follows).
type SyncSkipped struct {
	EventHeader
	Pairs        []Pair   `json:"pairs"`
	SyncingRuns  []string `json:"syncing_runs"`
	PairsStarted int      `json:"pairs_started"`
	Reason       string   `json:"reason"`
}

// SyncWaiting: a run could not be planned yet (the exchange or the writer
// cannot be reached) and is retried in RetryIn seconds; after MaxAttempts
// it ends with sync.failed.
type SyncWaiting struct {
	EventHeader
	Reason      string  `json:"reason"`
	Attempt     int     `json:"attempt"`
	MaxAttempts int     `json:"max_attempts"`
	RetryIn     float64 `json:"retry_in_seconds"`
}

// PairCompleted: the writer applied the last page of a pair in a run.
// The counts are as in SyncCompleted, for this pair alone: CandlesNew were
// not stored before the run, CandlesRefetched (Candles − CandlesNew) were
// fetched again, and Repaired (part of CandlesNew) filled holes the gap
// audit found.
type PairCompleted struct {
	EventHeader
	Symbol           string `json:"symbol"`
	Interval         string `json:"interval"`
	Candles          int64  `json:"candles"`
	CandlesNew       int64  `json:"candles_new"`
	CandlesRefetched int64  `json:"candles_refetched"`
	Repaired         int64  `json:"repaired"`
}

// PairFailed: a pair of a run could not be fetched; the others go on.
type PairFailed struct {
	EventHeader
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	Reason   string `json:"reason"`
}

// BatchRejected: a page failed validation and was not written.
type BatchRejected struct {
	EventHeader
	Symbol    string `json:"symbol,omitempty"`
	Interval  string `json:"interval,omitempty"`
	Reason    string `json:"reason"`
	Source    string `json:"source"` // "exchange" (fetcher) or "stream" (writer)
	StreamSeq uint64 `json:"stream_seq,omitempty"`
}

// WriterActive: a writer took the writer lease and now alone applies
// batches; Previous names the holder it took over from, if one was seen.
type WriterActive struct {
	EventHeader
	Holder   string    `json:"holder"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Database string    `json:"database"`
	Since    time.Time `json:"since"`
	Previous string    `json:"previous,omitempty"`
}

// IntegrityFailed: the database file is damaged (a check found problems, or
// a query or write hit a malformed page). The writer has stopped writing to
// it and leaves it untouched until an operator follows Hint.
type IntegrityFailed struct {
	EventHeader
	// Database is the path of the damaged file.
	Database string `json:"database"`
	// Check is what found the damage: "quick_check", "integrity_check" or
	// "query" (an error from a read or write).
	Check string `json:"check"`
	// Problems are the first few findings (SQLite's messages).
	Problems   []string  `json:"problems"`
	DetectedAt time.Time `json:"detected_at"`
	// Hint says how to recover by hand.
	Hint string `json:"hint"`
}

// StreamReplaced: the writer found that a stream is not the one its
// watermark counted in (deleted and created again, or a wiped server
// store). It reset the watermark to 0, reads the stream from its start and
// marked a full gap audit due, since messages of the old stream it never
// applied are gone. Identities are the streams' creation times.
type StreamReplaced struct {
	EventHeader
	Stream       string `json:"stream"`
	OldIdentity  string `json:"old_identity"`
	NewIdentity  string `json:"new_identity"`
	OldWatermark uint64 `json:"old_watermark"`
}

// RateLimitHit: the exchange answered 429.
type RateLimitHit struct {
	EventHeader
	Symbol     string  `json:"symbol,omitempty"`
	Interval   string  `json:"interval,omitempty"`
	RetryAfter float64 `json:"retry_after_seconds"`
	UsedWeight int     `json:"used_weight"`
}

// RateLimitBanned: the exchange answered 418; every fetcher pauses.
type RateLimitBanned struct {
	EventHeader
	Until      time.Time `json:"until"`
	RetryAfter float64   `json:"retry_after_seconds"`
}

// ResourceRecreated: Resource ("stream JOBS", "consumer SYNC > fetcher-requests",
// "kv candlekeep_fetchers") was missing, so Service, its owner, created it
// again; Reason says how it was found missing.
type ResourceRecreated struct {
	EventHeader
	Resource string `json:"resource"`
	Service  string `json:"service"`
	Reason   string `json:"reason"`
}

// DiskFull: a write to Path failed for lack of space (FreeBytes left on its
// filesystem); Service keeps retrying until space returns (disk.recovered).
// While the NATS store is full, EVENTS may not store this event: it reaches
// the subscribers of candles.events.disk.full all the same.
type DiskFull struct {
	EventHeader
	Path      string `json:"path"`
	FreeBytes uint64 `json:"free_bytes"`
	Service   string `json:"service"`
	Reason    string `json:"reason"`
}

// DiskRecovered: writes to Path succeed again; Since is when disk.full was
// reported.
type DiskRecovered struct {
	EventHeader
	Path      string    `json:"path"`
	FreeBytes uint64    `json:"free_bytes"`
	Service   string    `json:"service"`
	Since     time.Time `json:"since"`
}

// NewHeader returns a header for an event of kind in run runID.
func NewHeader(kind, runID string) EventHeader {
	return EventHeader{V: Version, Kind: kind, RunID: runID}
}

// PublishEvent stamps ev with now (if unset) and publishes it to EVENTS.
// msgID, when not empty, makes a re-published event a duplicate JetStream drops.
func PublishEvent(ctx context.Context, js jetstream.JetStream, ev Event, msgID string, now time.Time) error {
	h := ev.Head()
	h.V = Version
	if h.Time.IsZero() {
		h.Time = now.UTC()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode %s event: %w", h.Kind, err)
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := js.Publish(ctx, EventSubject(h.Kind), data, opts...); err != nil {
		return fmt.Errorf("publish %s event: %w", h.Kind, err)
	}
	return nil
}
