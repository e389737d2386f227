package writer_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/testlog"
	"github.com/candlekeep/candlekeep/services/writer"
)

// harness is one embedded nats-server, one database path and a model of
// what the database must hold after the batches published so far.
type harness struct {
	t      *testing.T
	ns     *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	dbPath string
	logs   *logBuffer
	model  map[rowKey]candles.Candle
	// trusted: the writer checks that the pipeline planned each batch.
	trusted bool
}

type rowKey struct {
	Symbol, Interval string
	Open             int64
}

type row struct {
	Symbol, Interval string
	C                candles.Candle
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ns: ns, nc: nc, js: js, dbPath: filepath.Join(t.TempDir(), "candles.db"),
		logs: &logBuffer{}, model: map[rowKey]candles.Candle{}}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WRITER_TEST_LOGS") != "" {
			t.Logf("writer logs:\n%s", h.logs.String())
		}
	})
	return h
}

// logBuffer is a log sink the test reads while it is written.
type logBuffer = testlog.Buffer

// running is one writer process.
type running struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	store  *store.Store
	w      *writer.Writer
	once   sync.Once
}

// start runs a writer on the harness database until stop (or the test's end).
func (h *harness) start(mod func(*writer.Options), storeOpts ...store.Option) *running {
	h.t.Helper()
	st, err := store.Open(context.Background(), h.dbPath, storeOpts...)
	if err != nil {
		h.t.Fatal(err)
	}
	o := writer.DefaultOptions()
	o.Conn = h.nc
	o.Store = st
	o.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The tests of applying publish batches without planning runs; the
	// trust tests (trust_test.go) turn the check back on.
	o.AllowUnplanned = !h.trusted
	if mod != nil {
		mod(&o)
	}
	w, err := writer.New(o)
	if err != nil {
		st.Close()
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: h.t, cancel: cancel, done: make(chan error, 1), store: st, w: w}
	go func() { r.done <- w.Run(ctx) }()
	h.t.Cleanup(r.stop)
	return r
}

// stop cancels the writer, expects Run to return nil promptly and closes
// the database.
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				r.t.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(15 * time.Second):
			r.t.Error("Run did not return within 15s of cancel")
		}
		if err := r.store.Close(); err != nil {
			r.t.Errorf("close store: %v", err)
		}
	})
}

// publish sends b on its subject; a batch JetStream stores (not a duplicate)
// goes into the model.
func (h *harness) publish(b candles.Batch, msgID string) *jetstream.PubAck {
	h.t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		h.t.Fatal(err)
	}
	ack := h.publishRaw(candles.BatchSubject(b.Interval, b.Symbol), data, msgID)
	if !ack.Duplicate {
		for _, c := range b.Candles {
			h.model[rowKey{b.Symbol, b.Interval, c.OpenTime}] = c
		}
	}
	return ack
}

func (h *harness) publishRaw(subject string, data []byte, msgID string) *jetstream.PubAck {
	h.t.Helper()
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := h.js.Publish(context.Background(), subject, data, opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack
}

func (h *harness) event(ev candles.Event, msgID string) {
	h.t.Helper()
	if err := candles.PublishEvent(context.Background(), h.js, ev, msgID, time.Now()); err != nil {
		h.t.Fatal(err)
	}
}

// query runs fn on a fresh read-only connection to the database file.
func (h *harness) query(fn func(db *sql.DB) error) {
	h.t.Helper()
	db, err := sql.Open("sqlite", h.dbPath+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	if err := fn(db); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) watermark(stream string) uint64 {
	h.t.Helper()
	var w uint64
	h.query(func(db *sql.DB) error {
		err := db.QueryRow(`SELECT last_seq FROM stream_state WHERE stream = ?`, stream).Scan(&w)
		if errors.Is(err, sql.ErrNoRows) || err != nil && strings.Contains(err.Error(), "no such table") {
			return nil
		}
		return err
	})
	return w
}

func (h *harness) runCandles(runID string) int64 {
	h.t.Helper()
	var n int64
	h.query(func(db *sql.DB) error {
		return db.QueryRow(`SELECT COALESCE(SUM(candles), 0) FROM run_pairs WHERE run_id = ?`, runID).Scan(&n)
	})
	return n
}

// waitApplied waits until the CANDLES watermark reaches seq.
func (h *harness) waitApplied(seq uint64) {
	h.t.Helper()
	eventually(h.t, "CANDLES watermark "+itoa(seq), func() bool { return h.watermark(candles.StreamCandles) >= seq })
}

// assertDB compares every stored candle with the model.
func (h *harness) assertDB() {
	h.t.Helper()
	var got []row
	h.query(func(db *sql.DB) error {
		rs, err := db.Query(`SELECT symbol, interval, open_time, close_time, open, high, low, close, volume,
  quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume FROM candles ORDER BY symbol, interval, open_time`)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var r row
			c := &r.C
			if err := rs.Scan(&r.Symbol, &r.Interval, &c.OpenTime, &c.CloseTime, &c.Open, &c.High, &c.Low, &c.Close,
				&c.Volume, &c.QuoteVolume, &c.Trades, &c.TakerBuyBaseVolume, &c.TakerBuyQuoteVolume); err != nil {
				return err
			}
			got = append(got, r)
		}
		return rs.Err()
	})
	want := make([]row, 0, len(h.model))
	for k, c := range h.model {
		want = append(want, row{k.Symbol, k.Interval, c})
	}
	sort.Slice(want, func(i, j int) bool {
		a, b := want[i], want[j]
		if a.Symbol != b.Symbol {
			return a.Symbol < b.Symbol
		}
		if a.Interval != b.Interval {
			return a.Interval < b.Interval
		}
		return a.C.OpenTime < b.C.OpenTime
	})
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		h.t.Errorf("database holds %d candles, want %d; first difference: %s", len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(got, want []row) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return "got " + jsonString(got[i]) + ", want " + jsonString(want[i])
		}
	}
	return "lengths differ"
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// events returns the payloads of every event of kind in EVENTS, in order.
func (h *harness) events(kind string) [][]byte {
	h.t.Helper()
	ctx := context.Background()
	s, err := h.js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		h.t.Fatal(err)
	}
	var out [][]byte
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(candles.EventSubject(kind)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m.Data)
		seq = m.Sequence + 1
	}
}

// lastSeq is the stream sequence of the last message on subject.
func (h *harness) lastSeq(subject string) uint64 {
	h.t.Helper()
	ctx := context.Background()
	name, err := h.js.StreamNameBySubject(ctx, subject)
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := h.js.Stream(ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		h.t.Fatal(err)
	}
	return m.Sequence
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	checkfor.Check(t, 15*time.Second, 10*time.Millisecond, func() error {
		if !cond() {
			return errors.New("waiting for " + what)
		}
		return nil
	})
}

// sessions counts the batch consumer sessions started in this test: each
// logs "consuming batches" once it has reconciled its consumer with the
// database, after Run's first announce.
func (h *harness) sessions() int {
	return strings.Count(h.logs.String(), `msg="consuming batches"`)
}

// restart starts a writer and waits until it has started consuming: the
// barrier for "a restarted writer has done whatever it would do with what
// is stored" (announced, rejected, reconciled its consumer).
func (h *harness) restart(mod func(*writer.Options)) *running {
	h.t.Helper()
	n := h.sessions()
	r := h.start(mod)
	eventually(h.t, "the restarted writer consuming", func() bool { return h.sessions() > n })
	return r
}

func itoa(n uint64) string { return jsonString(n) }

const (
	h4 = 4 * 60 * 60 * 1000
	t0 = int64(1704067200000) // 2024-01-01T00:00:00Z
)

// series returns n valid 4h candles from open time start; v shifts every
// value, so the same keys with another v are an update.
func series(start int64, n int, v float64) []candles.Candle {
	out := make([]candles.Candle, n)
	for i := range out {
		o := 100 + float64(i%7) + v
		out[i] = candles.Candle{
			OpenTime: start + int64(i)*h4, CloseTime: start + int64(i+1)*h4 - 1,
			Open: o, High: o + 2, Low: o - 1, Close: o + 1, Volume: 10 + v, QuoteVolume: 1000 + v,
			Trades: int64(50 + i), TakerBuyBaseVolume: 5, TakerBuyQuoteVolume: 500,
		}
	}
	return out
}

func batch(runID, symbol string, page int, final bool, cs []candles.Candle) candles.Batch {
	return candles.Batch{V: candles.Version, RunID: runID, Symbol: symbol, Interval: "4h", Page: page, Final: final, Candles: cs}
}

// onlyCompleted returns the one sync.completed event published, failing the
// test if there is not exactly one.
func (h *harness) onlyCompleted() candles.SyncCompleted {
	h.t.Helper()
	evs := h.events(candles.KindSyncCompleted)
	if len(evs) != 1 {
		h.t.Fatalf("%d sync.completed events, want 1", len(evs))
	}
	var done candles.SyncCompleted
	if err := json.Unmarshal(evs[0], &done); err != nil {
		h.t.Fatal(err)
	}
	return done
}
