package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Known gaps are candle slots the exchange was asked for and answered
// without a candle (an outage on its side). They are stored as merged,
// aligned half-open ranges [from_time, until_time) per pair in known_gaps,
// and kept disjoint from the candles table: a slot is either stored, a known
// gap, or missing (a hole to re-fetch). The rules:
//
//   - A batch with a covered span [From, Until) records every slot of the
//     span that has no row after the upsert, except slots before the pair's
//     first stored candle: those precede the listing, they are not outages.
//   - A recorded range merges with the known gaps it overlaps or touches.
//   - Any upsert (ApplyBatch or Upsert) that stores a candle inside a known
//     gap shrinks or splits that gap: the exchange serves the slot now.
//   - A batch without a span records nothing.

// gapsOverlapSQL selects the known gaps of a pair that overlap or (with
// touch) border [?3, ?4]. Gaps are disjoint and sorted, so only the last gap
// starting at or before ?3 can reach into the range from the left; starting
// the key range there keeps the lookup an index seek however many gaps the
// pair has.
func gapsOverlapSQL(touch bool) string {
	cmp := ">"
	if touch {
		cmp = ">="
	}
	return `SELECT from_time, until_time, recorded_at FROM known_gaps
WHERE symbol = ?1 AND interval = ?2
  AND from_time >= COALESCE((SELECT MAX(from_time) FROM known_gaps
                             WHERE symbol = ?1 AND interval = ?2 AND from_time <= ?3), ?3)
  AND from_time <= ?4 AND until_time ` + cmp + ` ?3
ORDER BY from_time`
}

// knownGap is one row of known_gaps.
type knownGap struct {
	from, until int64
	recordedAt  string
}

// ceilAlign is the first open time at or after ms.
func ceilAlign(iv candles.Interval, ms int64) int64 {
	a := iv.Align(ms)
	if a < ms {
		a = iv.Next(a)
	}
	return a
}

// slotsIn counts the candle slots (aligned open times) in [from, until).
func slotsIn(iv candles.Interval, from, until int64) int64 {
	first := ceilAlign(iv, from)
	if first >= until {
		return 0
	}
	return iv.Count(first, iv.Align(until-1))
}

// bookGaps keeps known_gaps consistent with batch b just upserted in tx:
// known gaps that now hold a candle shrink, and the empty slots of the
// batch's covered span are recorded. A batch whose interval does not parse
// (only possible when the store is called directly, DecodeBatch refuses it)
// has no slots to reason about and is left alone.
func (s *Store) bookGaps(ctx context.Context, tx *sql.Tx, b candles.Batch, a *Applied) error {
	iv, err := candles.ParseInterval(b.Interval)
	if err != nil {
		return nil
	}
	if len(b.Candles) > 0 {
		if err := s.fillGaps(ctx, tx, iv, b, a); err != nil {
			return fmt.Errorf("shrink known gaps: %w", err)
		}
	}
	if b.From > 0 && b.Until > b.From {
		if err := s.recordGaps(ctx, tx, iv, b, a); err != nil {
			return fmt.Errorf("record known gaps: %w", err)
		}
	}
	return nil
}

// fillGaps removes the slots of b's candles from the known gaps they fall in,
// splitting a gap where a candle lands in its middle.
func (s *Store) fillGaps(ctx context.Context, tx *sql.Tx, iv candles.Interval, b candles.Batch, a *Applied) error {
	cs := b.Candles
	gaps, err := queryGaps(ctx, tx.StmtContext(ctx, s.gapsOverlap), b.Symbol, b.Interval, cs[0].OpenTime, cs[len(cs)-1].OpenTime)
	if err != nil || len(gaps) == 0 {
		return err
	}
	for _, g := range gaps {
		i := sort.Search(len(cs), func(k int) bool { return cs[k].OpenTime >= g.from })
		j := sort.Search(len(cs), func(k int) bool { return cs[k].OpenTime >= g.until })
		if i == j {
			continue // the gap lies between two of the batch's candles
		}
		if err := deleteGap(ctx, tx, b.Symbol, b.Interval, g.from); err != nil {
			return err
		}
		cur := g.from
		for _, c := range cs[i:j] {
			if c.OpenTime > cur {
				if err := insertGap(ctx, tx, b.Symbol, b.Interval, knownGap{cur, c.OpenTime, g.recordedAt}); err != nil {
					return err
				}
			}
			cur = iv.Next(c.OpenTime)
		}
		if cur < g.until {
			if err := insertGap(ctx, tx, b.Symbol, b.Interval, knownGap{cur, g.until, g.recordedAt}); err != nil {
				return err
			}
		}
		a.GapsFilled += j - i
	}
	return nil
}

// recordGaps records the slots of b's covered span that hold no candle. The
// common case costs nothing: a batch that brings every slot of its span.
// Next cheapest is one count over the span; only a span with empty slots is
// scanned.
func (s *Store) recordGaps(ctx context.Context, tx *sql.Tx, iv candles.Interval, b candles.Batch, a *Applied) error {
	lo, hi := ceilAlign(iv, b.From), ceilAlign(iv, b.Until)
	if lo >= hi {
		return nil
	}
	expected := iv.Count(lo, iv.Align(hi-1))
	var inBatch int64
	for _, c := range b.Candles {
		if c.OpenTime >= lo && c.OpenTime < hi {
			inBatch++
		}
	}
	if inBatch == expected {
		return nil
	}
	var stored int64
	if err := tx.StmtContext(ctx, s.rangeCount).QueryRowContext(ctx, b.Symbol, b.Interval, lo, hi-1).Scan(&stored); err != nil {
		return fmt.Errorf("count candles in [%d, %d): %w", lo, hi, err)
	}
	if stored == expected {
		return nil
	}
	var first int64
	err := tx.QueryRowContext(ctx, `SELECT open_time FROM candles WHERE symbol = ? AND interval = ?
ORDER BY open_time LIMIT 1`, b.Symbol, b.Interval).Scan(&first)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // nothing listed yet: the whole span precedes the listing
	}
	if err != nil {
		return fmt.Errorf("first candle: %w", err)
	}
	lo = max(lo, first)
	if lo >= hi {
		return nil
	}
	holes, err := scanHoles(ctx, tx, iv, b.Symbol, b.Interval, lo, hi)
	if err != nil {
		return err
	}
	now := formatTime(s.now())
	for _, h := range holes {
		n, err := s.addGap(ctx, tx, iv, b.Symbol, b.Interval, h, now)
		if err != nil {
			return err
		}
		a.GapsRecorded += int(n)
	}
	return nil
}

// scanHoles walks the stored open times in [lo, hi) (lo, hi aligned) and
// returns the runs of empty slots as ranges.
func scanHoles(ctx context.Context, tx *sql.Tx, iv candles.Interval, symbol, interval string, lo, hi int64) ([]candles.Range, error) {
	rows, err := tx.QueryContext(ctx, `SELECT open_time FROM candles
WHERE symbol = ? AND interval = ? AND open_time >= ? AND open_time < ? ORDER BY open_time`, symbol, interval, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("scan [%d, %d): %w", lo, hi, err)
	}
	defer rows.Close()
	var out []candles.Range
	expect := lo
	for rows.Next() {
		var t int64
		if err := rows.Scan(&t); err != nil {
			return nil, fmt.Errorf("scan [%d, %d): %w", lo, hi, err)
		}
		if t > expect {
			out = append(out, candles.Range{From: expect, Until: t})
		}
		expect = iv.Next(t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan [%d, %d): %w", lo, hi, err)
	}
	if expect < hi {
		out = append(out, candles.Range{From: expect, Until: hi})
	}
	return out, nil
}

// addGap merges r into the pair's known gaps and returns how many of its
// slots were not known before. The merged range keeps the earliest
// recorded_at of its parts.
func (s *Store) addGap(ctx context.Context, tx *sql.Tx, iv candles.Interval, symbol, interval string, r candles.Range, now string) (int64, error) {
	near, err := queryGaps(ctx, tx.StmtContext(ctx, s.gapsTouch), symbol, interval, r.From, r.Until)
	if err != nil {
		return 0, err
	}
	if len(near) == 1 && near[0].from <= r.From && near[0].until >= r.Until {
		return 0, nil // known already
	}
	merged := knownGap{r.From, r.Until, now}
	earliest, err := parseTime(now)
	if err != nil {
		return 0, err
	}
	fresh := slotsIn(iv, r.From, r.Until)
	for _, g := range near {
		fresh -= slotsIn(iv, max(g.from, r.From), min(g.until, r.Until))
		merged.from, merged.until = min(merged.from, g.from), max(merged.until, g.until)
		if t, err := parseTime(g.recordedAt); err == nil && t.Before(earliest) {
			earliest, merged.recordedAt = t, g.recordedAt
		}
		if err := deleteGap(ctx, tx, symbol, interval, g.from); err != nil {
			return 0, err
		}
	}
	if err := insertGap(ctx, tx, symbol, interval, merged); err != nil {
		return 0, err
	}
	return fresh, nil
}

func queryGaps(ctx context.Context, st *sql.Stmt, symbol, interval string, from, to int64) ([]knownGap, error) {
	rows, err := st.QueryContext(ctx, symbol, interval, from, to)
	if err != nil {
		return nil, fmt.Errorf("known gaps of %s/%s: %w", symbol, interval, err)
	}
	defer rows.Close()
	var out []knownGap
	for rows.Next() {
		var g knownGap
		if err := rows.Scan(&g.from, &g.until, &g.recordedAt); err != nil {
			return nil, fmt.Errorf("known gaps of %s/%s: %w", symbol, interval, err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("known gaps of %s/%s: %w", symbol, interval, err)
	}
	return out, nil
}

func deleteGap(ctx context.Context, tx *sql.Tx, symbol, interval string, from int64) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM known_gaps WHERE symbol = ? AND interval = ? AND from_time = ?`,
		symbol, interval, from); err != nil {
		return fmt.Errorf("delete known gap %s/%s at %d: %w", symbol, interval, from, err)
	}
	return nil
}

func insertGap(ctx context.Context, tx *sql.Tx, symbol, interval string, g knownGap) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO known_gaps (symbol, interval, from_time, until_time, recorded_at)
VALUES (?, ?, ?, ?, ?)`, symbol, interval, g.from, g.until, g.recordedAt); err != nil {
		return fmt.Errorf("insert known gap %s/%s [%d, %d): %w", symbol, interval, g.from, g.until, err)
	}
	return nil
}

// knownGaps returns the known gaps of a pair in order.
func knownGaps(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, p candles.Pair) ([]candles.Range, error) {
	rows, err := q.QueryContext(ctx, `SELECT from_time, until_time FROM known_gaps
WHERE symbol = ? AND interval = ? ORDER BY from_time`, p.Symbol, p.Interval)
	if err != nil {
		return nil, fmt.Errorf("known gaps of %s: %w", p, err)
	}
	defer rows.Close()
	var out []candles.Range
	for rows.Next() {
		var r candles.Range
		if err := rows.Scan(&r.From, &r.Until); err != nil {
			return nil, fmt.Errorf("known gaps of %s: %w", p, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("known gaps of %s: %w", p, err)
	}
	return out, nil
}
