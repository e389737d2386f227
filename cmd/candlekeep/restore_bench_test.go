package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/writer"
)

// BenchmarkRestore: `candlekeep up` on a database of
// CANDLEKEEP_BENCH_RESTORE_MB (default 1024) MB, backed up to the hot
// tier, then 100k candles synced through the pipeline after it; the
// time from the candles.api.restore request to its answer (copy fetched
// and verified, swapped in, the 100k candles replayed: the writer serving
// again; target < 60 s), and a plain cp of the same file for scale.
func BenchmarkRestore(b *testing.B) {
	mb := 1024
	if v, err := strconv.Atoi(os.Getenv("CANDLEKEEP_BENCH_RESTORE_MB")); err == nil && v > 0 {
		mb = v
	}
	ctx := context.Background()
	dataDir := b.TempDir()
	path := filepath.Join(dataDir, databaseFile)
	fillDatabase(b, path, mb)

	_, simURL := startSim(b, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = []string{"BTCUSDT"}, []string{"1m"}
	bc := backupConfig{Schedule: "off", DrillSchedule: "off", MinInterval: time.Hour, HotRetention: backup.DefaultHotRetention,
		WarmRetention: backup.DefaultWarmRetention, ColdRetention: backup.DefaultColdRetention}
	bc.resolve(dataDir)
	url := startUpConfig(b, upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo, Writer: writer.DefaultOptions(), Backup: bc},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	nc := connect(b, url)
	msg, err := nc.Request(candles.SubjectAPIBackup, nil, 30*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	var rep backup.Report
	if err := json.Unmarshal(msg.Data, &rep); err != nil || !rep.OK() {
		b.Fatalf("backup: %v %s", err, msg.Data)
	}

	// 100k candles after the backup, through the pipeline (the writer
	// applies only batches of a run the system planned): a sync of
	// BTCUSDT 1m over 100,000 minutes, 100 pages of 1000.
	ev := watchEvents(b, nc)
	from := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	acc := requestSync(b, nc, fmt.Sprintf(`{"symbols":["BTCUSDT"],"intervals":["1m"],"start":%q,"end":%q,"reason":"bench"}`,
		from.Format(time.RFC3339), from.Add(100_000*time.Minute).Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(b, candles.KindSyncCompleted, acc.RunID, 5*time.Minute, &done)
	if done.Candles != 100_000 {
		b.Fatalf("the sync after the backup stored %d candles, want 100000", done.Candles)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		b.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	last := info.State.LastSeq
	checkfor.Check(b, 5*time.Minute, 50*time.Millisecond, func() error {
		wm, err := readWatermark(path)
		if err != nil || wm < last {
			return fmt.Errorf("watermark %d of %d (%v)", wm, last, err)
		}
		return nil
	})

	cpTook := plainCopy(b, path, filepath.Join(b.TempDir(), "copy.db"))
	b.ResetTimer()
	began := time.Now()
	msg, err = nc.Request(candles.SubjectAPIRestore, nil, 30*time.Minute)
	took := time.Since(began)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	var rr backup.RestoreReport
	if err := json.Unmarshal(msg.Data, &rr); err != nil || !rr.OK || rr.CandlesReplayed < 100_000 {
		b.Fatalf("restore: %v %s", err, msg.Data)
	}
	fi, _ := os.Stat(path)
	b.ReportMetric(took.Seconds(), "restore_s")
	b.ReportMetric(cpTook.Seconds(), "cp_s")
	b.ReportMetric(took.Seconds()/cpTook.Seconds(), "restore/cp")
	report("restore of %d MB from hot + replay of %d batches (%d candles), request → writer serving again: %s (target < 60 s: %s); plain cp of the file %s, ratio %.1f",
		fi.Size()>>20, rr.BatchesReplayed, rr.CandlesReplayed, took.Round(time.Millisecond), verdict(took < time.Minute),
		cpTook.Round(time.Millisecond), took.Seconds()/cpTook.Seconds())
}

// fillDatabase writes 1m candles of many pairs into a new database at path
// until it holds mb MB, leaving its CANDLES watermark at 0 (the candles did
// not come through the stream of the system that opens it).
func fillDatabase(b *testing.B, path string, mb int) {
	b.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var seq uint64
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
			bt := candles.Batch{V: candles.Version, Symbol: "SYM" + strconv.Itoa(sym) + "USDT", Interval: "1m"}
			for i := range 1000 {
				t := next + int64(i)*60_000
				bt.Candles = append(bt.Candles, candles.Candle{OpenTime: t, CloseTime: t + 59_999, Open: 1.5, High: 2.25, Low: 1.125,
					Close: 2, Volume: 1234.5, QuoteVolume: 2469, Trades: 42, TakerBuyBaseVolume: 600, TakerBuyQuoteVolume: 1200})
			}
			seq++
			if _, err := st.ApplyBatch(ctx, candles.StreamCandles, seq, bt); err != nil {
				b.Fatal(err)
			}
			next += 1000 * 60_000
		}
		if _, err := st.CheckpointWAL(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if err := st.ResetWatermark(ctx, candles.StreamCandles, 0); err != nil {
		b.Fatal(err)
	}
	if _, err := st.CheckpointWAL(ctx); err != nil {
		b.Fatal(err)
	}
}
