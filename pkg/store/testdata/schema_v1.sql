-- A database as candlekeep's schema version 1 left it (migration 1
-- verbatim), with a little data, to prove later migrations apply to it.
CREATE TABLE candles (
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
CREATE INDEX run_pairs_unannounced ON run_pairs (run_id) WHERE status = 'ok' AND announced = 0;

CREATE TABLE schema_migrations (
  version INTEGER PRIMARY KEY,
  applied_at TEXT NOT NULL
);
INSERT INTO schema_migrations VALUES (1, '2024-03-01T00:00:00Z');

INSERT INTO candles VALUES ('BTCUSDT', '4h', 1704067200000, 1704081599999, 100, 102, 99, 101, 10, 1000, 50, 5, 500);
INSERT INTO candles VALUES ('BTCUSDT', '4h', 1704081600000, 1704095999999, 101, 103, 100, 102, 10, 1000, 51, 5, 500);
INSERT INTO stream_state VALUES ('CANDLES', 42);
INSERT INTO runs (run_id, pairs_total, reason, started_at, registered_at)
  VALUES ('old-run', 2, 'daily', '2024-03-01T01:00:00Z', '2024-03-01T01:00:00.5Z');
INSERT INTO run_pairs (run_id, symbol, interval, listed, status, candles, resolved_at)
  VALUES ('old-run', 'BTCUSDT', '4h', 1, 'ok', 2, '2024-03-01T01:00:01Z');
INSERT INTO run_pairs (run_id, symbol, interval, listed) VALUES ('old-run', 'ETHUSDT', '4h', 1);
