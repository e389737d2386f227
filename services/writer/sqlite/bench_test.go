package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/candlekeep/candlekeep/services/writer/sqlite"
)

// The backfill target is ApplyBatch at >= 70% of a raw upsert loop; compare
// BenchmarkApplyBatch with BenchmarkRawUpsertLoop (same rows, same pragmas).

const benchBatch = 1000

func BenchmarkApplyBatch(b *testing.B) {
	s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "candles.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bt := batch("run", "BTCUSDT", false, series(t0+int64(i)*benchBatch*h4, benchBatch, 0))
		if _, err := s.ApplyBatch(ctx, "CANDLES", uint64(i+1), bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "candles/s")
}

func BenchmarkRawUpsertLoop(b *testing.B) {
	path := filepath.Join(b.TempDir(), "candles.db")
	s, err := sqlite.Open(context.Background(), path) // same schema
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	stmt, err := db.Prepare(`INSERT INTO candles (symbol, interval, open_time, close_time, open, high, low, close,
  volume, quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, interval, open_time) DO UPDATE SET
  close_time = excluded.close_time, open = excluded.open, high = excluded.high, low = excluded.low,
  close = excluded.close, volume = excluded.volume, quote_volume = excluded.quote_volume,
  trades = excluded.trades, taker_buy_base_volume = excluded.taker_buy_base_volume,
  taker_buy_quote_volume = excluded.taker_buy_quote_volume`)
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cs := series(t0+int64(i)*benchBatch*h4, benchBatch, 0)
		tx, err := db.Begin()
		if err != nil {
			b.Fatal(err)
		}
		st := tx.Stmt(stmt)
		for _, c := range cs {
			if _, err := st.Exec("BTCUSDT", "4h", c.OpenTime, c.CloseTime, c.Open, c.High, c.Low, c.Close,
				c.Volume, c.QuoteVolume, c.Trades, c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "candles/s")
}
