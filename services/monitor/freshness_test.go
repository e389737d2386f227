package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/pkg/testlog"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/slack"
	"github.com/candlekeep/candlekeep/services/monitor/sla"
)

// eventMsgs reads every kind event EVENTS holds now: exactly as many as
// are pending (a short fetch timeout would read a loaded machine's slow
// delivery as "no events").
func eventMsgs(t *testing.T, s *system, kind string) []jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	cons, err := s.js.OrderedConsumer(ctx, candles.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{candles.EventSubject(kind)}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for n := info.NumPending; n > 0; n-- {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("read %s (%d more pending): %v", kind, n, err)
		}
		msgs = append(msgs, msg)
	}
	return msgs
}

// freshnessEvents reads every freshness.changed in EVENTS with its
// Nats-Msg-Id.
func freshnessEvents(t *testing.T, s *system) (evs []candles.FreshnessChanged, ids []string) {
	t.Helper()
	for _, msg := range eventMsgs(t, s, candles.KindFreshnessChanged) {
		var ev candles.FreshnessChanged
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
		ids = append(ids, msg.Headers().Get("Nats-Msg-Id"))
	}
	return evs, ids
}

// TestFreshnessHistory: the monitor records freshness.changed at its first
// evaluation, when the not-fresh pairs change, and as an hourly heartbeat
// (one id per hour) — and nothing in between.
func TestFreshnessHistory(t *testing.T) {
	s := newSystem(t)
	start := time.Date(2026, 11, 2, 10, 30, 0, 0, time.UTC)
	clock := testclock.New(start)
	iv, _ := candles.ParseInterval("4h")
	fresh := func(sym string, now time.Time) candles.PairCoverage {
		// The newest closed candle opened one interval before the forming one.
		last := iv.Add(iv.Align(now.UnixMilli()), -1)
		return candles.PairCoverage{Symbol: sym, Interval: "4h", First: iv.Add(last, -10), Last: last, Count: 11, Expected: 11}
	}
	empty := candles.PairCoverage{Symbol: "ETHUSDT", Interval: "4h"}
	o := startOwner(t, s, candles.DatabaseHealth{V: 1, QuickCheck: candles.CheckRun{OK: true}}, []candles.PairCoverage{fresh("BTCUSDT", start), empty})
	startMonitor(t, s, clock, nil)

	btc, eth := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}, candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	wait := func(n int) []candles.FreshnessChanged {
		t.Helper()
		var evs []candles.FreshnessChanged
		checkfor.Check(t, waitFor, pollGap, func() error {
			evs, _ = freshnessEvents(t, s)
			if len(evs) != n {
				return fmt.Errorf("%d freshness.changed, want %d", len(evs), n)
			}
			return nil
		})
		return evs
	}
	check := func(ev candles.FreshnessChanged, reason string, at time.Time, notFresh ...candles.PairFreshness) {
		t.Helper()
		if ev.Reason != reason || !ev.Time.Equal(at) || len(ev.Configured) != 2 || ev.Configured[0] != btc || ev.Configured[1] != eth ||
			ev.Fresh != 2-len(notFresh) || fmt.Sprint(ev.NotFresh) != fmt.Sprint(notFresh) {
			t.Errorf("freshness.changed = %+v, want %s at %s not fresh %v", ev, reason, at, notFresh)
		}
	}
	// evaluated waits for the monitor to have looked at the clock again
	// (several evaluations), the barrier before "nothing more was recorded".
	evaluated := func() {
		t.Helper()
		seen := clock.Reads()
		checkfor.Check(t, waitFor, pollGap, func() error {
			if clock.Reads() < seen+20 {
				return fmt.Errorf("the monitor read the clock %d times since", clock.Reads()-seen)
			}
			return nil
		})
	}

	evs := wait(1)
	check(evs[0], candles.FreshnessReasonStart, start, candles.PairFreshness{Symbol: "ETHUSDT", Interval: "4h", State: candles.FreshnessNoData})

	// Half an hour on, nothing changed: nothing recorded.
	clock.Add(30 * time.Minute)
	evaluated()
	if evs, _ := freshnessEvents(t, s); len(evs) != 1 {
		t.Fatalf("%d freshness.changed after 30 unchanged minutes, want 1", len(evs))
	}

	// ETHUSDT gets its candles: changed.
	changedAt := clock.Now()
	o.mu.Lock()
	o.coverage.Pairs = []candles.PairCoverage{fresh("BTCUSDT", changedAt), fresh("ETHUSDT", changedAt)}
	o.mu.Unlock()
	evs = wait(2)
	check(evs[1], candles.FreshnessReasonChanged, changedAt)

	// An hour after the change: the heartbeat, under the hour's id.
	clock.Add(time.Hour)
	hb := clock.Now()
	evs = wait(3)
	check(evs[2], candles.FreshnessReasonHeartbeat, hb)
	_, ids := freshnessEvents(t, s)
	if ids[2] != candles.FreshnessHeartbeatID(hb) || ids[2] != "freshness.heartbeat:1793620800" {
		t.Errorf("heartbeat id %q, want %q", ids[2], candles.FreshnessHeartbeatID(hb))
	}

	// A day later without new candles, the pairs turn stale (26 h limit
	// plus the candle's age): changed, then the heartbeat goes on.
	clock.Add(27 * time.Hour)
	staleAt := clock.Now()
	evs = wait(4)
	check(evs[3], candles.FreshnessReasonChanged, staleAt,
		candles.PairFreshness{Symbol: "BTCUSDT", Interval: "4h", State: candles.FreshnessStale},
		candles.PairFreshness{Symbol: "ETHUSDT", Interval: "4h", State: candles.FreshnessStale})
}

func TestFreshnessOfCannotTell(t *testing.T) {
	if _, _, ok := freshnessOf(snapshot{Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}}}); ok {
		t.Error("a snapshot without the owner's coverage is recorded; want nothing (no data)")
	}
}

// syncBuffer is a log sink the test reads while it is written.
type syncBuffer = testlog.Buffer

func TestEventsRetentionWarning(t *testing.T) {
	for _, tt := range []struct {
		maxAge time.Duration
		warn   bool
	}{{30 * 24 * time.Hour, true}, {candles.MinEventsMaxAge, false}, {candles.DefaultEventsMaxAge, false}} {
		t.Run(tt.maxAge.String(), func(t *testing.T) {
			ns := natstest.RunServer(t)
			js, err := jetstream.New(natstest.Connect(t, ns))
			if err != nil {
				t.Fatal(err)
			}
			if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{EventsMaxAge: tt.maxAge}); err != nil {
				t.Fatal(err)
			}
			var buf syncBuffer
			checkEventsRetention(context.Background(), js, slog.New(slog.NewTextHandler(&buf, nil)))
			want := `level=WARN msg="EVENTS keeps events for less than the monthly SLA audit needs" max_age=720h0m0s needed=840h0m0s fix="candlekeep config set events-max-age=960h0m0s"`
			if got := strings.TrimSpace(buf.String()); (tt.warn && !strings.Contains(got, want)) || (!tt.warn && got != "") {
				t.Errorf("log = %q, want warning %v", got, tt.warn)
			}
		})
	}
}

// TestMonitorRunsTheSLAAudit: a monitor with --sla-schedule ticking every
// second audits the month before its clock: one sla.report on EVENTS and
// one summary at the Slack receiver, however many ticks.
func TestMonitorRunsTheSLAAudit(t *testing.T) {
	s := newSystem(t)
	clock := testclock.New(time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC))
	var mu sync.Mutex
	var posts []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		posts = append(posts, string(body))
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	defer hook.Close()
	sn, err := slack.New(slack.Options{WebhookURL: hook.URL + "/services/T/B/secret"})
	if err != nil {
		t.Fatal(err)
	}
	startMonitor(t, s, clock, func(o *Options) {
		o.SLASchedule = "@every 1s"
		o.Receivers = map[string]notify.Notifier{"slack": sn}
	})
	stream, err := s.js.Stream(context.Background(), candles.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var ev sla.ReportEvent
	checkfor.Check(t, waitFor, pollGap, func() error {
		msg, err := stream.GetLastMsgForSubject(context.Background(), candles.EventSubject(candles.KindSLAReport))
		if err != nil {
			return err
		}
		return json.Unmarshal(msg.Data, &ev)
	})
	if from := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC); !ev.Report.From.Equal(from) || !ev.Report.To.Equal(from.AddDate(0, 1, 0)) {
		t.Errorf("audited %s..%s, want October 2026", ev.Report.From, ev.Report.To)
	}
	if !strings.HasPrefix(ev.Summary, "SLA audit October 2026: ") {
		t.Errorf("summary %q", ev.Summary)
	}
	cons, err := s.js.Consumer(context.Background(), candles.StreamSync, sla.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	// Three ticks handled (each queues its summary before its ack).
	checkfor.Check(t, waitFor, pollGap, func() error {
		ci, err := cons.Info(context.Background())
		if err != nil {
			return err
		}
		if ci.AckFloor.Consumer < 3 {
			return fmt.Errorf("%d ticks handled", ci.AckFloor.Consumer)
		}
		return nil
	})
	checkfor.Check(t, waitFor, pollGap, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(posts) != 1 {
			return fmt.Errorf("slack got %d messages", len(posts))
		}
		return nil
	})
	mu.Lock()
	got := posts[0]
	mu.Unlock()
	if !strings.Contains(got, "SLA audit October 2026") || strings.Contains(got, "secret") {
		t.Errorf("slack message:\n%s", got)
	}
	info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter(candles.EventSubject(candles.KindSLAReport)))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[candles.EventSubject(candles.KindSLAReport)]; n != 1 {
		t.Errorf("%d sla.report events, want 1", n)
	}
}
