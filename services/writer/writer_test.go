package writer_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/writer"
)

func TestOptionsValidate(t *testing.T) {
	ns := newHarness(t)
	st, err := store.Open(context.Background(), ns.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	valid := func() writer.Options {
		o := writer.DefaultOptions()
		o.Conn, o.Store = ns.nc, st
		return o
	}
	tests := []struct {
		name string
		mod  func(*writer.Options)
		want string // substring of the error; "" for valid
	}{
		{"defaults", func(*writer.Options) {}, ""},
		{"no conn", func(o *writer.Options) { o.Conn = nil }, "Conn"},
		{"no store", func(o *writer.Options) { o.Store = nil }, "Store"},
		{"no logger", func(o *writer.Options) { o.Logger = nil }, "Logger"},
		{"no clock", func(o *writer.Options) { o.Now = nil }, "Now"},
		{"zero progress interval", func(o *writer.Options) { o.ProgressEvery = 0 }, "ProgressEvery"},
		{"short ack wait", func(o *writer.Options) { o.AckWait = time.Millisecond }, "AckWait"},
		{"zero deadline interval", func(o *writer.Options) { o.DeadlineEvery = 0 }, "DeadlineEvery"},
		{"bad replicas", func(o *writer.Options) { o.Streams.Replicas = 7 }, "replicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.mod(&o)
			err := o.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.want)
			}
			if _, err := writer.New(o); err == nil {
				t.Fatal("New accepted invalid options")
			}
		})
	}
}

func TestAppliesBatchesInStreamOrder(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	var last uint64
	// Later batches rewrite earlier keys with other values, so only
	// in-order application gives the model's final state.
	for i := 0; i < 30; i++ {
		sym := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}[i%3]
		ack := h.publish(batch("", sym, i, false, series(t0+int64(i%5)*h4, 20, float64(i))), "")
		last = ack.Sequence
	}
	h.waitApplied(last)
	h.assertDB()
	if got := len(h.events(candles.KindBatchRejected)); got != 0 {
		t.Errorf("%d batch.rejected events, want 0", got)
	}
}

func TestDuplicatesAndRedeliveryWriteNothingTwice(t *testing.T) {
	h := newHarness(t)
	pairs := []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-dup"), Pairs: pairs, PairsTotal: 1}
	h.event(&started, "sync.started:run-dup")

	b1 := batch("run-dup", "BTCUSDT", 0, false, series(t0, 10, 0))
	if ack := h.publish(b1, "run-dup:BTCUSDT:4h:0"); ack.Duplicate {
		t.Fatal("first publish reported duplicate")
	}
	if ack := h.publish(b1, "run-dup:BTCUSDT:4h:0"); !ack.Duplicate {
		t.Fatal("same Nats-Msg-Id was stored twice")
	}
	b2 := batch("run-dup", "BTCUSDT", 1, false, series(t0+10*h4, 10, 0))
	ack2 := h.publish(b2, "run-dup:BTCUSDT:4h:1")

	w := h.start(nil)
	h.waitApplied(ack2.Sequence)
	w.stop()

	// A batch committed by a writer that died before acking it: the
	// database has it, the consumer does not. The next writer must not
	// apply it again (its candles would count twice in the run).
	b3 := batch("run-dup", "BTCUSDT", 2, true, series(t0+20*h4, 5, 0))
	ack3 := h.publish(b3, "run-dup:BTCUSDT:4h:2")
	st, err := store.Open(context.Background(), h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ApplyBatch(context.Background(), candles.StreamCandles, ack3.Sequence, b3); err != nil {
		t.Fatal(err)
	}
	st.Close()
	b4 := batch("", "ETHUSDT", 0, false, series(t0, 3, 0))
	ack4 := h.publish(b4, "")

	w = h.start(nil)
	h.waitApplied(ack4.Sequence)
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) > 0 })
	w.stop()
	// A restart with nothing new changes nothing either.
	w = h.restart(nil)
	w.stop()

	h.assertDB()
	if got := h.runCandles("run-dup"); got != 25 {
		t.Errorf("run-dup counted %d candles, want 25 (each batch once)", got)
	}
	if !strings.Contains(h.logs.String(), "ack floor behind the database") {
		t.Error("the writer did not rebuild its consumer after the unacked commit")
	}
	done := h.onlyCompleted()
	if done.Candles != 25 || done.PairsOK != 1 {
		t.Errorf("sync.completed = %+v, want 25 candles, 1 pair ok", done)
	}
}

func TestLockedDatabaseIsRetriedInOrder(t *testing.T) {
	h := newHarness(t)
	h.start(func(o *writer.Options) { o.AckWait = time.Second }, store.WithBusyTimeout(20*time.Millisecond))
	first := h.publish(batch("run-lock", "BTCUSDT", 0, false, series(t0, 5, 0)), "")
	h.waitApplied(first.Sequence)

	// Another process holds the write lock for longer than AckWait: the
	// writer must keep retrying the same batch, and the batches JetStream
	// delivers again meanwhile must not be applied twice or out of order.
	locker, err := sql.Open("sqlite", h.dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	conn, err := locker.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 1; i <= 6; i++ {
		last = h.publish(batch("run-lock", "BTCUSDT", i, false, series(t0+int64(i)*h4, 5, float64(i))), "").Sequence
	}
	eventually(t, "a retry", func() bool { return strings.Contains(h.logs.String(), "apply batch; retrying") })
	// Barrier: JetStream has delivered batches again after AckWait (the
	// writer keeps the one in hand with InProgress; the ones behind it
	// expire) while the writer retried several times.
	cons, err := h.js.Consumer(context.Background(), candles.StreamCandles, writer.ConsumerBatches)
	if err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := cons.Info(context.Background())
		if err != nil {
			return err
		}
		if retries := strings.Count(h.logs.String(), "apply batch; retrying"); info.NumRedelivered == 0 || retries < 4 {
			return fmt.Errorf("%d batches redelivered, %d retries so far", info.NumRedelivered, retries)
		}
		return nil
	})
	if got := h.watermark(candles.StreamCandles); got != first.Sequence {
		t.Fatalf("watermark moved to %d while the database was locked", got)
	}
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	h.waitApplied(last)
	h.assertDB()
	if got := h.runCandles("run-lock"); got != 35 {
		t.Errorf("run counted %d candles, want 35 (7 batches of 5, each once)", got)
	}
}

func TestBadBatchesAreRejectedOnce(t *testing.T) {
	h := newHarness(t)
	good1 := h.publish(batch("", "BTCUSDT", 0, false, series(t0, 3, 0)), "")
	malformed := h.publishRaw(candles.BatchSubject("4h", "BTCUSDT"), []byte(`{"v":1,"symbol":`), "")
	broken := batch("r", "ETHUSDT", 0, false, series(t0, 3, 0))
	broken.Candles[1].High = broken.Candles[1].Low - 1 // breaks high >= max(open, close)
	data, _ := json.Marshal(broken)
	ruleBreaking := h.publishRaw(candles.BatchSubject("4h", "ETHUSDT"), data, "")
	wrongSubject := h.publishRaw(candles.BatchSubject("4h", "SOLUSDT"), data, "")
	good2 := h.publish(batch("", "ETHUSDT", 0, false, series(t0+10*h4, 3, 0)), "")

	w := h.start(nil)
	h.waitApplied(good2.Sequence)
	w.stop()
	w = h.restart(nil) // a restart must not reject them again
	w.stop()

	h.assertDB()
	evs := h.events(candles.KindBatchRejected)
	if len(evs) != 3 {
		t.Fatalf("%d batch.rejected events, want 3", len(evs))
	}
	want := []struct {
		seq      uint64
		symbol   string
		runID    string
		contains string
	}{
		{malformed.Sequence, "BTCUSDT", "", "malformed batch"},
		{ruleBreaking.Sequence, "ETHUSDT", "r", "high"},
		{wrongSubject.Sequence, "SOLUSDT", "r", "published on"},
	}
	for i, e := range evs {
		var got candles.BatchRejected
		if err := json.Unmarshal(e, &got); err != nil {
			t.Fatal(err)
		}
		w := want[i]
		if got.StreamSeq != w.seq || got.Source != "stream" || got.Symbol != w.symbol || got.Interval != "4h" || got.RunID != w.runID ||
			got.Kind != candles.KindBatchRejected || !strings.Contains(got.Reason, w.contains) {
			t.Errorf("event %d = %+v, want stream_seq %d, source stream, %s/4h, reason containing %q", i, got, w.seq, w.symbol, w.contains)
		}
	}
	if got := h.watermark(candles.StreamCandles); got != good2.Sequence {
		t.Errorf("watermark %d, want %d", got, good2.Sequence)
	}
	_ = good1
}

func TestRunCompletesOnce(t *testing.T) {
	h := newHarness(t)
	h.start(func(o *writer.Options) { o.ProgressEvery = 50 * time.Millisecond })
	btc, eth, sol := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}, candles.Pair{Symbol: "SOLUSDT", Interval: "4h"}
	startedAt := time.Date(2024, 5, 1, 1, 0, 0, 0, time.UTC)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-1"),
		Pairs: []candles.Pair{btc, eth, sol}, PairsTotal: 3, Reason: "daily"}
	started.Time = startedAt
	h.event(&started, "sync.started:run-1")

	h.publish(batch("run-1", "BTCUSDT", 0, false, series(t0, 3, 0)), "")
	eventually(t, "a progress report", func() bool {
		return strings.Contains(h.logs.String(), `msg="sync progress" run_id=run-1 pairs_done=0 pairs_total=3 percent=0 eta=unknown candles=3`)
	})
	h.publish(batch("run-1", "BTCUSDT", 1, true, series(t0+3*h4, 2, 0)), "")
	h.publish(batch("run-1", "ETHUSDT", 0, true, series(t0, 4, 0)), "")
	failed := candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, "run-1"), Symbol: "SOLUSDT", Interval: "4h", Reason: "HTTP 400: Invalid symbol."}
	h.event(&failed, "")
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) > 0 })
	// Late duplicates of the run's messages change nothing.
	h.event(&failed, "")
	h.event(&started, "")
	last := h.publish(batch("run-1", "ETHUSDT", 1, true, nil), "")
	h.waitApplied(last.Sequence)
	lastEvent := h.lastSeq(candles.EventSubject(candles.KindSyncStarted))
	eventually(t, "the run events handled", func() bool { return h.watermark(candles.StreamEvents) >= lastEvent })

	got := h.onlyCompleted()
	if got.RunID != "run-1" || got.PairsTotal != 3 || got.PairsOK != 2 || got.PairsFailed != 1 || got.Candles != 9 ||
		!got.StartedAt.Equal(startedAt) || got.FinishedAt.Before(got.StartedAt) || got.V != candles.Version {
		t.Errorf("sync.completed = %+v", got)
	}
	if len(got.Failed) != 1 || got.Failed[0].Symbol != "SOLUSDT" || got.Failed[0].Interval != "4h" || got.Failed[0].Reason != failed.Reason {
		t.Errorf("failed pairs = %+v", got.Failed)
	}
	pairs := h.events(candles.KindPairCompleted)
	var completed []string
	for _, e := range pairs {
		var pc candles.PairCompleted
		if err := json.Unmarshal(e, &pc); err != nil {
			t.Fatal(err)
		}
		completed = append(completed, fmt.Sprintf("%s %s/%s %d new=%d refetched=%d repaired=%d",
			pc.RunID, pc.Symbol, pc.Interval, pc.Candles, pc.CandlesNew, pc.CandlesRefetched, pc.Repaired))
	}
	if want := []string{"run-1 BTCUSDT/4h 5 new=5 refetched=0 repaired=0", "run-1 ETHUSDT/4h 4 new=4 refetched=0 repaired=0"}; strings.Join(completed, ",") != strings.Join(want, ",") {
		t.Errorf("pair.completed = %v, want %v", completed, want)
	}
	h.assertDB()
}

func TestMalformedRunEventsAreDropped(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	h.publishRaw(candles.EventSubject(candles.KindSyncStarted), []byte(`not json`), "")
	h.publishRaw(candles.EventSubject(candles.KindPairFailed), []byte(`{"v":1,"kind":"pair.failed","symbol":"BTCUSDT"}`), "")
	h.publishRaw(candles.EventSubject(candles.KindSyncStarted), []byte(`{"v":1,"run_id":"x","pairs":[{"symbol":"btc","interval":"4h"}]}`), "")
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-ok"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}, PairsTotal: 1}
	h.event(&started, "")
	h.publish(batch("run-ok", "BTCUSDT", 0, true, series(t0, 2, 0)), "")
	eventually(t, "sync.completed of run-ok", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	if got := strings.Count(h.logs.String(), "malformed run event dropped"); got != 3 {
		t.Errorf("%d malformed events logged, want 3", got)
	}
}

func TestRestartContinuesFromWatermark(t *testing.T) {
	h := newHarness(t)
	syms := []string{"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}
	var pairs []candles.Pair
	for _, s := range syms {
		pairs = append(pairs, candles.Pair{Symbol: s, Interval: "4h"})
	}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-big"), Pairs: pairs, PairsTotal: len(pairs)}
	h.event(&started, "")
	const pages = 100
	var last uint64
	total := 0
	for p := 0; p < pages; p++ {
		for _, s := range syms {
			b := batch("run-big", s, p, p == pages-1, series(t0+int64(p)*50*h4, 50, float64(p%3)))
			total += len(b.Candles)
			last = h.publish(b, "").Sequence
		}
	}
	w := h.start(nil)
	h.waitApplied(40)
	w.stop()
	stoppedAt := h.watermark(candles.StreamCandles)
	t.Logf("stopped at watermark %d of %d", stoppedAt, last)

	h.start(nil)
	h.waitApplied(last)
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	h.assertDB()
	if got := h.runCandles("run-big"); got != int64(total) {
		t.Errorf("run counted %d candles, want %d", got, total)
	}
	var done candles.SyncCompleted
	if err := json.Unmarshal(h.events(candles.KindSyncCompleted)[0], &done); err != nil {
		t.Fatal(err)
	}
	if done.Candles != int64(total) || done.PairsOK != len(syms) {
		t.Errorf("sync.completed = %+v, want %d candles and %d pairs ok", done, total, len(syms))
	}
}

func TestRestoredOlderDatabaseCatchesUp(t *testing.T) {
	h := newHarness(t)
	publishRange := func(from, to int) uint64 {
		var last uint64
		for i := from; i < to; i++ {
			last = h.publish(batch("run-r", "BTCUSDT", i, i == 19, series(t0+int64(i)*10*h4, 10, 0)), "").Sequence
		}
		return last
	}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-r"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}, PairsTotal: 1}
	h.event(&started, "")
	mid := publishRange(0, 10)
	w := h.start(nil)
	h.waitApplied(mid)
	w.stop()
	backup := h.dbPath + ".bak"
	copyFile(t, h.dbPath, backup)

	last := publishRange(10, 20)
	w = h.start(nil)
	h.waitApplied(last)
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	w.stop()

	// Restore the older copy: its watermark is behind the consumer's ack floor.
	for _, p := range []string{h.dbPath + "-wal", h.dbPath + "-shm"} {
		os.Remove(p)
	}
	copyFile(t, backup, h.dbPath)
	if got := h.watermark(candles.StreamCandles); got != mid {
		t.Fatalf("restored watermark %d, want %d", got, mid)
	}
	h.start(nil)
	h.waitApplied(last)
	h.assertDB()
	if !strings.Contains(h.logs.String(), "ack floor ahead of the database") {
		t.Error("the writer did not rebuild its consumer for the restored database")
	}
	if got := h.runCandles("run-r"); got != 200 {
		t.Errorf("run counted %d candles, want 200", got)
	}
	// The re-completed run is announced with the same message id, which
	// JetStream drops as a duplicate. Barrier: the writer marked it
	// announced, which it does after the publish.
	eventually(t, "run-r announced again", func() bool {
		var announced int
		h.query(func(db *sql.DB) error {
			return db.QueryRow(`SELECT COALESCE(MAX(announced), 0) FROM runs WHERE run_id = 'run-r'`).Scan(&announced)
		})
		return announced == 1
	})
	if got := len(h.events(candles.KindSyncCompleted)); got != 1 {
		t.Errorf("%d sync.completed events, want 1", got)
	}
}

func TestStreamResetRebasesWatermark(t *testing.T) {
	h := newHarness(t)
	st, err := store.Open(context.Background(), h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	// The database has applied 500 batches of a JetStream store that is gone.
	if err := st.Advance(context.Background(), candles.StreamCandles, 500); err != nil {
		t.Fatal(err)
	}
	st.Close()
	var last uint64
	for i := 0; i < 3; i++ {
		last = h.publish(batch("", "BTCUSDT", i, false, series(t0+int64(i)*h4, 1, 0)), "").Sequence
	}
	h.start(nil)
	eventually(t, "the new stream applied", func() bool { return h.watermark(candles.StreamCandles) == last })
	h.assertDB()
}

func TestCoverageEndpoint(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	h.publish(batch("", "BTCUSDT", 0, false, series(t0, 5, 0)), "")
	last := h.publish(batch("", "ETHUSDT", 0, false, series(t0+h4, 2, 0)), "")
	h.waitApplied(last.Sequence)

	tests := []struct {
		name    string
		body    string
		want    []candles.PairCoverage
		errCode string
		errHas  string
	}{{
		name: "empty body: every stored pair",
		want: []candles.PairCoverage{
			{Symbol: "BTCUSDT", Interval: "4h", First: t0, Last: t0 + 4*h4, Count: 5, Expected: 5},
			{Symbol: "ETHUSDT", Interval: "4h", First: t0 + h4, Last: t0 + 2*h4, Count: 2, Expected: 2},
		},
	}, {
		name: "asked pairs",
		body: `{"pairs":[{"symbol":"ETHUSDT","interval":"4h"},{"symbol":"XRPUSDT","interval":"1d"}]}`,
		want: []candles.PairCoverage{
			{Symbol: "ETHUSDT", Interval: "4h", First: t0 + h4, Last: t0 + 2*h4, Count: 2, Expected: 2},
			{Symbol: "XRPUSDT", Interval: "1d"},
		},
	}, {
		name: "empty object", body: `{}`,
		want: []candles.PairCoverage{
			{Symbol: "BTCUSDT", Interval: "4h", First: t0, Last: t0 + 4*h4, Count: 5, Expected: 5},
			{Symbol: "ETHUSDT", Interval: "4h", First: t0 + h4, Last: t0 + 2*h4, Count: 2, Expected: 2},
		},
	},
		{name: "bad JSON", body: `{"pairs":[`, errCode: "400", errHas: "malformed JSON"},
		{name: "unknown field", body: `{"pair":[]}`, errCode: "400", errHas: "pair: unknown field"},
		{name: "unknown field in a pair", body: `{"pairs":[{"symbol":"BTCUSDT","interval":"4h","x":1}]}`, errCode: "400", errHas: "x: unknown field"},
		{name: "wrong type", body: `{"pairs":"BTCUSDT"}`, errCode: "400", errHas: "pairs: wrong type"},
		{name: "bad symbol", body: `{"pairs":[{"symbol":"btc","interval":"4h"}]}`, errCode: "400", errHas: "pairs[0].symbol"},
		{name: "bad interval", body: `{"pairs":[{"symbol":"BTCUSDT","interval":"4h"},{"symbol":"BTCUSDT","interval":"7h"}]}`, errCode: "400", errHas: "pairs[1].interval"},
		{name: "trailing data", body: `{} {}`, errCode: "400", errHas: "trailing data"},
		{name: "gaps of the wrong type", body: `{"gaps":"yes"}`, errCode: "400", errHas: "gaps: wrong type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.nc.Request(candles.SubjectAPICoverage, []byte(tt.body), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			code, desc := resp.Header.Get(micro.ErrorCodeHeader), resp.Header.Get(micro.ErrorHeader)
			if tt.errCode != "" {
				if code != tt.errCode || !strings.Contains(desc, tt.errHas) {
					t.Errorf("error %q %q, want %s containing %q", code, desc, tt.errCode, tt.errHas)
				}
				return
			}
			if code != "" {
				t.Fatalf("error %s: %s", code, desc)
			}
			var got candles.CoverageResponse
			if err := json.Unmarshal(resp.Data, &got); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got.Pairs) != fmt.Sprint(tt.want) {
				t.Errorf("pairs = %+v, want %+v", got.Pairs, tt.want)
			}
		})
	}

	t.Run("micro discovery", func(t *testing.T) {
		subj, err := micro.ControlSubject(micro.InfoVerb, writer.ServiceName, "")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := h.nc.Request(subj, nil, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var info micro.Info
		if err := json.Unmarshal(resp.Data, &info); err != nil {
			t.Fatal(err)
		}
		if info.Name != "candlekeep-writer" || info.Version != "0.1.0" || len(info.Endpoints) != 4 ||
			info.Endpoints[0].Name != "coverage" || info.Endpoints[0].Subject != candles.SubjectAPICoverage ||
			info.Endpoints[1].Name != "replay" || info.Endpoints[1].Subject != candles.SubjectAPIReplay ||
			info.Endpoints[2].Name != "database" || info.Endpoints[2].Subject != candles.SubjectAPIDatabase ||
			info.Endpoints[3].Name != "swap" || info.Endpoints[3].Subject != candles.SubjectAPIWriterSwap {
			t.Errorf("info = %+v", info)
		}
	})
}

func TestEmptyDatabaseCoverageIsAnEmptyList(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	var resp *nats.Msg
	eventually(t, "the coverage endpoint", func() bool {
		var err error
		resp, err = h.nc.Request(candles.SubjectAPICoverage, nil, time.Second)
		return err == nil
	})
	if got := strings.TrimSpace(string(resp.Data)); got != `{"pairs":[]}` {
		t.Errorf("reply %s, want {\"pairs\":[]}", got)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDeletedBatchesAreSkippedWithAWarning(t *testing.T) {
	h := newHarness(t)
	h.publish(batch("", "BTCUSDT", 0, false, series(t0, 2, 0)), "")
	data, _ := json.Marshal(batch("", "BTCUSDT", 1, false, series(t0+2*h4, 2, 0)))
	gone := h.publishRaw(candles.BatchSubject("4h", "BTCUSDT"), data, "")
	last := h.publish(batch("", "BTCUSDT", 2, false, series(t0+4*h4, 2, 0)), "")
	s, err := h.js.Stream(context.Background(), candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(context.Background(), gone.Sequence); err != nil {
		t.Fatal(err)
	}
	h.start(nil)
	h.waitApplied(last.Sequence)
	h.assertDB()
	if !strings.Contains(h.logs.String(), fmt.Sprintf(`msg="batches missing from CANDLES were skipped" from_seq=%d to_seq=%d`, gone.Sequence, gone.Sequence)) {
		t.Error("no warning about the deleted batch")
	}
}

func TestRejectedRunBatchFailsItsPair(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-rej"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}, PairsTotal: 2}
	h.event(&started, "")
	h.publish(batch("run-rej", "BTCUSDT", 0, true, series(t0, 3, 0)), "")
	broken := batch("run-rej", "ETHUSDT", 0, true, series(t0, 2, 0))
	broken.Candles[0].CloseTime++ // not next open - 1
	data, _ := json.Marshal(broken)
	rejected := h.publishRaw(candles.BatchSubject("4h", "ETHUSDT"), data, "")
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	var got candles.SyncCompleted
	if err := json.Unmarshal(h.events(candles.KindSyncCompleted)[0], &got); err != nil {
		t.Fatal(err)
	}
	wantReason := fmt.Sprintf("batch rejected (stream_seq %d): ", rejected.Sequence)
	if got.PairsOK != 1 || got.PairsFailed != 1 || got.Candles != 3 || len(got.Failed) != 1 ||
		got.Failed[0].Symbol != "ETHUSDT" || !strings.HasPrefix(got.Failed[0].Reason, wantReason) {
		t.Errorf("sync.completed = %+v, want ETHUSDT failed with reason %q…", got, wantReason)
	}
	h.assertDB()
}
