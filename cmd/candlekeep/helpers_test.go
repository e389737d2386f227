package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/testlog"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// testLogger writes to stderr with -v; otherwise it keeps the lines and
// prints them only if the test fails (the last 400 lines, most recent last),
// so a failure under make test says what the services were doing.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(logsOnFailure(t), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// logsOnFailure is a buffer for a test's service logs, printed (the last
// 400 lines) only if the test fails.
func logsOnFailure(t testing.TB) *testlog.Buffer {
	logs := &testlog.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(strings.TrimRight(logs.String(), "\n"), "\n")
			t.Logf("logs (last %d lines):\n%s", min(len(lines), 400), strings.Join(lines[max(0, len(lines)-400):], "\n"))
		}
	})
	return logs
}

// startSim serves a simulator on 127.0.0.1.
func startSim(t testing.TB, o sim.Options) (*sim.Sim, string) {
	t.Helper()
	s := sim.New(o)
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	return s, srv.URL
}

// testFetcherOptions are production defaults pointed at the simulator, with
// quick retries.
func testFetcherOptions(binanceURL string) fetcher.Options {
	o := fetcher.DefaultOptions()
	o.BinanceURL = binanceURL
	o.RetryBase = 100 * time.Millisecond
	o.RequestTimeout = 5 * time.Second
	o.SyncSchedule = fetcher.ScheduleOff // a tick must not start a run mid-test
	o.CatchUp = false                    // each test asks for exactly the runs it checks
	return o
}

// startUp runs `candlekeep up` in-process (embedded NATS on a free port) and
// returns its client URL; it is stopped, and must stop cleanly, at cleanup.
func startUp(t testing.TB, dataDir string, fo fetcher.Options) string {
	t.Helper()
	return startUpConfig(t, upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo,
		Writer: writer.DefaultOptions()}, testLogger(t))
}

// startUpConfig runs up in-process with cfg and returns its client URL once
// the writer, the fetcher and (when cfg runs it) the backup service answer
// (a 400 to a probe is an answer); up is stopped, and must stop cleanly, at
// cleanup. The embedded server runs without credentials (--nats-insecure):
// these tests are not about authentication, and they connect with plain
// URLs; upsecure_test.go runs up with its credentials.
func startUpConfig(t testing.TB, cfg upConfig, log *slog.Logger) string {
	t.Helper()
	cfg.Insecure = true
	return runUpInProcess(t, cfg, log)
}

// startSecureUpConfig is startUpConfig with the credentials `up` has by
// default; it returns the URL and the operator's seed file.
func startSecureUpConfig(t testing.TB, cfg upConfig, log *slog.Logger) (url, operatorSeed string) {
	t.Helper()
	cfg.Insecure = false
	return runUpInProcess(t, cfg, log), natsauth.SeedPath(filepath.Join(cfg.DataDir, authDirName), natsauth.UserOperator)
}

func runUpInProcess(t testing.TB, cfg upConfig, log *slog.Logger) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	cfg.Ready = func(url string) { ready <- url }
	go func() { done <- up(ctx, cfg, log) }()
	var url string
	select {
	case url = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("up stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("up did not start within 30s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("up returned %v on shutdown", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("up did not stop within 30s of cancel")
		}
	})
	subjects := []string{candles.SubjectAPICoverage, candles.SubjectAPISync}
	if cfg.Backup.enabled() {
		subjects = append(subjects, candles.SubjectAPIBackupList)
	}
	var nc *nats.Conn
	if cfg.Insecure {
		nc = connect(t, url)
	} else {
		nc = connectAs(t, url, natsauth.SeedPath(filepath.Join(cfg.DataDir, authDirName), natsauth.UserOperator))
	}
	checkfor.Check(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, subj := range subjects {
			if _, err := nc.Request(subj, []byte(`{"probe":1}`), time.Second); err != nil {
				return fmt.Errorf("%s: %w", subj, err)
			}
		}
		return nil
	})
	return url
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// events collects every event published on candles.events.>.
type events struct {
	mu  sync.Mutex
	all []json.RawMessage
}

func watchEvents(t testing.TB, nc *nats.Conn) *events {
	t.Helper()
	ev := &events{}
	sub, err := nc.Subscribe(candles.SubjectEventPrefix+">", func(m *nats.Msg) {
		ev.mu.Lock()
		ev.all = append(ev.all, append(json.RawMessage(nil), m.Data...))
		ev.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ev
}

// watchEventsSince collects the events stored in EVENTS since a time, and
// every later one: for services that may act before the test subscribes.
func watchEventsSince(t testing.TB, nc *nats.Conn, since time.Time) *events {
	t.Helper()
	ev := &events{}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, candles.StreamEvents, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev.mu.Lock()
		ev.all = append(ev.all, append(json.RawMessage(nil), m.Data()...))
		ev.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return ev
}

// of returns the events of kind for runID ("" = any run), in arrival order.
func (e *events) of(kind, runID string) []json.RawMessage {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []json.RawMessage
	for _, raw := range e.all {
		var h candles.EventHeader
		if json.Unmarshal(raw, &h) == nil && h.Kind == kind && (runID == "" || h.RunID == runID) {
			out = append(out, raw)
		}
	}
	return out
}

// wait blocks until an event of kind for runID arrived and decodes it into v.
func (e *events) wait(t testing.TB, kind, runID string, timeout time.Duration, v any) {
	t.Helper()
	checkfor.Check(t, timeout, 20*time.Millisecond, func() error {
		got := e.of(kind, runID)
		if len(got) == 0 {
			return fmt.Errorf("no %s event for run %q", kind, runID)
		}
		return json.Unmarshal(got[0], v)
	})
}

// waitMatch blocks until an event of kind decoded into v satisfies ok.
func (e *events) waitMatch(t testing.TB, kind string, timeout time.Duration, v any, ok func() bool) {
	t.Helper()
	checkfor.Check(t, timeout, 20*time.Millisecond, func() error {
		for _, raw := range e.of(kind, "") {
			if json.Unmarshal(raw, v) == nil && ok() {
				return nil
			}
		}
		return fmt.Errorf("no matching %s event", kind)
	})
}

// requestSync sends a request to candles.api.sync and returns the accepted run.
func requestSync(t testing.TB, nc *nats.Conn, body string) candles.SyncAccepted {
	t.Helper()
	// A fetcher just started may not answer yet, or answer that it is
	// still opening its buckets (a fresh cluster): ask again, as its
	// answer says.
	var msg *nats.Msg
	checkfor.Check(t, time.Minute, 100*time.Millisecond, func() error {
		var err error
		msg, err = nc.Request(candles.SubjectAPISync, []byte(body), 15*time.Second)
		if err != nil && !errors.Is(err, nats.ErrNoResponders) {
			t.Fatal(err)
		}
		if err == nil && msg.Header.Get("Nats-Service-Error-Code") == "503" && msg.Header.Get("Nats-Service-Error") == fetcher.StillStarting {
			return errors.New(msg.Header.Get("Nats-Service-Error"))
		}
		return err
	})
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("sync refused: %s %s", code, msg.Header.Get("Nats-Service-Error"))
	}
	var acc candles.SyncAccepted
	if err := json.Unmarshal(msg.Data, &acc); err != nil || acc.RunID == "" {
		t.Fatalf("bad reply %q: %v", msg.Data, err)
	}
	return acc
}

// readDB returns every stored candle, per pair, in open-time order.
func readDB(t testing.TB, path string) map[candles.Pair][]candles.Candle {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT symbol, interval, open_time, open, high, low, close, volume, close_time,
		quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume FROM candles ORDER BY symbol, interval, open_time`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[candles.Pair][]candles.Candle{}
	for rows.Next() {
		var p candles.Pair
		var c candles.Candle
		if err := rows.Scan(&p.Symbol, &p.Interval, &c.OpenTime, &c.Open, &c.High, &c.Low, &c.Close, &c.Volume,
			&c.CloseTime, &c.QuoteVolume, &c.Trades, &c.TakerBuyBaseVolume, &c.TakerBuyQuoteVolume); err != nil {
			t.Fatal(err)
		}
		out[p] = append(out[p], c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// truth is what the simulator serves for pairs over [from, until).
func truth(s *sim.Sim, symbols []string, interval string, from, until time.Time) map[candles.Pair][]candles.Candle {
	iv := candles.MustInterval(interval)
	out := map[candles.Pair][]candles.Candle{}
	for _, sym := range symbols {
		if cs := s.Klines(sym, iv, from.UnixMilli(), until.UnixMilli()); len(cs) > 0 {
			out[candles.Pair{Symbol: sym, Interval: interval}] = cs
		}
	}
	return out
}

// assertSame fails with the first difference between the database and the truth.
func assertSame(t testing.TB, got, want map[candles.Pair][]candles.Candle) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	for p, w := range want {
		g := got[p]
		if len(g) != len(w) {
			t.Fatalf("%s: %d candles stored, want %d", p, len(g), len(w))
		}
		for i := range w {
			if g[i] != w[i] {
				t.Fatalf("%s candle %d:\n got %+v\nwant %+v", p, i, g[i], w[i])
			}
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Fatalf("%s stored but not expected", p)
		}
	}
	t.Fatal("database differs from the truth")
}

func count(m map[candles.Pair][]candles.Candle) (n int) {
	for _, cs := range m {
		n += len(cs)
	}
	return n
}
