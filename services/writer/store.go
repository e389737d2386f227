package writer

import (
	"context"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// Store is what the writer needs from its database. The database, not
// JetStream, is the truth about what has been applied: every stream keeps a
// watermark (the last stream sequence applied) committed in the same
// transaction as the rows it produced. pkg/store implements it.
type Store interface {
	BatchStore
	RunStore
	// Coverage reports what is stored per pair of r (every stored pair, or
	// pair with known gaps or a last sync, when r.Pairs is empty): first
	// and last open time, count, expected count, known gaps, last sync and,
	// only when r.Gaps, the missing ranges.
	Coverage(ctx context.Context, r candles.CoverageRequest) ([]candles.PairCoverage, error)
}

// BatchStore applies CANDLES batches exactly once.
type BatchStore interface {
	// ApplyBatch upserts b and sets the watermark of stream to seq in one
	// transaction; a seq at or below the watermark changes nothing and
	// reports Skipped.
	ApplyBatch(ctx context.Context, stream string, seq uint64, b candles.Batch) (Applied, error)
	// Upsert writes the candles of b (and their known-gap bookkeeping) in
	// one transaction without reading or moving a watermark and without
	// run tracking: the replay of batches that may have been applied.
	Upsert(ctx context.Context, b candles.Batch) (Applied, error)
	// Reject moves the watermark of stream past a batch that can never be
	// applied, writing nothing else.
	Reject(ctx context.Context, stream string, seq uint64) error
	// Advance moves the watermark of stream to seq (never backwards) and
	// writes nothing else: for messages handled elsewhere, such as the run
	// events whose effect RegisterRun and FailPair committed.
	Advance(ctx context.Context, stream string, seq uint64) error
	// Watermark is the last stream sequence applied (0 when none).
	Watermark(ctx context.Context, stream string) (uint64, error)
	// ResetWatermark sets the watermark of stream to seq, also backwards.
	// Only for a stream whose sequence space was reset.
	ResetWatermark(ctx context.Context, stream string, seq uint64) error
	// BindStream ties the watermark of stream to the stream's identity;
	// when the recorded identity differs, it resets the watermark to 0 and
	// marks a full audit due in the same transaction (store.BindStream).
	BindStream(ctx context.Context, stream, identity string) (store.StreamBinding, error)
	// FullAuditDue reports since when a full gap audit is due (zero: none).
	FullAuditDue(ctx context.Context) (time.Time, error)
	// LegacyCutoff is the last sequence of stream whose batches may lack a
	// job token (the pipeline's from before tokens; store.LegacyCutoff).
	LegacyCutoff(ctx context.Context, stream, identity string, lastSeq uint64) (uint64, error)
	// ClearFullAudit clears the full audit flag when run runID, started
	// after it was set, completed every stored pair ok.
	ClearFullAudit(ctx context.Context, runID string) (bool, error)
}

// RunStore tracks which pairs of each sync run are done. A pair is pending
// until its final batch makes it ok or a failure makes it failed; the first
// resolution stands. A run is complete once it is registered and every pair
// it lists is resolved; the store reports that transition exactly once. A
// run with a deadline that is still open when the writer decides the
// deadline has passed is closed instead (timed out): it never completes,
// though later batches of it are still written.
type RunStore interface {
	// RegisterRun records a run, its pairs, its deadline (zero: none) and
	// what each of its jobs may write; registering again changes nothing.
	RegisterRun(ctx context.Context, runID string, pairs []candles.Pair, startedAt time.Time, reason string, deadline time.Time, grants []candles.JobGrant) (complete bool, err error)
	// RunGrant reports where a run stands and what it allows one pair's
	// batches (store.RunGrant).
	RunGrant(ctx context.Context, runID, symbol, interval string) (store.Grant, error)
	// ExpectListing records that runID fetches pairs from their listing,
	// so the pairs count as incomplete until its first page of each is
	// applied (store.ExpectListing).
	ExpectListing(ctx context.Context, runID string, pairs []candles.Pair) error
	// FailPair marks a pending pair of a run failed (creating it if the run
	// or pair is not known yet); an ok or failed pair stays as it is.
	FailPair(ctx context.Context, runID, symbol, interval, reason string) (complete bool, err error)
	// PendingAnnouncements returns the sync.completed events of complete
	// runs not yet marked announced.
	PendingAnnouncements(ctx context.Context) ([]candles.SyncCompleted, error)
	// MarkAnnounced records that sync.completed of runID was published.
	MarkAnnounced(ctx context.Context, runID string) error
	// PendingPairCompletions returns the pair.completed events of pairs
	// finished by a final batch and not yet marked announced.
	PendingPairCompletions(ctx context.Context) ([]candles.PairCompleted, error)
	// MarkPairAnnounced records that pair.completed of the pair was published.
	MarkPairAnnounced(ctx context.Context, runID, symbol, interval string) error
	// RunProgress reports every registered run that is neither complete
	// nor timed out.
	RunProgress(ctx context.Context) ([]Progress, error)
	// NextDeadline is the earliest deadline of the open runs (zero when no
	// open run has one).
	NextDeadline(ctx context.Context) (time.Time, error)
	// TimeOutRuns closes every open run whose deadline is before cutoff,
	// remembering which of its pairs were still pending, and reports how
	// many it closed.
	TimeOutRuns(ctx context.Context, cutoff time.Time) (int, error)
	// PendingTimeouts returns the sync.timeout events of runs closed by
	// TimeOutRuns and not yet marked announced.
	PendingTimeouts(ctx context.Context) ([]candles.SyncTimeout, error)
	// MarkTimeoutAnnounced records that sync.timeout of runID was published.
	MarkTimeoutAnnounced(ctx context.Context, runID string) error
}

// Applied is what applying one batch did (see store.Applied).
type Applied = store.Applied

// Progress is how far an unfinished run has got (see store.Progress).
type Progress = store.Progress

// The shared database package is the writer's Store.
var _ Store = (*store.Store)(nil)
