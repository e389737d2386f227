package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// RegisterRun records run runID with its pairs (duplicates counted once),
// its deadline (zero: none) and what each job may write (grants, from
// sync.started; see RunGrant). Registering again changes nothing; pairs
// resolved by batches or failures that arrived before the registration stay
// resolved. It reports whether the registration completed the run (every
// pair already resolved).
func (s *Store) RegisterRun(ctx context.Context, runID string, pairs []candles.Pair, startedAt time.Time, reason string, deadline time.Time, grants []candles.JobGrant) (bool, error) {
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
		var dl sql.NullInt64
		if !deadline.IsZero() {
			dl = sql.NullInt64{Int64: deadline.UnixMilli(), Valid: true}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO runs (run_id, pairs_total, reason, started_at, registered_at, deadline)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING`,
			runID, len(distinct), reason, formatTime(startedAt), formatTime(s.now()), dl)
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
		for _, g := range grants {
			p := candles.Pair{Symbol: g.Symbol, Interval: g.Interval}
			if !seen[p] {
				continue // a grant for a pair the run does not list grants nothing
			}
			ranges, err := json.Marshal(encodeRanges(g.Ranges()))
			if err != nil {
				return fmt.Errorf("pair %s: %w", p, err)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE run_pairs SET token_sha256 = ?, ranges = ?
WHERE run_id = ? AND symbol = ? AND interval = ?`, g.TokenSHA256, string(ranges), runID, g.Symbol, g.Interval); err != nil {
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

// runSummary fills the pair counts, candle (new and re-fetched), repair and gap totals and the
// failures of ev.
func runSummary(ctx context.Context, tx *sql.Tx, ev *candles.SyncCompleted) error {
	err := tx.QueryRowContext(ctx, `SELECT
  COALESCE(SUM(listed = 1 AND status = 'ok'), 0),
  COALESCE(SUM(listed = 1 AND status = 'failed'), 0),
  COALESCE(SUM(candles), 0),
  COALESCE(SUM(inserted), 0),
  COALESCE(SUM(repaired), 0),
  COALESCE(SUM(gaps_recorded), 0)
FROM run_pairs WHERE run_id = ?`, ev.RunID).Scan(&ev.PairsOK, &ev.PairsFailed, &ev.Candles, &ev.CandlesNew, &ev.Repaired, &ev.GapsRecorded)
	if err != nil {
		return err
	}
	// A candle is new once, however often its run fetched it (a page
	// re-published by a retried job is counted in candles again).
	ev.CandlesNew = min(ev.CandlesNew, ev.Candles)
	ev.CandlesRefetched = ev.Candles - ev.CandlesNew
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
	rows, err := s.r.QueryContext(ctx, `SELECT run_id, symbol, interval, candles, inserted, repaired, resolved_at FROM run_pairs
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
		if err := rows.Scan(&runID, &ev.Symbol, &ev.Interval, &ev.Candles, &ev.CandlesNew, &ev.Repaired, &resolved); err != nil {
			return nil, fmt.Errorf("pending pair completions: %w", err)
		}
		// As in runSummary: a candle is new once, however often a retried
		// job re-published its page.
		ev.CandlesNew = min(ev.CandlesNew, ev.Candles)
		ev.CandlesRefetched = ev.Candles - ev.CandlesNew
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

// RunProgress reports every registered run that is neither complete nor
// timed out, oldest first. PairsDone counts listed pairs that are ok or
// failed.
func (s *Store) RunProgress(ctx context.Context) ([]Progress, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT r.run_id, r.pairs_total, r.started_at, r.deadline,
  (SELECT COUNT(*) FROM run_pairs p WHERE p.run_id = r.run_id AND p.listed = 1 AND p.status != 'pending'),
  (SELECT COALESCE(SUM(p.candles), 0) FROM run_pairs p WHERE p.run_id = r.run_id)
FROM runs r WHERE r.finished_at IS NULL AND r.timed_out_at IS NULL ORDER BY r.started_at, r.run_id`)
	if err != nil {
		return nil, fmt.Errorf("run progress: %w", err)
	}
	defer rows.Close()
	var out []Progress
	for rows.Next() {
		var p Progress
		var started string
		var deadline sql.NullInt64
		if err := rows.Scan(&p.RunID, &p.PairsTotal, &started, &deadline, &p.PairsDone, &p.Candles); err != nil {
			return nil, fmt.Errorf("run progress: %w", err)
		}
		if deadline.Valid {
			p.Deadline = time.UnixMilli(deadline.Int64).UTC()
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

// NextDeadline returns the earliest deadline of the runs neither complete
// nor timed out, or the zero time when none has one.
func (s *Store) NextDeadline(ctx context.Context) (time.Time, error) {
	var ms sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT MIN(deadline) FROM runs
WHERE finished_at IS NULL AND timed_out_at IS NULL AND deadline IS NOT NULL`).Scan(&ms); err != nil {
		return time.Time{}, fmt.Errorf("next run deadline: %w", err)
	}
	if !ms.Valid {
		return time.Time{}, nil
	}
	return time.UnixMilli(ms.Int64).UTC(), nil
}

// TimeOutRuns closes every run that is neither complete nor timed out and
// whose deadline is before cutoff: its pending listed pairs are marked as
// open at the timeout and timed_out_at is set, which keeps the run from ever
// completing. Batches and failures that arrive later still resolve its pairs
// (and write their candles) but change neither the run nor its sync.timeout
// event. It reports how many runs it closed.
func (s *Store) TimeOutRuns(ctx context.Context, cutoff time.Time) (int, error) {
	var closed int
	err := s.inTx(ctx, "time out runs", func(tx *sql.Tx) error {
		closed = 0
		rows, err := tx.QueryContext(ctx, `SELECT run_id FROM runs
WHERE finished_at IS NULL AND timed_out_at IS NULL AND deadline IS NOT NULL AND deadline < ?
ORDER BY deadline, run_id`, cutoff.UnixMilli())
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		now := formatTime(s.now())
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, `UPDATE run_pairs SET timed_out = 1
WHERE run_id = ? AND listed = 1 AND status = 'pending'`, id); err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE runs SET timed_out_at = ? WHERE run_id = ?`, now, id); err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
		}
		closed = len(ids)
		return nil
	})
	return closed, err
}

// PendingTimeouts returns a sync.timeout event for every run closed by
// TimeOutRuns and not yet marked announced, oldest first. The event's time
// is when the run was closed; its open pairs and counts are as they stood
// then, whatever arrived since.
func (s *Store) PendingTimeouts(ctx context.Context) ([]candles.SyncTimeout, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("pending timeouts: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT run_id, deadline, timed_out_at FROM runs
WHERE timed_out_at IS NOT NULL AND timeout_announced = 0 ORDER BY deadline, run_id`)
	if err != nil {
		return nil, fmt.Errorf("pending timeouts: %w", err)
	}
	var out []candles.SyncTimeout
	for rows.Next() {
		var runID, closedAt string
		var deadline int64
		if err := rows.Scan(&runID, &deadline, &closedAt); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending timeouts: %w", err)
		}
		ev := candles.SyncTimeout{EventHeader: candles.NewHeader(candles.KindSyncTimeout, runID),
			Deadline: time.UnixMilli(deadline).UTC(), OpenPairs: []candles.Pair{}}
		if ev.Time, err = parseTime(closedAt); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending timeouts: run %s: %w", runID, err)
		}
		out = append(out, ev)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending timeouts: %w", err)
	}
	for i := range out {
		if err := timeoutSummary(ctx, tx, &out[i]); err != nil {
			return nil, fmt.Errorf("pending timeouts: run %s: %w", out[i].RunID, err)
		}
	}
	return out, nil
}

// timeoutSummary fills the open pairs and the ok and failed counts of ev as
// they were when the run timed out: a pair open then counts as open, even if
// a late batch resolved it since.
func timeoutSummary(ctx context.Context, tx *sql.Tx, ev *candles.SyncTimeout) error {
	if err := tx.QueryRowContext(ctx, `SELECT
  COALESCE(SUM(status = 'ok' AND timed_out = 0), 0),
  COALESCE(SUM(status = 'failed' AND timed_out = 0), 0)
FROM run_pairs WHERE run_id = ? AND listed = 1`, ev.RunID).Scan(&ev.PairsOK, &ev.PairsFailed); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT symbol, interval FROM run_pairs
WHERE run_id = ? AND listed = 1 AND timed_out = 1 ORDER BY symbol, interval`, ev.RunID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var p candles.Pair
		if err := rows.Scan(&p.Symbol, &p.Interval); err != nil {
			return err
		}
		ev.OpenPairs = append(ev.OpenPairs, p)
	}
	return rows.Err()
}

// MarkTimeoutAnnounced records that the sync.timeout event of runID was
// published.
func (s *Store) MarkTimeoutAnnounced(ctx context.Context, runID string) error {
	return s.inTx(ctx, "mark timeout of run "+runID+" announced", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE runs SET timeout_announced = 1 WHERE run_id = ?`, runID)
		return err
	})
}

// RunState is where a run stands, as a batch's check sees it.
type RunState int

const (
	// RunUnknown: no sync.started registered the run.
	RunUnknown RunState = iota
	// RunOpen: registered, neither complete nor timed out.
	RunOpen
	// RunTimedOut: closed at its deadline; its jobs' late pages are
	// still written.
	RunTimedOut
	// RunFinished: every pair resolved; nothing more belongs to it.
	RunFinished
)

// Grant is what a run allows one pair's batches (see RunGrant).
type Grant struct {
	Run RunState
	// Listed: the pair is one of the run's pairs.
	Listed bool
	// TokenSHA256 is the hash of the job's token ("" for a run registered
	// before job tokens).
	TokenSHA256 string
	// Ranges are the spans of open times the job may write.
	Ranges []candles.Range
	// FinishedSeq is, for a finished run, the CANDLES watermark when it
	// completed (0: not recorded): later batches of it were refused.
	FinishedSeq uint64
}

// RunGrant reports where run runID stands and what it allows the batches
// of symbol/interval.
func (s *Store) RunGrant(ctx context.Context, runID, symbol, interval string) (Grant, error) {
	var g Grant
	var finished, timedOut bool
	var listed sql.NullBool
	var hash, ranges sql.NullString
	var finishedSeq sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT r.finished_at IS NOT NULL, r.timed_out_at IS NOT NULL, r.finished_seq, p.listed, p.token_sha256, p.ranges
FROM runs r LEFT JOIN run_pairs p ON p.run_id = r.run_id AND p.symbol = ? AND p.interval = ?
WHERE r.run_id = ?`, symbol, interval, runID).Scan(&finished, &timedOut, &finishedSeq, &listed, &hash, &ranges)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return Grant{Run: RunUnknown}, nil
	case err != nil:
		return Grant{}, fmt.Errorf("grant of run %s pair %s/%s: %w", runID, symbol, interval, err)
	}
	switch {
	case finished:
		g.Run = RunFinished
	case timedOut:
		g.Run = RunTimedOut
	default:
		g.Run = RunOpen
	}
	g.Listed = listed.Valid && listed.Bool
	g.FinishedSeq = uint64(finishedSeq.Int64)
	g.TokenSHA256 = hash.String
	if ranges.String != "" {
		var rs [][2]int64
		if err := json.Unmarshal([]byte(ranges.String), &rs); err != nil {
			return Grant{}, fmt.Errorf("grant of run %s pair %s/%s: ranges %q: %w", runID, symbol, interval, ranges.String, err)
		}
		for _, r := range rs {
			g.Ranges = append(g.Ranges, candles.Range{From: r[0], Until: r[1]})
		}
	}
	return g, nil
}

func encodeRanges(rs []candles.Range) [][2]int64 {
	out := make([][2]int64, len(rs))
	for i, r := range rs {
		out[i] = [2]int64{r.From, r.Until}
	}
	return out
}

// metaLegacyBatches is the meta row that says which token-less batches are
// the old pipeline's (see LegacyCutoff).
const metaLegacyBatches = "legacy_batches"

// LegacyCutoff returns the last sequence of stream whose batches may come
// without a job token: those the pipeline published before it had tokens.
// A database that had applied batches before the upgrade (migration 6)
// records, at the first call, lastSeq (the stream's last sequence then)
// with the stream's identity; it is 0 for a new database and for a stream
// other than the one recorded (one created since carries tokens only).
func (s *Store) LegacyCutoff(ctx context.Context, stream, identity string, lastSeq uint64) (uint64, error) {
	var cutoff uint64
	err := s.inTx(ctx, "legacy cutoff of "+stream, func(tx *sql.Tx) error {
		cutoff = 0
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaLegacyBatches).Scan(&v)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return nil
		case err != nil:
			return err
		}
		switch v {
		case "none":
			return nil
		case "pending":
			cutoff = lastSeq
			return setMeta(ctx, tx, metaLegacyBatches, stream+" "+identity+" "+strconv.FormatUint(lastSeq, 10))
		}
		f := strings.Fields(v)
		if len(f) != 3 || f[0] != stream || f[1] != identity {
			return nil
		}
		n, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return fmt.Errorf("%s %q: %w", metaLegacyBatches, v, err)
		}
		cutoff = n
		return nil
	})
	return cutoff, err
}
