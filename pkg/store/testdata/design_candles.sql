CREATE TABLE candles (
  symbol TEXT NOT NULL, interval TEXT NOT NULL,
  open_time INTEGER NOT NULL,  close_time INTEGER NOT NULL,      -- ms since epoch, UTC
  open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
  volume REAL NOT NULL, quote_volume REAL NOT NULL, trades INTEGER NOT NULL,
  taker_buy_base_volume REAL NOT NULL, taker_buy_quote_volume REAL NOT NULL,
  PRIMARY KEY (symbol, interval, open_time)
) WITHOUT ROWID;
