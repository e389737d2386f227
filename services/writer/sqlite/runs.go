package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/writer"
)

// RegisterRun records run runID with its pairs (duplicates counted once).
// Registering again changes nothing; pairs resolved by batches or failures
// that arrived before the registration stay resolved. It reports whether the
// registration completed the run (every pair already resolved).
func (s *Store) RegisterRun(ctx context.Context, runID string, pairs []candles.Pair, startedAt time.Time, reason string) (bool, error) {
	if runID == "" {
		return false, errors.New("register run: empty run_id")
	}
	seen := make(map[candles.Pair]bool, len(pairs))
	distinct := pairs[:0:0]
	for _, p := range pairs {
		if !seen[p] {
			seen[p] = true
			distinct = append(distinct, p)
		}
	}
	var complete bool
	err := s.inTx(ctx, "register run "+runID, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO runs (run_id, pairs_total, reason, started_at, registered_at)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING`,
			runID, len(distinct), reason, formatTime(startedAt), formatTime(s.now()))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // already registered
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO run_pairs (run_id, symbol, interval, listed)
VALUES (?, ?, ?, 1) ON CONFLICT (run_id, symbol, interval) DO UPDATE SET listed = 1`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, p := range distinct {
			if _, err := stmt.ExecContext(ctx, runID, p.Symbol, p.Interval); err != nil {
				return fmt.Errorf("pair %s: %w", p, err)
			}
		}
		complete, err = s.finishRun(ctx, tx, runID)
		return err
	})
	return complete, err
}

// FailPair marks a pair of run runID failed with reason, unless a final
// batch already made it ok or it already failed (the first reason stays). It
// reports whether this completed the run.
func (s *Store) FailPair(ctx context.Context, runID, symbol, interval, reason string) (bool, error) {
	if runID == "" {
		return false, errors.New("fail pair: empty run_id")
	}
	var complete bool
	err := s.inTx(ctx, fmt.Sprintf("fail pair %s/%s of run %s", symbol, interval, runID), func(tx *sql.Tx) error {
		now := formatTime(s.now())
		_, err := tx.ExecContext(ctx, `INSERT INTO run_pairs (run_id, symbol, interval, status, reason, resolved_at)
VALUES (?1, ?2, ?3, 'failed', ?4, ?5)
ON CONFLICT (run_id, symbol, interval) DO UPDATE SET status = 'failed', reason = ?4, resolved_at = ?5
WHERE run_pairs.status = 'pending'`, runID, symbol, interval, reason, now)
		if err != nil {
			return err
		}
		complete, err = s.finishRun(ctx, tx, runID)
		return err
	})
	return complete, err
}

// PendingAnnouncements returns a sync.completed event for every complete run
// not yet marked announced, oldest first. Each event's time is the run's
// finished_at, so a late publish still tells when the run ended.
func (s *Store) PendingAnnouncements(ctx context.Context) ([]candles.SyncCompleted, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("pending announcements: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT run_id, pairs_total, started_at, finished_at FROM runs
WHERE finished_at IS NOT NULL AND announced = 0 ORDER BY finished_at, run_id`)
	if err != nil {
		return nil, fmt.Errorf("pending announcements: %w", err)
	}
	var out []candles.SyncCompleted
	for rows.Next() {
		var ev candles.SyncCompleted
		var runID, started, finished string
		if err := rows.Scan(&runID, &ev.PairsTotal, &started, &finished); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending announcements: %w", err)
		}
		ev.EventHeader = candles.NewHeader(candles.KindSyncCompleted, runID)
		if ev.StartedAt, err = parseTime(started); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending announcements: run %s: %w", runID, err)
		}
		if ev.FinishedAt, err = parseTime(finished); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending announcements: run %s: %w", runID, err)
		}
		ev.Time = ev.FinishedAt
		out = append(out, ev)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending announcements: %w", err)
	}
	for i := range out {
		if err := runSummary(ctx, tx, &out[i]); err != nil {
			return nil, fmt.Errorf("pending announcements: run %s: %w", out[i].RunID, err)
		}
	}
	return out, nil
}

// runSummary fills the pair counts, candle total and failures of ev.
func runSummary(ctx context.Context, tx *sql.Tx, ev *candles.SyncCompleted) error {
	err := tx.QueryRowContext(ctx, `SELECT
  COALESCE(SUM(listed = 1 AND status = 'ok'), 0),
  COALESCE(SUM(listed = 1 AND status = 'failed'), 0),
  COALESCE(SUM(candles), 0)
FROM run_pairs WHERE run_id = ?`, ev.RunID).Scan(&ev.PairsOK, &ev.PairsFailed, &ev.Candles)
	if err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT symbol, interval, reason, resolved_at FROM run_pairs
WHERE run_id = ? AND listed = 1 AND status = 'failed' ORDER BY symbol, interval`, ev.RunID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		f := candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, ev.RunID)}
		var resolved sql.NullString
		if err := rows.Scan(&f.Symbol, &f.Interval, &f.Reason, &resolved); err != nil {
			return err
		}
		if resolved.Valid {
			if f.Time, err = parseTime(resolved.String); err != nil {
				return err
			}
		}
		ev.Failed = append(ev.Failed, f)
	}
	return rows.Err()
}

// MarkAnnounced records that the sync.completed event of runID was published.
func (s *Store) MarkAnnounced(ctx context.Context, runID string) error {
	return s.inTx(ctx, "mark run "+runID+" announced", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE runs SET announced = 1 WHERE run_id = ?`, runID)
		return err
	})
}

// PendingPairCompletions returns a pair.completed event for every pair made
// ok by a final batch and not yet marked announced, oldest first.
func (s *Store) PendingPairCompletions(ctx context.Context) ([]candles.PairCompleted, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT run_id, symbol, interval, candles, resolved_at FROM run_pairs
WHERE status = 'ok' AND announced = 0 ORDER BY resolved_at, run_id, symbol, interval`)
	if err != nil {
		return nil, fmt.Errorf("pending pair completions: %w", err)
	}
	defer rows.Close()
	var out []candles.PairCompleted
	for rows.Next() {
		var ev candles.PairCompleted
		var runID string
		var resolved sql.NullString
		if err := rows.Scan(&runID, &ev.Symbol, &ev.Interval, &ev.Candles, &resolved); err != nil {
			return nil, fmt.Errorf("pending pair completions: %w", err)
		}
		ev.EventHeader = candles.NewHeader(candles.KindPairCompleted, runID)
		if resolved.Valid {
			if ev.Time, err = parseTime(resolved.String); err != nil {
				return nil, fmt.Errorf("pending pair completions: %w", err)
			}
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending pair completions: %w", err)
	}
	return out, nil
}

// MarkPairAnnounced records that the pair.completed event of the pair was
// published.
func (s *Store) MarkPairAnnounced(ctx context.Context, runID, symbol, interval string) error {
	return s.inTx(ctx, fmt.Sprintf("mark pair %s/%s of run %s announced", symbol, interval, runID), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE run_pairs SET announced = 1 WHERE run_id = ? AND symbol = ? AND interval = ?`,
			runID, symbol, interval)
		return err
	})
}

// RunProgress reports every registered run that is not complete, oldest
// first. PairsDone counts listed pairs that are ok or failed.
func (s *Store) RunProgress(ctx context.Context) ([]writer.Progress, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT r.run_id, r.pairs_total, r.started_at,
  (SELECT COUNT(*) FROM run_pairs p WHERE p.run_id = r.run_id AND p.listed = 1 AND p.status != 'pending'),
  (SELECT COALESCE(SUM(p.candles), 0) FROM run_pairs p WHERE p.run_id = r.run_id)
FROM runs r WHERE r.finished_at IS NULL ORDER BY r.started_at, r.run_id`)
	if err != nil {
		return nil, fmt.Errorf("run progress: %w", err)
	}
	defer rows.Close()
	var out []writer.Progress
	for rows.Next() {
		var p writer.Progress
		var started string
		if err := rows.Scan(&p.RunID, &p.PairsTotal, &started, &p.PairsDone, &p.Candles); err != nil {
			return nil, fmt.Errorf("run progress: %w", err)
		}
		if p.StartedAt, err = parseTime(started); err != nil {
			return nil, fmt.Errorf("run progress: run %s: %w", p.RunID, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("run progress: %w", err)
	}
	return out, nil
}

// Coverage reports first and last open time and the candle count of each
// pair, in the order asked, with zeros for a pair with no candles. With no
// pairs it reports every stored pair, ordered by symbol and interval. MIN and
// MAX are single primary-key lookups; the count walks the pair's key range.
func (s *Store) Coverage(ctx context.Context, pairs []candles.Pair) ([]candles.PairCoverage, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	defer tx.Rollback()
	if len(pairs) == 0 {
		if pairs, err = storedPairs(ctx, tx); err != nil {
			return nil, fmt.Errorf("coverage: %w", err)
		}
	}
	stmt, err := tx.PrepareContext(ctx, `SELECT
  COALESCE((SELECT open_time FROM candles WHERE symbol = ?1 AND interval = ?2 ORDER BY open_time ASC LIMIT 1), 0),
  COALESCE((SELECT open_time FROM candles WHERE symbol = ?1 AND interval = ?2 ORDER BY open_time DESC LIMIT 1), 0),
  (SELECT COUNT(*) FROM candles WHERE symbol = ?1 AND interval = ?2)`)
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	defer stmt.Close()
	out := make([]candles.PairCoverage, 0, len(pairs))
	for _, p := range pairs {
		c := candles.PairCoverage{Symbol: p.Symbol, Interval: p.Interval}
		if err := stmt.QueryRowContext(ctx, p.Symbol, p.Interval).Scan(&c.First, &c.Last, &c.Count); err != nil {
			return nil, fmt.Errorf("coverage of %s: %w", p, err)
		}
		out = append(out, c)
	}
	return out, nil
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
