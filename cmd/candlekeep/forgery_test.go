package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// The forgeries of issue 10, published by a plain NATS client while
// `candlekeep up` backfills from the simulator: a stored candle overwritten
// (open=1.0), FAKEUSDT, a candle three days ahead and an empty final batch
// carrying the live run's run_id. Each is rejected with batch.rejected; the
// run completes normally, once, with every candle it fetched (it was not
// closed early), and the database equals the simulator's truth.
func TestForgedBatchesAreRefused(t *testing.T) {
	s, simURL := startSim(t, sim.Options{Latency: 100 * time.Millisecond})
	dataDir := t.TempDir()
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = []string{"BTCUSDT"}, []string{"4h"}
	natsURL := startUp(t, dataDir, fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	from, until := time.Date(2018, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	want := truth(s, fo.Symbols, "4h", from, until)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var started candles.SyncStarted
	ev.wait(t, candles.KindSyncStarted, acc.RunID, 10*time.Second, &started)
	dbPath := filepath.Join(dataDir, databaseFile)
	checkfor.Check(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := len(readDB(t, dbPath)[candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}]); n == 0 {
			return fmt.Errorf("no candle stored yet")
		}
		return nil
	})

	forgeries := forgedBatches("4h", want[candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}][0], acc.RunID)
	if len(ev.of(candles.KindSyncCompleted, acc.RunID)) != 0 {
		t.Fatal("the run completed before the forgeries were sent; the backfill is too short for this test")
	}
	ctx := context.Background()
	for _, b := range forgeries {
		data, err := b.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, candles.BatchSubject(b.Interval, b.Symbol), data); err != nil {
			t.Fatal(err)
		}
	}

	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	total := int64(len(want[candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}]))
	if done.PairsOK != 1 || done.PairsFailed != 0 || done.Candles != total {
		t.Errorf("sync.completed = %+v, want the pair ok with all %d candles (a run closed early has fewer)", done, total)
	}
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(ev.of(candles.KindBatchRejected, "")); n != len(forgeries) {
			return fmt.Errorf("%d batch.rejected, want %d", n, len(forgeries))
		}
		return nil
	})
	assertForgeriesRejected(t, ev.of(candles.KindBatchRejected, ""))
	if n := len(ev.of(candles.KindSyncCompleted, acc.RunID)); n != 1 {
		t.Errorf("%d sync.completed for the run, want 1", n)
	}
	assertSame(t, readDB(t, dbPath), want)
}

// forgedBatches are the attacks of issue 10 on BTCUSDT/iv while runID is
// live: stored (a candle the database has) overwritten with open=1.0,
// FAKEUSDT, a candle three days ahead, and an empty final batch carrying
// the run's run_id.
func forgedBatches(iv string, stored candles.Candle, runID string) []candles.Batch {
	in := candles.MustInterval(iv)
	stored.Open, stored.Low = 1.0, 1.0
	ahead := in.Align(time.Now().Add(72 * time.Hour).UnixMilli())
	return []candles.Batch{
		{V: candles.Version, Symbol: "BTCUSDT", Interval: iv, Candles: []candles.Candle{stored}},
		{V: candles.Version, Symbol: "FAKEUSDT", Interval: iv, Candles: []candles.Candle{stored}},
		{V: candles.Version, Symbol: "BTCUSDT", Interval: iv, Candles: []candles.Candle{{
			OpenTime: ahead, CloseTime: in.Next(ahead) - 1, Open: 1, High: 1, Low: 1, Close: 1, Volume: 1, QuoteVolume: 1, Trades: 1}}},
		{V: candles.Version, RunID: runID, Symbol: "BTCUSDT", Interval: iv, Page: 1, Final: true},
	}
}

// assertForgeriesRejected checks that each batch.rejected names why the
// pipeline did not produce the batch, as the writer saw it in the stream.
func assertForgeriesRejected(t testing.TB, rejected []json.RawMessage) {
	t.Helper()
	for _, raw := range rejected {
		var r candles.BatchRejected
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		ok := false
		for _, reason := range []string{"unknown run:", "pair not in run:", "bad job token:"} {
			ok = ok || strings.HasPrefix(r.Reason, reason)
		}
		if !ok || r.Source != "stream" {
			t.Errorf("batch.rejected %+v: want a reason naming why the pipeline did not produce it", r)
		}
	}
}
