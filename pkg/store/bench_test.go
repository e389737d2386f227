package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/store"
)

// The backfill target (the writer at >= 70% of a raw upsert loop on the same
// rows and pragmas) is measured end to end by cmd/candlekeep's
// BenchmarkBackfill; this one isolates ApplyBatch.

const benchBatch = 1000

func BenchmarkApplyBatch(b *testing.B) {
	s, err := store.Open(context.Background(), filepath.Join(b.TempDir(), "candles.db"))
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
