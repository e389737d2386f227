package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Coverage reports, for each pair of r in the order asked, the first and
// last open time, the candle count, the expected count from the pair's
// expected start (ExpectedFrom: the earliest start a request asked for,
// when that is before First) or else First, to Last,
// every known gap of the pair, its last sync and, when r.Gaps, the missing
// ranges: the slots from that start to Last neither stored nor known gaps. A
// pair with no candles has zeros but still shows its known gaps and last
// sync. With no pairs it reports every pair that has candles, known gaps or
// a last sync, ordered by symbol and interval.
//
// Without Gaps each pair costs a few index lookups and the count of its key
// range. With Gaps, a pair whose count and known gaps already account for
// every expected slot costs nothing more; otherwise its open times are
// walked once (holesBetween).
func (s *Store) Coverage(ctx context.Context, r candles.CoverageRequest) ([]candles.PairCoverage, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	defer tx.Rollback()
	pairs := r.Pairs
	if len(pairs) == 0 {
		if pairs, err = coveredPairs(ctx, tx); err != nil {
			return nil, fmt.Errorf("coverage: %w", err)
		}
	}
	stmt, err := tx.PrepareContext(ctx, `SELECT
  COALESCE((SELECT open_time FROM candles WHERE symbol = ?1 AND interval = ?2 ORDER BY open_time ASC LIMIT 1), 0),
  COALESCE((SELECT open_time FROM candles WHERE symbol = ?1 AND interval = ?2 ORDER BY open_time DESC LIMIT 1), 0),
  (SELECT COUNT(*) FROM candles WHERE symbol = ?1 AND interval = ?2),
  (SELECT last_sync FROM pair_state WHERE symbol = ?1 AND interval = ?2),
  COALESCE((SELECT expected_from FROM pair_range WHERE symbol = ?1 AND interval = ?2), 0),
  EXISTS (SELECT 1 FROM pair_range WHERE symbol = ?1 AND interval = ?2 AND listing_run IS NOT NULL)`)
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	defer stmt.Close()
	out := make([]candles.PairCoverage, 0, len(pairs))
	for _, p := range pairs {
		c := candles.PairCoverage{Symbol: p.Symbol, Interval: p.Interval}
		var lastSync sql.NullString
		var expectedFrom int64
		if err := stmt.QueryRowContext(ctx, p.Symbol, p.Interval).Scan(&c.First, &c.Last, &c.Count, &lastSync, &expectedFrom, &c.ListingPending); err != nil {
			return nil, fmt.Errorf("coverage of %s: %w", p, err)
		}
		if lastSync.Valid {
			if c.LastSync, err = parseTime(lastSync.String); err != nil {
				return nil, fmt.Errorf("coverage of %s: %w", p, err)
			}
		}
		if c.KnownGaps, err = knownGaps(ctx, tx, p); err != nil {
			return nil, fmt.Errorf("coverage: %w", err)
		}
		if expectedFrom > 0 && (c.Count == 0 || expectedFrom < c.First) {
			c.ExpectedFrom = expectedFrom
		}
		if c.Count > 0 {
			if err := fillExpected(ctx, tx, &c, r.Gaps); err != nil {
				return nil, fmt.Errorf("coverage of %s: %w", p, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// fillExpected sets Expected of a pair with candles and, when withMissing,
// its Missing ranges. A stored interval that does not parse (only possible
// when the store is written directly, DecodeBatch refuses it) has no slots
// to count: Expected is then the count and nothing is missing.
func fillExpected(ctx context.Context, tx *sql.Tx, c *candles.PairCoverage, withMissing bool) error {
	iv, err := candles.ParseInterval(c.Interval)
	if err != nil {
		c.Expected = c.Count
		return nil
	}
	// The pair's history should start at ExpectedFrom when a request asked
	// for more than is stored: the slots before the first stored candle
	// are then missing too, not out of range.
	from := c.First
	if c.ExpectedFrom > 0 && c.ExpectedFrom < from {
		from = iv.Align(c.ExpectedFrom)
		if from < c.ExpectedFrom {
			from = iv.Next(from)
		}
		from = min(from, c.First)
	}
	c.Expected = iv.Count(from, c.Last)
	if !withMissing {
		return nil
	}
	known := int64(0)
	end := iv.Next(c.Last)
	for _, g := range c.KnownGaps {
		known += slotsIn(iv, max(g.From, from), min(g.Until, end))
	}
	if c.Count+known >= c.Expected {
		return nil // every slot is stored or a known gap
	}
	var holes []candles.Range
	if from < c.First {
		holes = append(holes, candles.Range{From: from, Until: c.First})
	}
	between, err := holesBetween(ctx, tx, iv, c.Symbol, c.Interval)
	if err != nil {
		return err
	}
	c.Missing = subtract(append(holes, between...), c.KnownGaps)
	return nil
}

// holesBetween returns the runs of empty slots between a pair's stored
// candles, in order, from one ordered walk of its open times compared with
// Interval.Next (so calendar months work). Measured against the
// alternatives, the walk in Go is the fastest: about 0.3 s per million rows,
// where a LEAD() window makes SQLite buffer the partition (about 1 s) and a
// NOT EXISTS probe per row costs an index seek each (about 1 s).
func holesBetween(ctx context.Context, tx *sql.Tx, iv candles.Interval, symbol, interval string) ([]candles.Range, error) {
	rows, err := tx.QueryContext(ctx, `SELECT open_time FROM candles WHERE symbol = ? AND interval = ? ORDER BY open_time`,
		symbol, interval)
	if err != nil {
		return nil, fmt.Errorf("scan for holes: %w", err)
	}
	defer rows.Close()
	var out []candles.Range
	var expect int64
	for first := true; rows.Next(); first = false {
		var t int64
		if err := rows.Scan(&t); err != nil {
			return nil, fmt.Errorf("scan for holes: %w", err)
		}
		if !first && t > expect {
			out = append(out, candles.Range{From: expect, Until: t})
		}
		expect = iv.Next(t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan for holes: %w", err)
	}
	return out, nil
}

// subtract returns the parts of the sorted, disjoint ranges a not covered by
// the sorted, disjoint ranges b.
func subtract(a, b []candles.Range) []candles.Range {
	var out []candles.Range
	j := 0
	for _, r := range a {
		from := r.From
		for j < len(b) && b[j].Until <= from {
			j++
		}
		for k := j; k < len(b) && b[k].From < r.Until; k++ {
			if b[k].From > from {
				out = append(out, candles.Range{From: from, Until: b[k].From})
			}
			from = max(from, b[k].Until)
		}
		if from < r.Until {
			out = append(out, candles.Range{From: from, Until: r.Until})
		}
	}
	return out
}

// coveredPairs lists every pair with candles, known gaps or a last sync,
// ordered by symbol and interval.
func coveredPairs(ctx context.Context, tx *sql.Tx) ([]candles.Pair, error) {
	pairs, err := storedPairs(ctx, tx)
	if err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT symbol, interval FROM known_gaps
UNION SELECT symbol, interval FROM pair_state UNION SELECT symbol, interval FROM pair_range`)
	if err != nil {
		return nil, fmt.Errorf("list pairs: %w", err)
	}
	defer rows.Close()
	seen := make(map[candles.Pair]bool, len(pairs))
	for _, p := range pairs {
		seen[p] = true
	}
	added := false
	for rows.Next() {
		var p candles.Pair
		if err := rows.Scan(&p.Symbol, &p.Interval); err != nil {
			return nil, fmt.Errorf("list pairs: %w", err)
		}
		if !seen[p] {
			seen[p] = true
			pairs = append(pairs, p)
			added = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list pairs: %w", err)
	}
	if added {
		sort.Slice(pairs, func(i, j int) bool {
			if pairs[i].Symbol != pairs[j].Symbol {
				return pairs[i].Symbol < pairs[j].Symbol
			}
			return pairs[i].Interval < pairs[j].Interval
		})
	}
	return pairs, nil
}

// storedPairs lists the distinct (symbol, interval) prefixes of the primary
// key by skipping from one to the next, one index seek per pair, instead of
// reading every row.
func storedPairs(ctx context.Context, tx *sql.Tx) ([]candles.Pair, error) {
	var out []candles.Pair
	var p candles.Pair
	err := tx.QueryRowContext(ctx, `SELECT symbol, interval FROM candles ORDER BY symbol, interval LIMIT 1`).Scan(&p.Symbol, &p.Interval)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list pairs: %w", err)
	}
	next, err := tx.PrepareContext(ctx, `SELECT symbol, interval FROM candles
WHERE (symbol, interval) > (?, ?) ORDER BY symbol, interval LIMIT 1`)
	if err != nil {
		return nil, fmt.Errorf("list pairs: %w", err)
	}
	defer next.Close()
	for {
		out = append(out, p)
		err := next.QueryRowContext(ctx, p.Symbol, p.Interval).Scan(&p.Symbol, &p.Interval)
		if errors.Is(err, sql.ErrNoRows) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list pairs: %w", err)
		}
	}
}
