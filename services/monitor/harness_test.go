package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/testclock"
)

const (
	waitFor = 20 * time.Second
	pollGap = 20 * time.Millisecond
)

// system is a real embedded NATS with the streams and a cluster
// configuration of two 4h pairs, for a monitor to watch.
type system struct {
	t   *testing.T
	nc  *nats.Conn
	js  jetstream.JetStream
	url string
}

func newSystem(t *testing.T) *system {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"symbols": "BTCUSDT,ETHUSDT", "intervals": "4h", "sync-schedule": "0 0 1 * * *", "sync-timeout": "30m"} {
		if _, err := cluster.Set(ctx, js, k, v, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return &system{t: t, nc: nc, js: js, url: ns.ClientURL()}
}

// publish publishes an event.
func (s *system) publish(ev candles.Event) {
	s.t.Helper()
	if err := candles.PublishEvent(context.Background(), s.js, ev, "", time.Now()); err != nil {
		s.t.Fatal(err)
	}
}

// owner is a fake database owner: a micro service named like the writer
// answering candles.api.database and candles.api.coverage with what the
// test sets, on its own connection so the test can stop it.
type owner struct {
	mu       sync.Mutex
	db       candles.DatabaseHealth
	coverage candles.CoverageResponse
	asked    []candles.CoverageRequest
	// errCode and errText, when set, are the database endpoint's error answer.
	errCode, errText string
	svc              micro.Service
}

func startOwner(t *testing.T, s *system, db candles.DatabaseHealth, cov []candles.PairCoverage) *owner {
	t.Helper()
	nc, err := nats.Connect(s.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	o := &owner{db: db, coverage: candles.CoverageResponse{Pairs: cov}}
	o.svc, err = micro.AddService(nc, micro.Config{Name: serviceWriter, Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	reply := func(r micro.Request, v any) {
		data, _ := json.Marshal(v)
		_ = r.Respond(data)
	}
	if err := o.svc.AddEndpoint("database", micro.HandlerFunc(func(r micro.Request) {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.errCode != "" {
			_ = r.Error(o.errCode, o.errText, nil)
			return
		}
		reply(r, o.db)
	}), micro.WithEndpointSubject(candles.SubjectAPIDatabase)); err != nil {
		t.Fatal(err)
	}
	if err := o.svc.AddEndpoint("coverage", micro.HandlerFunc(func(r micro.Request) {
		var req candles.CoverageRequest
		_ = json.Unmarshal(r.Data(), &req)
		o.mu.Lock()
		defer o.mu.Unlock()
		o.asked = append(o.asked, req)
		reply(r, o.coverage)
	}), micro.WithEndpointSubject(candles.SubjectAPICoverage)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.svc.Stop() })
	return o
}

// fail makes the database endpoint answer with a micro error (code "" answers again).
func (o *owner) fail(code, text string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errCode, o.errText = code, text
}

func (o *owner) stop(t *testing.T) {
	t.Helper()
	if err := o.svc.Stop(); err != nil {
		t.Fatal(err)
	}
}

// startFetcher is a fake fetcher: a micro service whose STATS carry stats.
func startFetcher(t *testing.T, s *system, stats candles.FetcherStats) {
	t.Helper()
	svc, err := micro.AddService(s.nc, micro.Config{Name: serviceFetcher, Version: "0.1.0",
		StatsHandler: func(*micro.Endpoint) any { return stats }})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AddEndpoint("sync", micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(nil) }),
		micro.WithEndpointSubject(candles.SubjectAPISync)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
}

// running is a monitor running on the system.
type running struct {
	m    *Monitor
	addr string
	stop func()
}

// startMonitor runs a monitor until the test ends (or stop).
func startMonitor(t *testing.T, s *system, clock *testclock.Clock, change func(*Options), before ...func(*Monitor)) *running {
	t.Helper()
	nc, err := nats.Connect(s.url)
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Conn = nc
	o.HTTPListen = "127.0.0.1:0"
	o.EvalInterval = 50 * time.Millisecond
	o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	o.Source = "test"
	if clock != nil {
		o.Now = clock.Now
	}
	addr := make(chan string, 1)
	o.Ready = func(a string) { addr <- a }
	if change != nil {
		change(&o)
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range before {
		f(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	r := &running{m: m}
	select {
	case r.addr = <-addr:
	case err := <-done:
		t.Fatalf("monitor stopped at start: %v", err)
	case <-time.After(waitFor):
		t.Fatal("monitor not listening")
	}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("monitor Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("monitor did not stop within 10s")
			}
			nc.Close()
		})
	}
	t.Cleanup(r.stop)
	return r
}

// get fetches a path of the monitor's HTTP server.
func (r *running) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + r.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// healthz is /healthz decoded.
func (r *running) healthz(t *testing.T) (int, candles.HealthReport) {
	t.Helper()
	code, body := r.get(t, "/healthz")
	var rep candles.HealthReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("/healthz %s: %v", body, err)
	}
	return code, rep
}

// metrics scrapes /metrics and parses it.
func (r *running) metrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := r.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// value is the value of the series of name with the labels (name=value
// pairs); ok false when there is none.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.Metric {
		match := len(m.Label) == len(labels)/2
		for i := 0; match && i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			match = found
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// apiHealth asks candles.api.health.
func apiHealth(t *testing.T, nc *nats.Conn) candles.HealthReport {
	t.Helper()
	msg, err := nc.Request(candles.SubjectAPIHealth, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep candles.HealthReport
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// checkOf returns the named check of rep.
func checkOf(rep candles.HealthReport, name string) candles.Check {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return candles.Check{}
}

// waitReport waits until the monitor's last report satisfies cond and
// returns that report.
func waitReport(t *testing.T, r *running, cond func(candles.HealthReport) error) candles.HealthReport {
	t.Helper()
	var rep candles.HealthReport
	checkfor.Check(t, waitFor, pollGap, func() error {
		rep = r.m.Health()
		return cond(rep)
	})
	return rep
}

func statusIs(want candles.CheckStatus) func(candles.HealthReport) error {
	return func(rep candles.HealthReport) error {
		if rep.Status != want {
			return fmt.Errorf("status %s, want %s: %+v", rep.Status, want, rep.Checks)
		}
		return nil
	}
}

// testWriter sends logs to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
