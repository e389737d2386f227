package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/pkg/testlog"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/slack"
)

// hook is a Slack webhook on loopback: it records every post (the
// alert name from the message's fallback text, and when it came) and
// answers what respond says.
type hook struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []post
	// respond answers the n-th post (0-based) of alert; nil answers 200.
	respond func(w http.ResponseWriter, r *http.Request, alert string, n int) bool
}

type post struct {
	alert string
	at    time.Time
}

func newHook(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, alert string, n int) bool) *hook {
	t.Helper()
	h := &hook{respond: respond}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			Text string `json:"text"`
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// "[FIRING] critical <alert>: ..." → <alert>
		f := strings.Fields(m.Text)
		alert := strings.TrimSuffix(f[2], ":")
		h.mu.Lock()
		n := 0
		for _, p := range h.got {
			if p.alert == alert {
				n++
			}
		}
		h.got = append(h.got, post{alert: alert, at: time.Now()})
		h.mu.Unlock()
		if h.respond != nil && h.respond(w, r, alert, n) {
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// url is the webhook URL, with a secret-looking path as Slack's have.
func (h *hook) url() string { return h.srv.URL + "/services/T000/B000/SECRETxyz" }

func (h *hook) posts() []post {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

func (h *hook) alerts() []string {
	var a []string
	for _, p := range h.posts() {
		a = append(a, p.alert)
	}
	return a
}

// waitAlerts waits until the hook has received exactly want, in order.
func (h *hook) waitAlerts(t *testing.T, want ...string) {
	t.Helper()
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		if got := h.alerts(); !slices.Equal(got, want) {
			return fmt.Errorf("hook got %v, want %v", got, want)
		}
		return nil
	})
}

func slackTo(t *testing.T, h *hook) *slack.Notifier {
	t.Helper()
	n, err := slack.New(slack.Options{WebhookURL: h.url()})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func note(alert string) notify.Notification {
	return notify.Notification{
		ID: "group-" + alert + ":1764849780000:firing", GroupKey: "group-" + alert, Kind: notify.Firing,
		Alert: alert, Severity: "critical", Summary: "something is wrong", Value: "12m", Threshold: "5m",
		Since: time.Date(2026, 12, 4, 12, 3, 0, 0, time.UTC), Runbook: "https://example.org/docs/alerts.md#" + alert,
	}
}

// startDispatcher runs a Dispatcher until the test ends (or stop is
// called) and returns it with its stop.
func startDispatcher(t *testing.T, o notify.DispatcherOptions) (*notify.Dispatcher, func()) {
	t.Helper()
	d, err := notify.NewDispatcher(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return d, func() { cancel(); <-done }
}

func send(t *testing.T, d *notify.Dispatcher, n notify.Notification) {
	t.Helper()
	if err := d.Send(context.Background(), n); err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, d *notify.Dispatcher, receiver string) map[string]float64 {
	t.Helper()
	return map[string]float64{
		notify.OutcomeSent:    testutil.ToFloat64(d.Counter(receiver, notify.OutcomeSent)),
		notify.OutcomeRetried: testutil.ToFloat64(d.Counter(receiver, notify.OutcomeRetried)),
		notify.OutcomeFailed:  testutil.ToFloat64(d.Counter(receiver, notify.OutcomeFailed)),
	}
}

func waitCounts(t *testing.T, d *notify.Dispatcher, receiver string, want map[string]float64) {
	t.Helper()
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		if got := count(t, d, receiver); !maps(got, want) {
			return fmt.Errorf("counts of %s: got %v, want %v", receiver, got, want)
		}
		return nil
	})
}

func maps(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestDispatcherHonoursRetryAfter(t *testing.T) {
	h := newHook(t, func(w http.ResponseWriter, _ *http.Request, _ string, n int) bool {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	})
	reg := prometheus.NewRegistry()
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		Registerer: reg, BackoffInitial: 10 * time.Millisecond,
	})
	send(t, d, note("RateLimited"))
	h.waitAlerts(t, "RateLimited", "RateLimited")
	p := h.posts()
	// The gap the server saw is a lower bound on how long the Dispatcher
	// waited: the retry must not come before Retry-After said.
	if gap := p[1].at.Sub(p[0].at); gap < time.Second {
		t.Errorf("retry came %v after the 429, want at least the Retry-After of 1s", gap)
	}
	waitCounts(t, d, "slack", map[string]float64{"sent": 1, "retried": 1, "failed": 0})
	// The counter is the registered one.
	if n, err := testutil.GatherAndCount(reg, "candlekeep_notifications_total"); err != nil || n != 3 {
		t.Errorf("registry has %d series of candlekeep_notifications_total (err %v), want 3", n, err)
	}
}

func TestDispatcherRetries5xxThenDelivers(t *testing.T) {
	h := newHook(t, func(w http.ResponseWriter, _ *http.Request, alert string, n int) bool {
		if alert == "Flaky" && n < 2 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return true
		}
		return false
	})
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		BackoffInitial: 10 * time.Millisecond,
	})
	send(t, d, note("Flaky"))
	send(t, d, note("AfterFlaky"))
	// Order holds through the retries: the second waits for the first.
	h.waitAlerts(t, "Flaky", "Flaky", "Flaky", "AfterFlaky")
	waitCounts(t, d, "slack", map[string]float64{"sent": 2, "retried": 2, "failed": 0})
}

func TestDispatcherDropsRejectedWithoutLeakingURL(t *testing.T) {
	h := newHook(t, func(w http.ResponseWriter, _ *http.Request, alert string, _ int) bool {
		if alert == "Rejected" {
			http.Error(w, "invalid_blocks", http.StatusBadRequest)
			return true
		}
		return false
	})
	var logs syncBuffer
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		Logger:         slog.New(slog.NewJSONHandler(&logs, nil)),
		BackoffInitial: 10 * time.Millisecond,
	})
	send(t, d, note("Rejected"))
	send(t, d, note("Next"))
	// Next is delivered after Rejected, in order: had Rejected been
	// retried it would show up again before Next.
	h.waitAlerts(t, "Rejected", "Next")
	waitCounts(t, d, "slack", map[string]float64{"sent": 1, "retried": 0, "failed": 1})

	var dropped map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if strings.HasPrefix(m["msg"].(string), "notification dropped") {
			dropped = m
		}
	}
	if dropped == nil {
		t.Fatalf("no 'notification dropped' log line in:\n%s", logs.String())
	}
	if dropped["receiver"] != "slack" || dropped["alert"] != "Rejected" || dropped["kind"] != "firing" {
		t.Errorf("drop log %v: want receiver slack, alert Rejected, kind firing", dropped)
	}
	if e, _ := dropped["err"].(string); e != "slack: webhook answered 400 Bad Request" {
		t.Errorf("drop log err = %q, want %q", e, "slack: webhook answered 400 Bad Request")
	}
	if strings.Contains(logs.String(), "SECRETxyz") || strings.Contains(logs.String(), h.srv.URL) {
		t.Errorf("logs show the webhook URL:\n%s", logs.String())
	}
}

func TestDispatcherHangingReceiverDelaysNoOne(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	slow := newHook(t, func(w http.ResponseWriter, r *http.Request, _ string, _ int) bool {
		// Hangs 30 s, or until the test lets it go.
		select {
		case <-release:
		case <-time.After(30 * time.Second):
		}
		return false
	})
	fast := newHook(t, nil)
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t),
		Receivers: map[string]notify.Notifier{
			"slow": slackTo(t, slow), "fast": slackTo(t, fast),
		},
		// Longer than the hang: this is about the queues being apart,
		// not about attempts timing out (TestDispatcherAttemptTimeoutRetries).
		AttemptTimeout: time.Minute, BackoffInitial: 10 * time.Millisecond,
	})
	send(t, d, note("First"))
	// The slow receiver is now stuck in its first attempt...
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		if len(slow.posts()) == 0 {
			return fmt.Errorf("slow receiver has no post yet")
		}
		return nil
	})
	// ...and neither Send nor the fast receiver waits for it.
	send(t, d, note("Second"))
	fast.waitAlerts(t, "First", "Second")
	if got := slow.alerts(); !slices.Equal(got, []string{"First"}) {
		t.Fatalf("slow receiver got %v while hanging, want only [First]", got)
	}
	select {
	case <-release:
		t.Fatal("the slow receiver was released before the fast one delivered")
	default:
	}
	releaseOnce.Do(func() { close(release) })
	slow.waitAlerts(t, "First", "Second")
	waitCounts(t, d, "fast", map[string]float64{"sent": 2, "retried": 0, "failed": 0})
	waitCounts(t, d, "slow", map[string]float64{"sent": 2, "retried": 0, "failed": 0})
}

func TestDispatcherAttemptTimeoutRetries(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	h := newHook(t, func(w http.ResponseWriter, r *http.Request, _ string, n int) bool {
		if n == 0 {
			// Hang until the client gives up.
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return true
		}
		return false
	})
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		AttemptTimeout: 200 * time.Millisecond, BackoffInitial: 10 * time.Millisecond,
	})
	send(t, d, note("Hung"))
	h.waitAlerts(t, "Hung", "Hung")
	waitCounts(t, d, "slack", map[string]float64{"sent": 1, "retried": 1, "failed": 0})
}

func TestDispatcherRestartDeliversLeftoversOnce(t *testing.T) {
	js := jetStream(t)
	h := newHook(t, nil)
	o := notify.DispatcherOptions{JS: js, Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)}}

	d1, stop1 := startDispatcher(t, o)
	send(t, d1, note("Delivered"))
	h.waitAlerts(t, "Delivered")
	stop1()
	// Queued while no Dispatcher runs: what a monitor leaves when it stops.
	send(t, d1, note("LeftA"))
	send(t, d1, note("LeftB"))

	d2, _ := startDispatcher(t, o)
	// The restarted monitor sends the delivered one again: a no-op.
	send(t, d2, note("Delivered"))
	send(t, d2, note("After"))
	// Deliveries are in queue order, so a second Delivered, LeftA or
	// LeftB would show up before After.
	h.waitAlerts(t, "Delivered", "LeftA", "LeftB", "After")
	waitCounts(t, d2, "slack", map[string]float64{"sent": 3, "retried": 0, "failed": 0})
}

func TestDispatcherSameIDDeliveredOnce(t *testing.T) {
	h := newHook(t, nil)
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
	})
	send(t, d, note("Twice"))
	send(t, d, note("Twice"))
	h.waitAlerts(t, "Twice")
	send(t, d, note("Twice")) // after delivery too
	send(t, d, note("Then"))
	h.waitAlerts(t, "Twice", "Then")
}

func TestDispatcherGivesUpAfterMaxAge(t *testing.T) {
	h := newHook(t, func(w http.ResponseWriter, _ *http.Request, alert string, _ int) bool {
		if alert == "Down" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	clock := testclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: jetStream(t), Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		Now: clock.Now, MaxAge: time.Hour, BackoffInitial: 10 * time.Millisecond, Tick: 10 * time.Millisecond,
	})
	send(t, d, note("Down"))
	waitCounts(t, d, "slack", map[string]float64{"sent": 0, "retried": 1, "failed": 0})
	clock.Add(time.Hour + time.Minute)
	send(t, d, note("Later"))
	// Down is given up, and the queue moves on to Later.
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		if a := h.alerts(); len(a) == 0 || a[len(a)-1] != "Later" {
			return fmt.Errorf("hook got %v, want Later last", a)
		}
		return nil
	})
	for _, a := range h.alerts()[:len(h.alerts())-1] {
		if a != "Down" {
			t.Errorf("hook got %v before Later, want only Down", h.alerts())
		}
	}
	if c := count(t, d, "slack"); c["failed"] != 1 || c["sent"] != 1 {
		t.Errorf("counts %v, want failed 1 and sent 1", c)
	}
}

func TestDispatcherOptionsValidate(t *testing.T) {
	js := jetStream(t)
	n := slackTo(t, newHook(t, nil))
	for _, tc := range []struct {
		name string
		o    notify.DispatcherOptions
		want string
	}{
		{"no js", notify.DispatcherOptions{}, "no JetStream"},
		{"bad receiver name", notify.DispatcherOptions{JS: js, Receivers: map[string]notify.Notifier{"sl.ack": n}}, `receiver name "sl.ack"`},
		{"nil notifier", notify.DispatcherOptions{JS: js, Receivers: map[string]notify.Notifier{"slack": nil}}, `receiver "slack" has no notifier`},
		{"negative", notify.DispatcherOptions{JS: js, MaxAge: -time.Second}, "max age -1s"},
		{"max below initial", notify.DispatcherOptions{JS: js, BackoffInitial: time.Minute, BackoffMax: time.Second}, "backoff max 1s is below"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := (notify.DispatcherOptions{JS: js, Receivers: map[string]notify.Notifier{"slack": n}}).Validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

// syncBuffer is a log sink the test reads while it is written.
type syncBuffer = testlog.Buffer

func TestDispatcherExpiresSentMarkers(t *testing.T) {
	js := jetStream(t)
	h := newHook(t, nil)
	clock := testclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	d, _ := startDispatcher(t, notify.DispatcherOptions{
		JS: js, Receivers: map[string]notify.Notifier{"slack": slackTo(t, h)},
		Now: clock.Now, SentRetention: time.Hour, Tick: 10 * time.Millisecond,
	})
	kv, err := js.KeyValue(context.Background(), notify.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	keys := func() []string {
		l, err := kv.ListKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var k []string
		for key := range l.Keys() {
			k = append(k, key)
		}
		return k
	}
	send(t, d, note("Old"))
	h.waitAlerts(t, "Old")
	// Delivered, the entry stays as a marker that says so.
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		k := keys()
		if len(k) != 1 {
			return fmt.Errorf("keys %v, want one marker", k)
		}
		e, err := kv.Get(context.Background(), k[0])
		if err != nil {
			return err
		}
		var v struct {
			Outcome  string `json:"outcome"`
			Attempts int    `json:"attempts"`
		}
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			return err
		}
		if v.Outcome != "sent" || v.Attempts != 1 {
			return fmt.Errorf("marker %s, want outcome sent after 1 attempt", e.Value())
		}
		return nil
	})
	clock.Add(time.Hour + time.Minute)
	checkfor.Check(t, 20*time.Second, 10*time.Millisecond, func() error {
		if k := keys(); len(k) != 0 {
			return fmt.Errorf("keys %v, want none once the marker expired", k)
		}
		return nil
	})
	// Past the retention the ID is new again.
	send(t, d, note("Old"))
	h.waitAlerts(t, "Old", "Old")
}
