package candles

import (
	"fmt"
	"time"
)

// DefaultMaxStaleness is the old setup's freshness SLA: a pair whose newest
// candle closed longer ago than this is stale.
const DefaultMaxStaleness = 26 * time.Hour

// StalenessLimit is how old a pair's newest candle may be before the pair
// is stale: maxStale, or one interval plus 2 h for an interval longer than
// that (a 1w pair is fresh for a week after its last close).
func StalenessLimit(iv Interval, maxStale time.Duration) time.Duration {
	if d := iv.Duration() + 2*time.Hour; d > maxStale {
		return d
	}
	return maxStale
}

// Staleness is now minus the close time of the pair's newest stored candle
// (its next open time); zero when the pair has no candles.
func (p PairCoverage) Staleness(now time.Time) time.Duration {
	iv, err := ParseInterval(p.Interval)
	if err != nil || p.Count == 0 {
		return 0
	}
	return now.Sub(time.UnixMilli(iv.Next(p.Last)))
}

// Status says what state a pair is in and whether that is healthy
// (complete and fresh): "empty", "history from its listing not stored",
// "<n> missing", "stale: …", "never synced", "complete except known gaps"
// or "complete".
func (p PairCoverage) Status(now time.Time, maxStale time.Duration) (string, bool) {
	iv, err := ParseInterval(p.Interval)
	if err != nil {
		return "unknown interval", false
	}
	if p.Count == 0 {
		return "empty", false
	}
	if p.ListingPending {
		return "history from its listing not stored", false
	}
	if m := p.MissingCandles(); m > 0 {
		return fmt.Sprintf("%d missing", m), false
	}
	limit := StalenessLimit(iv, maxStale)
	if age := p.Staleness(now); age > limit {
		return fmt.Sprintf("stale: newest candle closed %s ago (limit %s)", age.Round(time.Minute), limit), false
	}
	if p.LastSync.IsZero() {
		return "never synced", false
	}
	if len(p.KnownGaps) > 0 {
		return "complete except known gaps", true
	}
	return "complete", true
}

// MissingCandles counts the candle slots in the pair's Missing ranges.
func (p PairCoverage) MissingCandles() int64 {
	iv, err := ParseInterval(p.Interval)
	if err != nil {
		return 0
	}
	var n int64
	for _, m := range p.Missing {
		n += iv.Count(iv.Align(m.From), iv.Align(m.Until-1))
	}
	return n
}
