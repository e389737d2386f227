package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrSchemaTooNew is returned by Open for a database migrated by a newer
// candlekeep; this code must not write to a schema it does not know.
var ErrSchemaTooNew = errors.New("database schema is newer than this candlekeep")

// migrations are applied in order; migration i+1 is migrations[i]. Never
// edit an entry once released: add a new one.
var migrations = []string{
	// 1: candles (the contract in docs/architecture.md, verbatim), the stream watermarks and
	// run tracking.
	`CREATE TABLE candles (
  symbol TEXT NOT NULL, interval TEXT NOT NULL,
  open_time INTEGER NOT NULL,  close_time INTEGER NOT NULL,
  open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
  volume REAL NOT NULL, quote_volume REAL NOT NULL, trades INTEGER NOT NULL,
  taker_buy_base_volume REAL NOT NULL, taker_buy_quote_volume REAL NOT NULL,
  PRIMARY KEY (symbol, interval, open_time)
) WITHOUT ROWID;

CREATE TABLE stream_state (
  stream TEXT PRIMARY KEY,
  last_seq INTEGER NOT NULL
);

CREATE TABLE runs (
  run_id TEXT PRIMARY KEY,
  pairs_total INTEGER NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  started_at TEXT NOT NULL,
  registered_at TEXT NOT NULL,
  finished_at TEXT,
  announced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_unfinished ON runs (run_id) WHERE finished_at IS NULL;
CREATE INDEX runs_unannounced ON runs (run_id) WHERE finished_at IS NOT NULL AND announced = 0;

CREATE TABLE run_pairs (
  run_id TEXT NOT NULL, symbol TEXT NOT NULL, interval TEXT NOT NULL,
  listed INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ok', 'failed')),
  candles INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT '',
  resolved_at TEXT,
  announced INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (run_id, symbol, interval)
) WITHOUT ROWID;
CREATE INDEX run_pairs_unannounced ON run_pairs (run_id) WHERE status = 'ok' AND announced = 0;`,

	// 2: known gaps (slots the exchange answered for without a candle), the
	// last successful sync per pair, run deadlines and timeouts, and the
	// repair and gap counts of each run's pairs. Times compared in SQL
	// (deadline) are INTEGER ms, since RFC 3339 text with a variable
	// fraction does not sort as time.
	`CREATE TABLE known_gaps (
  symbol TEXT NOT NULL, interval TEXT NOT NULL,
  from_time INTEGER NOT NULL,   -- first missing open time (ms)
  until_time INTEGER NOT NULL,  -- open time after the last missing one (ms)
  recorded_at TEXT NOT NULL,
  PRIMARY KEY (symbol, interval, from_time)
) WITHOUT ROWID;

CREATE TABLE pair_state (
  symbol TEXT NOT NULL, interval TEXT NOT NULL,
  last_sync TEXT NOT NULL,      -- when a run last completed the pair
  PRIMARY KEY (symbol, interval)
) WITHOUT ROWID;

ALTER TABLE runs ADD COLUMN deadline INTEGER;        -- ms; NULL: no deadline
ALTER TABLE runs ADD COLUMN timed_out_at TEXT;       -- closed at its deadline; never completes
ALTER TABLE runs ADD COLUMN timeout_announced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_open_deadline ON runs (deadline)
  WHERE finished_at IS NULL AND timed_out_at IS NULL AND deadline IS NOT NULL;
CREATE INDEX runs_timeout_unannounced ON runs (run_id)
  WHERE timed_out_at IS NOT NULL AND timeout_announced = 0;

ALTER TABLE run_pairs ADD COLUMN repaired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_pairs ADD COLUMN gaps_recorded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_pairs ADD COLUMN timed_out INTEGER NOT NULL DEFAULT 0; -- pending when its run timed out`,

	// 3: facts about the database itself, one row each; "source" is the
	// exchange base URL the candles came from (see BindSource).
	`CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  updated_at TEXT NOT NULL
) WITHOUT ROWID;`,

	// 4: per run pair, the candles that were new to the database (inserted),
	// so sync.completed tells new candles from re-fetched ones.
	`ALTER TABLE run_pairs ADD COLUMN inserted INTEGER NOT NULL DEFAULT 0;`,

	// 5: the identity of the stream each watermark counts in (its creation
	// time), so a stream deleted and created again is noticed even when its
	// new sequence numbers have passed the old watermark; and per pair the
	// earliest open time a request asked for (a request from "listing"
	// resolved to the exchange's first candle), which coverage and the gap
	// audit measure from instead of the first stored candle.
	`ALTER TABLE stream_state ADD COLUMN identity TEXT NOT NULL DEFAULT '';

CREATE TABLE pair_range (
  symbol TEXT NOT NULL, interval TEXT NOT NULL,
  expected_from INTEGER,  -- ms: the open time the pair's history should start at (NULL: not known yet)
  listing_run TEXT,       -- a run fetching the pair from its listing whose first page is not applied yet
  PRIMARY KEY (symbol, interval)
) WITHOUT ROWID;`,

	// 6: what each job of a run may write (sync.started's jobs): the hash
	// of its token and its ranges, so the writer applies only batches the
	// run planned. A database that already applied batches was written
	// before job tokens: its writer records, at its first start, up to
	// which CANDLES sequence token-less batches are the old pipeline's
	// (legacy_batches "pending" until then; "none" for a new database).
	// finished_seq lets a replay tell a completed run's pages from later
	// ones the writer refused ("run already closed").
	`ALTER TABLE run_pairs ADD COLUMN token_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE run_pairs ADD COLUMN ranges TEXT NOT NULL DEFAULT '';  -- JSON [[from, until], ...] (ms)
ALTER TABLE runs ADD COLUMN finished_seq INTEGER;  -- the CANDLES watermark when the run completed
INSERT INTO meta (key, value, updated_at)
SELECT 'legacy_batches',
  CASE WHEN EXISTS (SELECT 1 FROM stream_state WHERE stream = 'CANDLES' AND last_seq > 0) THEN 'pending' ELSE 'none' END,
  strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
ON CONFLICT (key) DO NOTHING;`,
}

// SchemaVersion is the schema version this code migrates databases to.
func SchemaVersion() int { return len(migrations) }

// migrate brings the database up to SchemaVersion in one transaction.
func migrate(ctx context.Context, db *sql.DB, now time.Time) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY,
  applied_at TEXT NOT NULL
)`); err != nil {
		return fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if current > len(migrations) {
		return fmt.Errorf("%w: the database is at version %d, this code knows up to %d; run a newer candlekeep or restore a matching backup",
			ErrSchemaTooNew, current, len(migrations))
	}
	for v := current + 1; v <= len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
			v, formatTime(now)); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("stored time %q: %w", s, err)
	}
	return t, nil
}
