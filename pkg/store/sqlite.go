// Package store owns candlekeep's SQLite database file
// (modernc.org/sqlite, no cgo). It applies each batch of candles, the stream
// sequence it came from and the run bookkeeping in one transaction, so the
// database alone says what has been applied and a replay is harmless.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// FileMode is the mode of the database file and its -wal and -shm files:
// market data is not secret, but the file is the product and only the
// service account may touch it.
const FileMode os.FileMode = 0o600

// DefaultBusyTimeout is how long a statement waits for another process's
// lock (a backup or an operator's sqlite3 shell) before failing.
const DefaultBusyTimeout = 10 * time.Second

// maxReaders bounds the read-only connections (coverage queries).
const maxReaders = 4

// Store is a candle database. Writes go through one connection, so they never
// contend with each other inside the process; reads use their own pool and,
// thanks to WAL, never wait for a write.
type Store struct {
	// w is nil in a store opened with OpenReadOnly.
	w, r *sql.DB
	path string
	now  func() time.Time
	busy time.Duration

	upsert1, upsertN       *sql.Stmt // one candle, upsertChunk candles
	rangeCount             *sql.Stmt
	gapsOverlap, gapsTouch *sql.Stmt // known gaps overlapping (or touching) a range
}

// Option configures Open.
type Option func(*Store)

// WithNow sets the clock used for registered_at, resolved_at, finished_at and
// applied_at (default time.Now).
func WithNow(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithBusyTimeout sets how long a statement waits for a lock held by another
// connection before failing (default DefaultBusyTimeout).
func WithBusyTimeout(d time.Duration) Option { return func(s *Store) { s.busy = d } }

// Open opens (creating if needed) the database at path, makes it and its WAL
// files mode 0600 and migrates it to SchemaVersion. A database written by a
// newer schema is refused with ErrSchemaTooNew.
//
// synchronous=NORMAL can lose the last transactions on power loss, which is
// safe here: a lost transaction takes its watermark with it, so JetStream
// delivers those batches again.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	if path == "" || strings.ContainsAny(path, "?#") || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("sqlite: %q is not a plain file path", path)
	}
	s := &Store{now: time.Now, busy: DefaultBusyTimeout, path: path}
	for _, o := range opts {
		o(s)
	}
	if err := s.open(ctx, path); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) open(ctx context.Context, path string) error {
	if err := restrictFiles(path); err != nil {
		return err
	}
	pragmas := []string{
		fmt.Sprintf("busy_timeout(%d)", s.busy.Milliseconds()),
		"journal_mode(WAL)",
		"synchronous(NORMAL)",
	}
	// journal_size_limit only matters where the WAL is written (wal.go).
	wq := url.Values{"_pragma": append(pragmas[:len(pragmas):len(pragmas)], fmt.Sprintf("journal_size_limit(%d)", WALSizeLimit)),
		"_txlock": {"immediate"}}
	rq := url.Values{"_pragma": append(pragmas[:len(pragmas):len(pragmas)], "query_only(1)")}

	var err error
	if s.w, err = sql.Open("sqlite", path+"?"+wq.Encode()); err != nil {
		return err
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := s.w.PingContext(ctx); err != nil {
		return err
	}
	if err := migrate(ctx, s.w, s.now()); err != nil {
		return err
	}
	if s.r, err = sql.Open("sqlite", path+"?"+rq.Encode()); err != nil {
		return err
	}
	s.r.SetMaxOpenConns(maxReaders)
	s.r.SetMaxIdleConns(maxReaders)
	return s.prepare(ctx)
}

// restrictFiles creates the database file with FileMode, or narrows the mode
// of an existing one and of WAL files left by an older install, before SQLite
// opens it. SQLite gives the -wal and -shm files it creates the database
// file's mode.
func restrictFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, FileMode)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, FileMode); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// upsertChunk is how many candles one multi-row upsert statement writes:
// fewer, larger statements cut the per-call overhead of database/sql and the
// driver, which otherwise dominates next to SQLite's own work.
const upsertChunk = 64

// upsertSQL is the upsert of n candles. A conflicting row is rewritten only
// when a value differs, so re-applying identical data writes nothing and the
// statement's change count is exactly the rows inserted or updated.
func upsertSQL(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO candles (symbol, interval, open_time, close_time, open, high, low, close,
  volume, quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume)
VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	b.WriteString(`
ON CONFLICT (symbol, interval, open_time) DO UPDATE SET
  close_time = excluded.close_time, open = excluded.open, high = excluded.high, low = excluded.low,
  close = excluded.close, volume = excluded.volume, quote_volume = excluded.quote_volume,
  trades = excluded.trades, taker_buy_base_volume = excluded.taker_buy_base_volume,
  taker_buy_quote_volume = excluded.taker_buy_quote_volume
WHERE candles.close_time != excluded.close_time OR candles.open != excluded.open
  OR candles.high != excluded.high OR candles.low != excluded.low OR candles.close != excluded.close
  OR candles.volume != excluded.volume OR candles.quote_volume != excluded.quote_volume
  OR candles.trades != excluded.trades OR candles.taker_buy_base_volume != excluded.taker_buy_base_volume
  OR candles.taker_buy_quote_volume != excluded.taker_buy_quote_volume`)
	return b.String()
}

const rangeCountSQL = `SELECT COUNT(*) FROM candles WHERE symbol = ? AND interval = ? AND open_time BETWEEN ? AND ?`

// prepare compiles the per-batch statements once on the write connection;
// transactions reuse them through Tx.StmtContext.
func (s *Store) prepare(ctx context.Context) error {
	var err error
	if s.upsert1, err = s.w.PrepareContext(ctx, upsertSQL(1)); err != nil {
		return fmt.Errorf("prepare upsert: %w", err)
	}
	if s.upsertN, err = s.w.PrepareContext(ctx, upsertSQL(upsertChunk)); err != nil {
		return fmt.Errorf("prepare upsert: %w", err)
	}
	if s.rangeCount, err = s.w.PrepareContext(ctx, rangeCountSQL); err != nil {
		return fmt.Errorf("prepare range count: %w", err)
	}
	if s.gapsOverlap, err = s.w.PrepareContext(ctx, gapsOverlapSQL(false)); err != nil {
		return fmt.Errorf("prepare known gaps lookup: %w", err)
	}
	if s.gapsTouch, err = s.w.PrepareContext(ctx, gapsOverlapSQL(true)); err != nil {
		return fmt.Errorf("prepare known gaps lookup: %w", err)
	}
	return nil
}

// Close closes the database; SQLite checkpoints the WAL on the last close.
func (s *Store) Close() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.upsert1, s.upsertN, s.rangeCount, s.gapsOverlap, s.gapsTouch} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	for _, db := range []*sql.DB{s.r, s.w} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close database: %w", err)
	}
	return nil
}

// inTx runs fn in a write transaction (BEGIN IMMEDIATE) and commits it.
func (s *Store) inTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	if s.w == nil {
		return fmt.Errorf("%s: %w", what, ErrReadOnly)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", what, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

func watermark(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, stream string) (uint64, error) {
	var seq int64
	err := q.QueryRowContext(ctx, `SELECT last_seq FROM stream_state WHERE stream = ?`, stream).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read watermark of %s: %w", stream, err)
	}
	return uint64(seq), nil
}

func setWatermark(ctx context.Context, tx *sql.Tx, stream string, seq uint64) error {
	if seq > 1<<63-1 {
		return fmt.Errorf("sequence %d out of range", seq)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO stream_state (stream, last_seq) VALUES (?, ?)
ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq`, stream, int64(seq))
	if err != nil {
		return fmt.Errorf("set watermark of %s to %d: %w", stream, seq, err)
	}
	return nil
}

// Watermark returns the last sequence of stream applied (0 when none). A
// writable store reads it on the write connection, so it sees its own last
// commit; a read-only store sees the last commit of any process.
func (s *Store) Watermark(ctx context.Context, stream string) (uint64, error) {
	if s.w == nil {
		return watermark(ctx, s.r, stream)
	}
	return watermark(ctx, s.w, stream)
}

// Advance sets the watermark of stream to seq unless it is already there or
// beyond; it writes nothing else.
func (s *Store) Advance(ctx context.Context, stream string, seq uint64) error {
	return s.inTx(ctx, "advance watermark", func(tx *sql.Tx) error {
		w, err := watermark(ctx, tx, stream)
		if err != nil || seq <= w {
			return err
		}
		return setWatermark(ctx, tx, stream, seq)
	})
}

// Reject moves the watermark past a batch that can never be applied; no row
// is written, so a replay rejects it again without harm.
func (s *Store) Reject(ctx context.Context, stream string, seq uint64) error {
	return s.Advance(ctx, stream, seq)
}

// ResetWatermark sets the watermark of stream to seq even if that is lower:
// for a stream whose sequence numbers started over.
func (s *Store) ResetWatermark(ctx context.Context, stream string, seq uint64) error {
	return s.inTx(ctx, "reset watermark", func(tx *sql.Tx) error {
		return setWatermark(ctx, tx, stream, seq)
	})
}

// ApplyBatch writes b as the message at seq of stream in one transaction:
// every candle upserted (identical rows are left alone), the known gaps
// brought up to date (see bookGaps), the watermark set to seq and, for a
// batch with a run_id, the pair's candle, repair and gap counts raised and a
// final batch marking the pair ok unless it already failed (which records
// the pair's last sync). At or below the watermark it does nothing and
// reports Skipped.
func (s *Store) ApplyBatch(ctx context.Context, stream string, seq uint64, b candles.Batch) (Applied, error) {
	var a Applied
	err := s.inTx(ctx, fmt.Sprintf("apply %s seq %d (%s/%s)", stream, seq, b.Symbol, b.Interval), func(tx *sql.Tx) error {
		a = Applied{}
		w, err := watermark(ctx, tx, stream)
		if err != nil {
			return err
		}
		if seq <= w {
			a.Skipped = true
			return nil
		}
		if err := s.upsert(ctx, tx, b, &a); err != nil {
			return err
		}
		if err := setWatermark(ctx, tx, stream, seq); err != nil {
			return err
		}
		if b.RunID == "" {
			return nil
		}
		return s.trackBatch(ctx, tx, b, &a)
	})
	if err != nil {
		return Applied{}, err
	}
	return a, nil
}

// Upsert writes the candles of b and brings the known gaps up to date, in one
// transaction, without reading or moving any watermark and without touching
// run tracking: for a replay of batches that may have been applied before.
// It is idempotent; Skipped and the run fields of Applied stay zero.
func (s *Store) Upsert(ctx context.Context, b candles.Batch) (Applied, error) {
	var a Applied
	err := s.inTx(ctx, fmt.Sprintf("upsert %s/%s page %d", b.Symbol, b.Interval, b.Page), func(tx *sql.Tx) error {
		a = Applied{}
		return s.upsert(ctx, tx, b, &a)
	})
	if err != nil {
		return Applied{}, err
	}
	return a, nil
}

// upsert is the part of ApplyBatch and Upsert that writes candles and known
// gaps.
func (s *Store) upsert(ctx context.Context, tx *sql.Tx, b candles.Batch, a *Applied) error {
	if len(b.Candles) > 0 {
		if err := s.upsertCandles(ctx, tx, b, a); err != nil {
			return err
		}
	}
	if err := recordExpectedFrom(ctx, tx, b); err != nil {
		return err
	}
	return s.bookGaps(ctx, tx, b, a)
}

// recordExpectedFrom lowers the pair's expected start to where b begins:
// the start of the span the exchange answered for (a request's start, or
// for a page asked from before the listing, the first candle), else its
// first candle. Every batch answers a range some request asked for, so the
// lowest of them is the earliest start any request asked for.
func recordExpectedFrom(ctx context.Context, tx *sql.Tx, b candles.Batch) error {
	from := b.From
	if len(b.Candles) > 0 && (from == 0 || b.Candles[0].OpenTime < from) {
		from = b.Candles[0].OpenTime
	}
	// The first page of a run expecting the pair from its listing starts
	// at the first candle the exchange has: the expected start is known.
	first := b.Page == 0 && b.RunID != "" && !b.Repair
	if from <= 0 {
		if !first {
			return nil
		}
		// An empty first page: the exchange has nothing for the pair.
		_, err := tx.ExecContext(ctx, `UPDATE pair_range SET listing_run = NULL WHERE symbol = ? AND interval = ? AND listing_run = ?`,
			b.Symbol, b.Interval, b.RunID)
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO pair_range (symbol, interval, expected_from) VALUES (?1, ?2, ?3)
ON CONFLICT (symbol, interval) DO UPDATE SET
  expected_from = MIN(COALESCE(expected_from, excluded.expected_from), excluded.expected_from),
  listing_run = CASE WHEN ?4 AND listing_run = ?5 THEN NULL ELSE listing_run END`,
		b.Symbol, b.Interval, from, first, b.RunID)
	if err != nil {
		return fmt.Errorf("record the expected start of %s/%s: %w", b.Symbol, b.Interval, err)
	}
	return nil
}

// ExpectListing records that run runID fetches pairs from their listing:
// until the run's first page of a pair is applied (recordExpectedFrom),
// coverage reports the pair's history from its listing as not stored
// (PairCoverage.ListingPending), so losing that page (a replaced stream)
// leaves the pair incomplete instead of measured from a later candle, and
// the next sync fetches it from the listing again.
func (s *Store) ExpectListing(ctx context.Context, runID string, pairs []candles.Pair) error {
	if len(pairs) == 0 {
		return nil
	}
	return s.inTx(ctx, "expect listing of run "+runID, func(tx *sql.Tx) error {
		for _, p := range pairs {
			// The run's batches and its sync.started come through two
			// consumers: a first page applied already has done its part.
			if _, err := tx.ExecContext(ctx, `INSERT INTO pair_range (symbol, interval, listing_run)
SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM run_pairs
  WHERE run_id = ?3 AND symbol = ?1 AND interval = ?2 AND (candles > 0 OR status = 'ok'))
ON CONFLICT (symbol, interval) DO UPDATE SET listing_run = excluded.listing_run`, p.Symbol, p.Interval, runID); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
}

func (s *Store) upsertCandles(ctx context.Context, tx *sql.Tx, b candles.Batch, a *Applied) error {
	first, last := b.Candles[0].OpenTime, b.Candles[len(b.Candles)-1].OpenTime
	count := tx.StmtContext(ctx, s.rangeCount)
	// Candles only ever get added under the batch's keys, so the growth of
	// the row count over the batch's span is exactly the inserted rows.
	var before, after int
	if err := count.QueryRowContext(ctx, b.Symbol, b.Interval, first, last).Scan(&before); err != nil {
		return fmt.Errorf("count existing candles: %w", err)
	}
	var changed int64
	args := make([]any, 0, 13*upsertChunk)
	exec := func(st *sql.Stmt, cs []candles.Candle) error {
		args = args[:0]
		for _, c := range cs {
			args = append(args, b.Symbol, b.Interval, c.OpenTime, c.CloseTime,
				c.Open, c.High, c.Low, c.Close, c.Volume, c.QuoteVolume, c.Trades,
				c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume)
		}
		res, err := st.ExecContext(ctx, args...)
		if err != nil {
			return fmt.Errorf("upsert candles from %d: %w", cs[0].OpenTime, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("upsert candles from %d: %w", cs[0].OpenTime, err)
		}
		changed += n
		return nil
	}
	cs := b.Candles
	if len(cs) >= upsertChunk {
		upN := tx.StmtContext(ctx, s.upsertN)
		for ; len(cs) >= upsertChunk; cs = cs[upsertChunk:] {
			if err := exec(upN, cs[:upsertChunk]); err != nil {
				return err
			}
		}
	}
	if len(cs) > 0 {
		up1 := tx.StmtContext(ctx, s.upsert1)
		for i := range cs {
			if err := exec(up1, cs[i:i+1]); err != nil {
				return err
			}
		}
	}
	if err := count.QueryRowContext(ctx, b.Symbol, b.Interval, first, last).Scan(&after); err != nil {
		return fmt.Errorf("count candles: %w", err)
	}
	a.Inserted = after - before
	a.Updated = int(changed) - a.Inserted
	a.Unchanged = len(b.Candles) - int(changed)
	return nil
}

// trackBatch adds the batch to its run's pair (candles, and for a repair
// batch the rows it inserted; the known-gap slots it recorded) and, for a
// final batch, marks a pending pair ok, records that as the pair's last sync
// and checks whether that completed the run. A pair's first resolution
// stands: a pair that already failed (say, one of its pages was rejected)
// stays failed, though its candles are written.
func (s *Store) trackBatch(ctx context.Context, tx *sql.Tx, b candles.Batch, a *Applied) error {
	now := formatTime(s.now())
	pending := false
	if b.Final {
		var status string
		err := tx.QueryRowContext(ctx, `SELECT status FROM run_pairs WHERE run_id = ? AND symbol = ? AND interval = ?`,
			b.RunID, b.Symbol, b.Interval).Scan(&status)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			pending = true
		case err != nil:
			return fmt.Errorf("track run %s pair %s/%s: %w", b.RunID, b.Symbol, b.Interval, err)
		default:
			pending = status == "pending"
		}
	}
	repaired := 0
	if b.Repair {
		repaired = a.Inserted
	}
	err := tx.QueryRowContext(ctx, `INSERT INTO run_pairs (run_id, symbol, interval, status, candles, resolved_at, repaired, gaps_recorded, inserted)
VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN 'ok' ELSE 'pending' END, ?5, CASE WHEN ?4 THEN ?6 END, ?7, ?8, ?9)
ON CONFLICT (run_id, symbol, interval) DO UPDATE SET
  candles = run_pairs.candles + excluded.candles,
  inserted = run_pairs.inserted + excluded.inserted,
  repaired = run_pairs.repaired + excluded.repaired,
  gaps_recorded = run_pairs.gaps_recorded + excluded.gaps_recorded,
  resolved_at = CASE WHEN ?4 AND run_pairs.status = 'pending' THEN ?6 ELSE run_pairs.resolved_at END,
  status = CASE WHEN ?4 AND run_pairs.status = 'pending' THEN 'ok' ELSE run_pairs.status END
RETURNING candles`, b.RunID, b.Symbol, b.Interval, b.Final, len(b.Candles), now, repaired, a.GapsRecorded, a.Inserted).Scan(&a.PairCandles)
	if err != nil {
		return fmt.Errorf("track run %s pair %s/%s: %w", b.RunID, b.Symbol, b.Interval, err)
	}
	if !b.Final {
		return nil
	}
	if pending {
		if _, err := tx.ExecContext(ctx, `INSERT INTO pair_state (symbol, interval, last_sync) VALUES (?, ?, ?)
ON CONFLICT (symbol, interval) DO UPDATE SET last_sync = excluded.last_sync`, b.Symbol, b.Interval, now); err != nil {
			return fmt.Errorf("record last sync of %s/%s: %w", b.Symbol, b.Interval, err)
		}
	}
	a.RunComplete, err = s.finishRun(ctx, tx, b.RunID)
	return err
}

// finishRun sets finished_at of a registered run whose listed pairs are all
// resolved, and reports whether this call did it: the transition happens
// once, and never for a run closed by its deadline (TimeOutRuns).
func (s *Store) finishRun(ctx context.Context, tx *sql.Tx, runID string) (bool, error) {
	res, err := tx.ExecContext(ctx, `UPDATE runs SET finished_at = ?,
  finished_seq = (SELECT last_seq FROM stream_state WHERE stream = 'CANDLES')
WHERE run_id = ? AND finished_at IS NULL AND timed_out_at IS NULL AND NOT EXISTS (
  SELECT 1 FROM run_pairs p WHERE p.run_id = runs.run_id AND p.listed = 1 AND p.status = 'pending')`,
		formatTime(s.now()), runID)
	if err != nil {
		return false, fmt.Errorf("finish run %s: %w", runID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("finish run %s: %w", runID, err)
	}
	return n == 1, nil
}
