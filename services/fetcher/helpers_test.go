package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// testLogger writes to stderr only with -v.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// serveSim serves s through wrap (nil: as is) on 127.0.0.1.
func serveSim(t testing.TB, s *sim.Sim, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = s
	if wrap != nil {
		h = wrap(s)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { s.Close(); srv.Close() })
	return srv.URL
}

// testOptions are options for a fetcher on nc against binanceURL with quick
// retries, no schedule and no catch-up.
func testOptions(nc *nats.Conn, binanceURL string) Options {
	o := DefaultOptions()
	o.Conn, o.Logger = nc, testLogger()
	o.BinanceURL = binanceURL
	o.Symbols = []string{"BTCUSDT", "ETHUSDT"}
	o.Intervals = []string{"1h"}
	o.RetryBase = 50 * time.Millisecond
	o.RequestTimeout = 2 * time.Second
	o.SyncSchedule = ""
	o.SyncTimeout = 0
	o.CatchUp = false
	return o
}

// runFetcher runs a fetcher until the test ends, and checks it stops cleanly.
func runFetcher(t testing.TB, o Options) *Fetcher {
	t.Helper()
	f, _ := startFetcher(t, o)
	return f
}

// startFetcher runs a fetcher until the test ends or stop is called (stop
// waits for Run to return and checks it stopped cleanly), once it answers.
func startFetcher(t testing.TB, o Options) (f *Fetcher, stop func()) {
	t.Helper()
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("fetcher stopped with %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("fetcher did not stop within 15s")
			}
		})
	}
	t.Cleanup(stop)
	// Run registers the micro service once its state and consumers are set up.
	waitFor(t, 10*time.Second, "the fetcher to start", func() bool {
		_, err := o.Conn.Request("$SRV.PING."+ServiceName, nil, time.Second)
		return err == nil
	})
	return f, stop
}

// natsServer starts an embedded server and returns a connection and its JetStream.
func natsServer(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	checkfor.Check(t, timeout, 20*time.Millisecond, func() error {
		if !cond() {
			return errors.New("waiting for " + what)
		}
		return nil
	})
}

// publishJob queues a job as handleRequest does.
func publishJob(t testing.TB, js jetstream.JetStream, job candles.Job) {
	t.Helper()
	job.V = candles.Version
	data, _ := json.Marshal(job)
	if _, err := js.Publish(context.Background(), candles.JobSubject(job.Interval, job.Symbol), data,
		jetstream.WithMsgID("job:"+job.RunID+":"+job.Symbol+":"+job.Interval)); err != nil {
		t.Fatal(err)
	}
}

// streamMsgs returns the data of every message of stream on subject.
func streamMsgs(t testing.TB, js jetstream.JetStream, stream, subject string) [][]byte {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if subject == "" || m.Subject == subject {
			out = append(out, m.Data)
		}
	}
	return out
}

// batches returns the pages a run published for a pair, in stream order.
func batches(t testing.TB, js jetstream.JetStream, runID string, p candles.Pair) []candles.Batch {
	t.Helper()
	var out []candles.Batch
	for _, data := range streamMsgs(t, js, candles.StreamCandles, candles.BatchSubject(p.Interval, p.Symbol)) {
		var b candles.Batch
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatal(err)
		}
		if b.RunID == runID {
			out = append(out, b)
		}
	}
	return out
}

// finished reports whether a run published the final page of a pair.
func finished(t testing.TB, js jetstream.JetStream, runID string, p candles.Pair) bool {
	bs := batches(t, js, runID, p)
	return len(bs) > 0 && bs[len(bs)-1].Final
}

// eventsOf returns the events of kind in EVENTS.
func eventsOf(t testing.TB, js jetstream.JetStream, kind string) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for _, data := range streamMsgs(t, js, candles.StreamEvents, candles.EventSubject(kind)) {
		out = append(out, data)
	}
	return out
}

// klinesRange is a range of n candles of iv from start.
func klinesRange(iv candles.Interval, start time.Time, n int) (from, until int64) {
	from = iv.Align(start.UnixMilli())
	return from, iv.Add(from, n)
}
