package backup_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/file"
)

var t0 = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// db is a real candles.db written as the writer writes it: one batch per
// CANDLES sequence.
type db struct {
	path string
	st   *store.Store
	seq  uint64
	next int64 // open time of the next candle, ms
}

func newDB(t testing.TB) *db {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "candles.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &db{path: path, st: st, next: t0.Add(-365 * 24 * time.Hour).UnixMilli()}
}

// write applies n batches of per new 1m candles of BTCUSDT.
func (d *db) write(t testing.TB, n, per int) {
	t.Helper()
	for range n {
		if err := d.apply(per); err != nil {
			t.Fatal(err)
		}
	}
}

func (d *db) apply(per int) error {
	b := candles.Batch{V: candles.Version, Symbol: "BTCUSDT", Interval: "1m"}
	for range per {
		b.Candles = append(b.Candles, candles.Candle{OpenTime: d.next, CloseTime: d.next + 59_999,
			Open: 1, High: 2, Low: 0.5, Close: 1.5, Volume: 10, QuoteVolume: 15, Trades: 3,
			TakerBuyBaseVolume: 5, TakerBuyQuoteVolume: 7})
		d.next += 60_000
	}
	d.seq++
	_, err := d.st.ApplyBatch(context.Background(), candles.StreamCandles, d.seq, b)
	return err
}

func fileTier(t testing.TB, name, dir string) backup.Tier {
	t.Helper()
	tier, err := file.New(name, dir)
	if err != nil {
		t.Fatal(err)
	}
	return tier
}

// events collects backup events from a real NATS server.
type events struct {
	mu  sync.Mutex
	all []map[string]any
}

func (e *events) ofKind(kind string) []map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []map[string]any
	for _, ev := range e.all {
		if ev["kind"] == kind {
			out = append(out, ev)
		}
	}
	return out
}

// startNATS runs an embedded server with candlekeep's streams and
// subscribes to the backup events.
func startNATS(t testing.TB) (*nats.Conn, jetstream.JetStream, *events) {
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
	ev := &events{}
	if _, err := nc.Subscribe(candles.SubjectEventPrefix+"backup.>", func(m *nats.Msg) {
		var v map[string]any
		if json.Unmarshal(m.Data, &v) == nil {
			ev.mu.Lock()
			ev.all = append(ev.all, v)
			ev.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc, js, ev
}

// complete returns the complete copies of tier.
func complete(t testing.TB, tier backup.Tier) []backup.Copy {
	t.Helper()
	copies, err := backup.List(context.Background(), tier)
	if err != nil {
		t.Fatal(err)
	}
	var out []backup.Copy
	for _, c := range copies {
		if c.Complete() {
			out = append(out, c)
		}
	}
	return out
}

// runService runs s until the test ends and fails the test if Run fails.
func runService(t testing.TB, s *backup.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
