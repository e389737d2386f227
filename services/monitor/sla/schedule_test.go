package sla

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
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/slack"
)

// slackHook is a loopback Slack webhook keeping the messages' text.
type slackHook struct {
	mu    sync.Mutex
	texts []string
}

func (h *slackHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var m struct {
		Text string `json:"text"`
	}
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &m); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.texts = append(h.texts, string(body))
	h.mu.Unlock()
	_, _ = w.Write([]byte("ok"))
}

func (h *slackHook) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.texts...)
}

// TestScheduledAudit: with the schedule ticking every second, the monitor's
// auditor audits October (the month before its clock), publishes one
// sla.report and the Slack receiver gets one summary, however many ticks
// come.
func TestScheduledAudit(t *testing.T) {
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	october := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	november := october.AddDate(0, 1, 0)
	clock := testclock.New(october.Add(-time.Hour))
	for at := october.Add(-time.Hour); at.Before(november); at = at.Add(time.Hour) {
		clock.Set(at)
		ev := freshness(at, nil)
		ev.Time = time.Time{} // stamped by the clock, as the monitor does
		if err := candles.PublishEvent(ctx, js, ev, candles.FreshnessHeartbeatID(at), clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
	clock.Set(november.Add(3 * time.Hour)) // the default tick: the 1st, 03:00

	hook := &slackHook{}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	sn, err := slack.New(slack.Options{WebhookURL: srv.URL + "/services/T000/B000/secret"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := notify.NewDispatcher(ctx, notify.DispatcherOptions{JS: js, Receivers: map[string]notify.Notifier{"slack": sn}, Logger: log, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuditor(AuditorOptions{JS: js, Schedule: "@every 1s", Sender: d, Targets: DefaultTargets(), Source: "test", Logger: log, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, run := range []func(context.Context) error{d.Run, a.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- run(ctx) }()
	}
	defer func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}()

	stream, err := js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var ev ReportEvent
	checkfor.Check(t, 30*time.Second, 100*time.Millisecond, func() error {
		msg, err := stream.GetLastMsgForSubject(ctx, candles.EventSubject(candles.KindSLAReport))
		if err != nil {
			return err
		}
		return json.Unmarshal(msg.Data, &ev)
	})
	r := ev.Report
	if !r.From.Equal(october) || !r.To.Equal(november) || r.Availability.Share != 1 || r.Availability.FreshDays != 31 || len(r.Days) != 31 {
		t.Errorf("report %s..%s availability %+v days %d; want October, fresh throughout", r.From, r.To, r.Availability, len(r.Days))
	}
	wantSummary := "SLA audit October 2026: 2 met, 3 missed, 2 not measured (2026-10-01T00:00:00Z .. 2026-11-01T00:00:00Z)\n" +
		"met availability: 100.000 % (31 of 31 days fresh throughout) (target >= 99.500 %)\n" +
		"MISSED sync duration: no sync completed (target p99 < 30m00s)\n" +
		"MISSED pairs ok per run: no sync completed (target every pair ok in every run)\n" +
		"met rate-limit hits: mean 0.000/h, max 0 in one hour, 0 hits (target < 1/h)\n" +
		"MISSED backup age: no backups recorded (target < 26h00m)\n" +
		"n/a RPO: not measured: no restore or drill recorded (target < 2h00m)\n" +
		"n/a RTO: not measured: no restore or drill recorded (target < 30m00s)"
	if ev.Summary != wantSummary || ev.Kind != candles.KindSLAReport || !ev.Time.Equal(clock.Now()) {
		t.Errorf("sla.report %s at %s, summary:\n%s\nwant:\n%s", ev.Kind, ev.Time, ev.Summary, wantSummary)
	}

	checkfor.Check(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n := len(hook.got()); n != 1 {
			return fmt.Errorf("slack got %d messages", n)
		}
		return nil
	})
	msg := hook.got()[0]
	for _, want := range []string{`"text":"SLA audit October 2026: 2 met, 3 missed, 2 not measured`, `📋 SLA audit October 2026`, `MISSED backup age: no backups recorded`} {
		if !strings.Contains(msg, want) {
			t.Errorf("slack message lacks %q:\n%s", want, msg)
		}
	}

	// More ticks audit the same month again: still one report, one message.
	cons, err := js.Consumer(ctx, candles.StreamSync, ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 30*time.Second, 100*time.Millisecond, func() error {
		ci, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if ci.AckFloor.Consumer < 3 {
			return fmt.Errorf("%d ticks handled", ci.AckFloor.Consumer)
		}
		return nil
	})
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(candles.EventSubject(candles.KindSLAReport)))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[candles.EventSubject(candles.KindSLAReport)]; n != 1 {
		t.Errorf("%d sla.report events, want 1", n)
	}
	// Each tick's Send came before its ack: the queue holds the one
	// notification, delivered, and nothing else.
	kv, err := js.KeyValue(ctx, notify.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Errorf("notification queue keys %q, want one", keys)
	}
	if n := len(hook.got()); n != 1 {
		t.Errorf("slack got %d messages, want 1", n)
	}

	sched, err := js.Stream(ctx, candles.StreamSync)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sched.GetLastMsgForSubject(ctx, candles.SubjectSLASchedule)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Nats-Schedule") != "@every 1s" || m.Header.Get("Nats-Schedule-Target") != candles.SubjectSLATick {
		t.Errorf("schedule headers %v", m.Header)
	}
}

func TestParseSchedule(t *testing.T) {
	now := time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC)
	pattern, next, err := ParseSchedule(DefaultSchedule, now)
	if err != nil || pattern != "0 0 3 1 * *" || !next.Equal(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)) {
		t.Errorf("default: %q next %s err %v", pattern, next, err)
	}
	if _, _, err := ParseSchedule("0 3 1", now); err == nil || !strings.HasPrefix(err.Error(), `--sla-schedule "0 3 1": 3 fields`) {
		t.Errorf("bad schedule: %v, want an error naming --sla-schedule", err)
	}
	if p, _, err := ParseSchedule("off", now); err != nil || p != ScheduleOff {
		t.Errorf("off: %q %v", p, err)
	}
}
