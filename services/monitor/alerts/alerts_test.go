package alerts

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

const day = 24 * time.Hour

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// staleNotification is the DataStale message for a firing since t0+since.
func staleNotification(kind notify.Kind, since time.Duration, summary, value string, members ...string) notify.Notification {
	return notify.Notification{
		ID:        "CandlekeepDataStale:" + itoa(ms(since)) + ":" + string(kind),
		GroupKey:  "CandlekeepDataStale:" + itoa(ms(since)),
		Kind:      kind,
		Alert:     "CandlekeepDataStale",
		Severity:  "critical",
		Summary:   summary,
		Value:     value,
		Threshold: "26h0m0s",
		Members:   members,
		Since:     t0.Add(since),
		Runbook:   runbookBase + "candlekeepdatastale",
		Source:    "test-host",
	}
}

func staleEvent(kind string, at, active, since time.Duration, summary, value string, members ...string) candles.AlertEvent {
	ev := candles.AlertEvent{
		EventHeader: candles.NewHeader(kind, ""),
		Alert:       "CandlekeepDataStale",
		Severity:    "critical",
		Summary:     summary,
		Value:       value,
		Threshold:   "26h0m0s",
		Runbook:     runbookBase + "candlekeepdatastale",
		Members:     members,
		ActiveSince: t0.Add(active),
		FiringSince: t0.Add(since),
	}
	ev.V, ev.Time = candles.Version, t0.Add(at)
	if kind == candles.KindAlertResolved {
		ev.ResolvedAt = t0.Add(at)
	}
	return ev
}

func TestGroupFiresOnceAfterForMembersJoinAndResolvesOnce(t *testing.T) {
	for _, ev := range evaluators(t) {
		t.Run(ev.name, func(t *testing.T) {
			h := newHarness(t, ev, staleRule())
			reg := prometheus.NewRegistry()
			a := h.alerter(func(o *Options) { o.Registerer = reg })
			limit := 26 * 3600.0
			h.series.set("candlekeep_pair_staleness_limit_seconds", pair("BTCUSDT", "4h", limit), pair("ETHUSDT", "4h", limit))
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 27*3600), pair("ETHUSDT", "4h", 3600))
			gauge := func(v string) string {
				return "# HELP candlekeep_alerts_firing 1 while the rule's alert group fires (in-process evaluation), 0 otherwise.\n" +
					"# TYPE candlekeep_alerts_firing gauge\n" +
					`candlekeep_alerts_firing{alertname="CandlekeepDataStale",severity="critical"} ` + v + "\n"
			}

			// Pending for the rule's 5m: no message, nothing firing.
			h.at(a, 0)
			h.at(a, 4*time.Minute+59*time.Second)
			if got := h.sender.ids(); len(got) != 0 {
				t.Fatalf("sent before the rule's for passed: %v", got)
			}
			if got := a.Firing(); len(got) != 0 {
				t.Fatalf("firing before the rule's for passed: %+v", got)
			}
			if err := testutil.GatherAndCompare(reg, strings.NewReader(gauge("0")), "candlekeep_alerts_firing"); err != nil {
				t.Fatal(err)
			}

			h.at(a, 5*time.Minute)
			firing := staleNotification(notify.Firing, 5*time.Minute, "BTCUSDT/4h has no new candle for 1d 3h 0m 0s", "27h0m0s since the last candle", "BTCUSDT/4h")
			equalJSON(t, "after 5m", h.sender.all(), []notify.Notification{firing})
			if err := testutil.GatherAndCompare(reg, strings.NewReader(gauge("1")), "candlekeep_alerts_firing"); err != nil {
				t.Fatal(err)
			}

			// ETHUSDT goes stale, is pending, fires: the group gets a
			// member, no message.
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 27*3600), pair("ETHUSDT", "4h", 27*3600+100))
			h.at(a, 6*time.Minute)
			h.at(a, 11*time.Minute)
			equalJSON(t, "after ETHUSDT fired", h.sender.all(), []notify.Notification{firing})
			now := staleEvent(candles.KindAlertFiring, 5*time.Minute, 0, 5*time.Minute,
				"BTCUSDT/4h has no new candle for 1d 3h 0m 0s (and 1 more)", "27h0m0s since the last candle", "BTCUSDT/4h", "ETHUSDT/4h")
			equalJSON(t, "Firing() with two members", a.Firing(), []candles.AlertEvent{now})

			// BTCUSDT recovers first, ETHUSDT later: one resolution,
			// naming both.
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 3600), pair("ETHUSDT", "4h", 27*3600+100))
			h.at(a, 12*time.Minute)
			equalJSON(t, "after BTCUSDT recovered", h.sender.all(), []notify.Notification{firing})
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 3600), pair("ETHUSDT", "4h", 3600))
			h.at(a, 20*time.Minute)
			h.at(a, 21*time.Minute)
			resolved := staleNotification(notify.Resolved, 5*time.Minute, "ETHUSDT/4h has no new candle for 1d 3h 1m 40s", "27h1m40s since the last candle", "BTCUSDT/4h", "ETHUSDT/4h")
			resolved.ResolvedAt = t0.Add(20 * time.Minute)
			equalJSON(t, "after all recovered", h.sender.all(), []notify.Notification{firing, resolved})
			if got := a.Firing(); len(got) != 0 {
				t.Fatalf("still firing after the resolution: %+v", got)
			}
			if err := testutil.GatherAndCompare(reg, strings.NewReader(gauge("0")), "candlekeep_alerts_firing"); err != nil {
				t.Fatal(err)
			}

			equalJSON(t, "events", h.events(), []candles.AlertEvent{
				staleEvent(candles.KindAlertFiring, 5*time.Minute, 0, 5*time.Minute, "BTCUSDT/4h has no new candle for 1d 3h 0m 0s", "27h0m0s since the last candle", "BTCUSDT/4h"),
				staleEvent(candles.KindAlertResolved, 20*time.Minute, 0, 5*time.Minute, "ETHUSDT/4h has no new candle for 1d 3h 1m 40s", "27h1m40s since the last candle", "BTCUSDT/4h", "ETHUSDT/4h"),
			})

			// A new firing is a new group instance, with new ids.
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 27*3600), pair("ETHUSDT", "4h", 3600))
			h.at(a, 30*time.Minute)
			h.at(a, 35*time.Minute)
			again := staleNotification(notify.Firing, 35*time.Minute, "BTCUSDT/4h has no new candle for 1d 3h 0m 0s", "27h0m0s since the last candle", "BTCUSDT/4h")
			equalJSON(t, "second firing", h.sender.all(), []notify.Notification{firing, resolved, again})
		})
	}
}

func TestCriticalRepeatsEveryRepeatIntervalWarningDoesNot(t *testing.T) {
	for _, ev := range evaluators(t) {
		t.Run(ev.name, func(t *testing.T) {
			h := newHarness(t, ev, serviceDownRule(), backupStaleRule())
			a := h.alerter(func(o *Options) { o.RepeatInterval = time.Hour })
			h.series.set("candlekeep_service_up", rules.Sample{Labels: rules.Labels{"service": "writer"}, Value: 0})
			h.series.set("candlekeep_backup_last_success_timestamp_seconds", rules.Sample{Labels: rules.Labels{}, Value: float64(t0.Add(-2 * day).Unix())})
			for d := time.Duration(0); d <= 150*time.Minute; d += 5 * time.Minute {
				h.at(a, d)
			}
			want := []string{
				"CandlekeepServiceDown:" + itoa(ms(5*time.Minute)) + ":firing", // first evaluation after its 2m
				"CandlekeepBackupStale:" + itoa(ms(10*time.Minute)) + ":firing",
				"CandlekeepServiceDown:" + itoa(ms(5*time.Minute)) + ":repeat:1", // 1h after the firing
				"CandlekeepServiceDown:" + itoa(ms(5*time.Minute)) + ":repeat:2",
			}
			equalJSON(t, "sent", h.sender.ids(), want)
			repeat := h.sender.all()[3]
			equalJSON(t, "second repeat", repeat, notify.Notification{
				ID: want[3], GroupKey: "CandlekeepServiceDown:" + itoa(ms(5*time.Minute)), Kind: notify.Repeat,
				Alert: "CandlekeepServiceDown", Severity: "critical",
				Summary: "the candlekeep writer service does not answer", Value: "not answering", Threshold: "answering",
				Members: []string{"service=writer"}, Since: t0.Add(5 * time.Minute),
				Runbook: runbookBase + "candlekeepservicedown", Source: "test-host",
			})
			// Repeats are messages, not events.
			var kinds []string
			for _, e := range h.events() {
				kinds = append(kinds, e.Kind+" "+e.Alert)
			}
			equalJSON(t, "events", kinds, []string{"alert.firing CandlekeepServiceDown", "alert.firing CandlekeepBackupStale"})
		})
	}
}

func TestRestartNeitherResendsNorForgets(t *testing.T) {
	for _, ev := range evaluators(t) {
		t.Run(ev.name, func(t *testing.T) {
			h := newHarness(t, ev, staleRule(), serviceDownRule())
			a := h.alerter(nil)
			limit := 26 * 3600.0
			h.series.set("candlekeep_pair_staleness_limit_seconds", pair("BTCUSDT", "4h", limit))
			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 27*3600))
			h.at(a, 0)
			h.at(a, 5*time.Minute) // DataStale fires
			// The writer stops answering at 6m: ServiceDown is pending
			// when the monitor restarts, 1m into its 2m.
			h.series.set("candlekeep_service_up", rules.Sample{Labels: rules.Labels{"service": "writer"}, Value: 0})
			h.at(a, 6*time.Minute)
			staleFiring := "CandlekeepDataStale:" + itoa(ms(5*time.Minute)) + ":firing"
			equalJSON(t, "before the restart", h.sender.ids(), []string{staleFiring})

			h.clock.Set(t0.Add(7 * time.Minute))
			b := h.alerter(nil)
			equalJSON(t, "Firing() right after the restart", memberLists(b.Firing()), []string{"CandlekeepDataStale: BTCUSDT/4h"})
			h.at(b, 7*time.Minute+59*time.Second)
			equalJSON(t, "after the restart, before ServiceDown's 2m", h.sender.ids(), []string{staleFiring})
			h.at(b, 8*time.Minute) // 2m after it first held, before the restart
			downFiring := "CandlekeepServiceDown:" + itoa(ms(8*time.Minute)) + ":firing"
			equalJSON(t, "ServiceDown fired on its original timer", h.sender.ids(), []string{staleFiring, downFiring})

			h.series.set("candlekeep_pair_staleness_seconds", pair("BTCUSDT", "4h", 600))
			h.at(b, 9*time.Minute)
			h.at(b, 10*time.Minute)
			staleResolved := "CandlekeepDataStale:" + itoa(ms(5*time.Minute)) + ":resolved"
			equalJSON(t, "after the resolution", h.sender.ids(), []string{staleFiring, downFiring, staleResolved})

			var got []string
			for _, e := range h.events() {
				got = append(got, e.Kind+" "+e.Alert+" active "+e.ActiveSince.Format(time.TimeOnly)+" firing "+e.FiringSince.Format(time.TimeOnly))
			}
			equalJSON(t, "events", got, []string{
				"alert.firing CandlekeepDataStale active 10:00:00 firing 10:05:00",
				"alert.firing CandlekeepServiceDown active 10:06:00 firing 10:08:00",
				"alert.resolved CandlekeepDataStale active 10:00:00 firing 10:05:00",
			})
		})
	}
}

func memberLists(evs []candles.AlertEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Alert+": "+strings.Join(e.Members, ","))
	}
	return out
}

// flakyJS is the real JetStream whose alert bucket's Put fails while
// failPut is set: a KV outage at the worst moment.
type flakyJS struct {
	jetstream.JetStream
	failPut *atomic.Bool
}

func (j flakyJS) CreateOrUpdateKeyValue(ctx context.Context, c jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := j.JetStream.CreateOrUpdateKeyValue(ctx, c)
	return flakyKV{kv, j.failPut}, err
}

type flakyKV struct {
	jetstream.KeyValue
	failPut *atomic.Bool
}

func (kv flakyKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if kv.failPut.Load() {
		return 0, errors.New("kv unavailable")
	}
	return kv.KeyValue.Put(ctx, key, value)
}

// A transition is delivered exactly once per id whatever fails on the way:
// the send, the event's publication, the write of the state, or the
// process between the write and the send.
func TestTransitionSurvivesFailures(t *testing.T) {
	firingID := "CandlekeepServiceDown:" + itoa(ms(2*time.Minute)) + ":firing"
	cases := []struct {
		name string
		// fail arranges a failure at the evaluation that fires (t0+2m);
		// recover undoes it and returns the Alerter to go on with.
		fail    func(h *harness, a *Alerter, failPut *atomic.Bool)
		recover func(h *harness, a *Alerter, failPut *atomic.Bool) *Alerter
	}{{
		name: "send fails, the next Evaluate sends",
		fail: func(h *harness, _ *Alerter, _ *atomic.Bool) { h.sender.fail = failOnce(firingID) },
		recover: func(h *harness, a *Alerter, _ *atomic.Bool) *Alerter {
			h.at(a, 3*time.Minute)
			return a
		},
	}, {
		name: "send fails, then a crash: the new Alerter sends",
		fail: func(h *harness, _ *Alerter, _ *atomic.Bool) { h.sender.fail = failOnce(firingID) },
		recover: func(h *harness, _ *Alerter, _ *atomic.Bool) *Alerter {
			h.clock.Set(t0.Add(3 * time.Minute))
			return h.alerter(nil)
		},
	}, {
		name: "event publication fails (no EVENTS stream), the next Evaluate publishes and sends",
		fail: func(h *harness, _ *Alerter, _ *atomic.Bool) {
			if err := h.js.DeleteStream(h.t.Context(), candles.StreamEvents); err != nil {
				h.t.Fatal(err)
			}
		},
		recover: func(h *harness, a *Alerter, _ *atomic.Bool) *Alerter {
			if len(h.sender.ids()) != 0 {
				h.t.Fatalf("sent before its event was published: %v", h.sender.ids())
			}
			for _, sc := range candles.StreamConfigs(candles.StreamOptions{}) {
				if sc.Name == candles.StreamEvents {
					if _, err := h.js.CreateOrUpdateStream(h.t.Context(), sc); err != nil {
						h.t.Fatal(err)
					}
				}
			}
			h.at(a, 3*time.Minute)
			return a
		},
	}, {
		name: "state write fails, the next Evaluate derives the same firing",
		fail: func(_ *harness, _ *Alerter, failPut *atomic.Bool) { failPut.Store(true) },
		recover: func(h *harness, a *Alerter, failPut *atomic.Bool) *Alerter {
			if len(h.sender.ids()) != 0 || len(h.events()) != 0 {
				h.t.Fatalf("delivered before the state was written: %v, %v", h.sender.ids(), h.events())
			}
			failPut.Store(false)
			h.at(a, 3*time.Minute)
			return a
		},
	}}
	for _, ev := range evaluators(t) {
		for _, tc := range cases {
			t.Run(ev.name+"/"+tc.name, func(t *testing.T) {
				h := newHarness(t, ev, serviceDownRule())
				var failPut atomic.Bool
				real := h.js
				h.js = flakyJS{real, &failPut}
				a := h.alerter(nil)
				h.js = real
				h.series.set("candlekeep_service_up", rules.Sample{Labels: rules.Labels{"service": "writer"}, Value: 0})
				h.at(a, 0)
				tc.fail(h, a, &failPut)
				h.clock.Set(t0.Add(2 * time.Minute))
				if err := a.Evaluate(t.Context(), h.q); err == nil {
					t.Fatal("Evaluate at the failure returned no error")
				}
				a = tc.recover(h, a, &failPut)
				h.at(a, 4*time.Minute)
				h.at(a, 5*time.Minute)
				equalJSON(t, "sent", h.sender.ids(), []string{firingID})
				var got []string
				for _, e := range h.events() {
					got = append(got, e.Kind+" "+e.Alert+" "+e.FiringSince.Format(time.TimeOnly))
				}
				equalJSON(t, "events", got, []string{"alert.firing CandlekeepServiceDown 10:02:00"})
				equalJSON(t, "Firing()", memberLists(a.Firing()), []string{"CandlekeepServiceDown: service=writer"})
			})
		}
	}
}

// The one window the Alerter cannot close by itself: the Sender took the
// notification but the write that strikes it from the outbox failed, and
// the process ended. The next Alerter hands it over again, identical and
// under the same id, for the Dispatcher to drop.
func TestAcceptedButNotStruckIsSentAgainUnderTheSameID(t *testing.T) {
	for _, ev := range evaluators(t) {
		t.Run(ev.name, func(t *testing.T) {
			h := newHarness(t, ev, serviceDownRule())
			var failPut atomic.Bool
			real := h.js
			h.js = flakyJS{real, &failPut}
			a := h.alerter(nil)
			h.js = real
			h.sender.fail = func(notify.Notification) error { failPut.Store(true); return nil }
			h.series.set("candlekeep_service_up", rules.Sample{Labels: rules.Labels{"service": "writer"}, Value: 0})
			h.at(a, 0)
			h.clock.Set(t0.Add(2 * time.Minute))
			if err := a.Evaluate(t.Context(), h.q); err == nil {
				t.Fatal("Evaluate with the outbox write failing returned no error")
			}
			h.sender.fail = nil
			b := h.alerter(nil)
			h.at(b, 3*time.Minute)
			sent := h.sender.all()
			firingID := "CandlekeepServiceDown:" + itoa(ms(2*time.Minute)) + ":firing"
			equalJSON(t, "sent", h.sender.ids(), []string{firingID, firingID})
			equalJSON(t, "the second copy", sent[1], sent[0])
			if n := len(h.events()); n != 1 {
				t.Fatalf("%d events, want the one alert.firing (a re-publish is a duplicate)", n)
			}
		})
	}
}
