package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/file"
)

// BenchmarkBackupSnapshot: a backup (snapshot by the online backup API,
// the default, and by VACUUM INTO, back to back; integrity_check, zstd,
// store and read back in the hot tier) of a database of
// CANDLEKEEP_BENCH_BACKUP_MB (default 1024) MB while a writer commits
// 100-candle batches; the writer's rate during the backup against its rate
// without one (target >= 0.8), and a plain copy of the same file for scale.
func BenchmarkBackupSnapshot(b *testing.B) {
	mb := 1024
	if v, err := strconv.Atoi(os.Getenv("CANDLEKEEP_BENCH_BACKUP_MB")); err == nil && v > 0 {
		mb = v
	}
	ctx := context.Background()
	dir := b.TempDir()
	path := filepath.Join(dir, "candles.db")
	st, err := store.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var seq uint64
	apply := func(symbol string, from int64, n int) error {
		bt := candles.Batch{V: candles.Version, Symbol: symbol, Interval: "1m"}
		for i := range n {
			t := from + int64(i)*60_000
			bt.Candles = append(bt.Candles, candles.Candle{OpenTime: t, CloseTime: t + 59_999, Open: 1.5, High: 2.25, Low: 1.125,
				Close: 2, Volume: 1234.5, QuoteVolume: 2469, Trades: 42, TakerBuyBaseVolume: 600, TakerBuyQuoteVolume: 1200})
		}
		seq++
		_, err := st.ApplyBatch(ctx, candles.StreamCandles, seq, bt)
		return err
	}
	fillStart := time.Now()
	next := time.Date(2017, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	for sym := 0; ; sym++ {
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		if fi.Size() >= int64(mb)<<20 {
			break
		}
		for range 100 {
			if err := apply("SYM"+strconv.Itoa(sym)+"USDT", next, 1000); err != nil {
				b.Fatal(err)
			}
			next += 1000 * 60_000
		}
	}
	if _, err := st.CheckpointWAL(ctx); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b.Logf("filled %d MB in %s", fi.Size()>>20, time.Since(fillStart).Round(time.Second))

	// The writer: 100-candle batches of one more pair, as fast as it can.
	writerNext := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	write := func(stop <-chan struct{}, commits *atomic.Int64) error {
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			if err := apply("WRITERUSDT", writerNext, 100); err != nil {
				return err
			}
			writerNext += 100 * 60_000
			commits.Add(1)
		}
	}
	measure := func(during func()) (float64, time.Duration) {
		var commits atomic.Int64
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- write(stop, &commits) }()
		start := time.Now()
		during()
		elapsed := time.Since(start)
		n := commits.Load()
		close(stop)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return float64(n) / elapsed.Seconds(), elapsed
	}
	tier, err := file.New(backup.TierHot, filepath.Join(dir, "backups", "hot"))
	if err != nil {
		b.Fatal(err)
	}
	// One service per snapshot method, compared back to back in the same
	// run (the machine is shared: its load drifts between runs).
	methods := []backup.SnapshotMethod{backup.SnapshotBackupAPI, backup.SnapshotVacuumInto}
	svcs := map[backup.SnapshotMethod]*backup.Service{}
	for k, m := range methods {
		o := backup.DefaultOptions()
		o.Database, o.Tiers, o.SnapshotMethod = path, []backup.TierConfig{{Tier: tier, Retention: backup.DefaultHotRetention}}, m
		shift := time.Duration(k) * time.Hour
		o.Now = func() time.Time { return time.Now().Add(shift) } // distinct copy names
		if svcs[m], err = backup.New(o); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < b.N; i++ {
		// The writer's rate with nothing else running, before and after
		// the backups; the ratio is against their mean.
		before, _ := measure(func() { time.Sleep(5 * time.Second) })
		type result struct {
			rep    backup.Report
			during float64
			took   time.Duration
		}
		res := map[backup.SnapshotMethod]result{}
		for _, m := range methods {
			var r result
			r.during, r.took = measure(func() { r.rep = svcs[m].Backup(ctx, backup.TriggerRequest) })
			if !r.rep.OK() {
				b.Fatalf("backup (%s): %+v", m, r.rep)
			}
			res[m] = r
		}
		after, _ := measure(func() { time.Sleep(5 * time.Second) })
		alone := (before + after) / 2
		cpTook := plainCopy(b, path, filepath.Join(dir, "cp.db"))
		report("writer alone: %.0f batches/s before the backups, %.0f after (mean %.0f)", before, after, alone)
		for _, m := range methods {
			r := res[m]
			ratio := r.during / alone
			report("backup of a %d MB database with %s (snapshot, integrity_check, zstd, store, read back): %s, %d MB stored; plain cp of the file: %s (%.1fx)",
				r.rep.DBBytes>>20, m, r.took.Round(time.Millisecond), r.rep.Tiers[0].Bytes>>20, cpTook.Round(time.Millisecond), r.took.Seconds()/cpTook.Seconds())
			verdictText := ""
			if m == methods[0] {
				verdictText = fmt.Sprintf(" (the default; target >= 0.80: %s)", verdict(ratio >= 0.8))
				b.ReportMetric(r.took.Seconds(), "backup-s")
				b.ReportMetric(ratio, "writer-during/alone")
			}
			report("writer during the %s backup: %.0f batches/s: ratio %.2f%s", m, r.during, ratio, verdictText)
		}
	}
}

// plainCopy copies src to dst and syncs it, as `cp` then `sync` would.
func plainCopy(b *testing.B, src, dst string) time.Duration {
	start := time.Now()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	out.Close()
	took := time.Since(start)
	os.Remove(dst)
	return took
}
