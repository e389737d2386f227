package pagerduty_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/pagerduty"
)

const routingKey = "R0UTINGKEYsecret0000000000000000"

// eventsAPI is a loopback Events API v2 that keeps the bodies it got.
type eventsAPI struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
	paths  []string
}

func newEventsAPI(t *testing.T, status int, header map[string]string, body string) *eventsAPI {
	t.Helper()
	a := &eventsAPI{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.bodies = append(a.bodies, m)
		a.paths = append(a.paths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
		a.mu.Unlock()
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func notifier(t *testing.T, url string) *pagerduty.Notifier {
	t.Helper()
	n, err := pagerduty.New(pagerduty.Options{RoutingKey: routingKey, URL: url, Source: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var since = time.Date(2026, 12, 4, 12, 3, 0, 0, time.UTC)

func stale(kind notify.Kind) notify.Notification {
	return notify.Notification{
		ID: "CandlekeepDataStale:1764849780000:" + string(kind), GroupKey: "CandlekeepDataStale", Kind: kind,
		Alert: "CandlekeepDataStale", Severity: "warning", Summary: "2 pairs have no candle newer than 5m",
		Value: "17m", Threshold: "5m", Members: []string{"BTCUSDT/4h", "ETHUSDT/1h"}, Since: since,
		Runbook: "https://git.example.org/docs/alerts.md#candlekeepdatastale",
	}
}

func TestEventBodies(t *testing.T) {
	trigger := map[string]any{
		"routing_key":  routingKey,
		"event_action": "trigger",
		"dedup_key":    "CandlekeepDataStale",
		"client":       "candlekeep",
		"payload": map[string]any{
			"summary":   "CandlekeepDataStale: 2 pairs have no candle newer than 5m",
			"source":    "host-a",
			"severity":  "warning",
			"timestamp": "2026-12-04T12:03:00Z",
			"class":     "CandlekeepDataStale",
			"custom_details": map[string]any{
				"value": "17m", "threshold": "5m", "kind": "firing",
				"members":      []any{"BTCUSDT/4h", "ETHUSDT/1h"},
				"runbook":      "https://git.example.org/docs/alerts.md#candlekeepdatastale",
				"firing_since": "2026-12-04T12:03:00Z",
			},
		},
		"links": []any{map[string]any{"href": "https://git.example.org/docs/alerts.md#candlekeepdatastale", "text": "Runbook"}},
	}
	repeat := map[string]any{}
	for k, v := range trigger {
		repeat[k] = v
	}
	repeat["payload"] = map[string]any{
		"summary": "CandlekeepDataStale: 2 pairs have no candle newer than 5m", "source": "host-a",
		"severity": "warning", "timestamp": "2026-12-04T12:03:00Z", "class": "CandlekeepDataStale",
		"custom_details": map[string]any{
			"value": "17m", "threshold": "5m", "kind": "repeat",
			"members":      []any{"BTCUSDT/4h", "ETHUSDT/1h"},
			"runbook":      "https://git.example.org/docs/alerts.md#candlekeepdatastale",
			"firing_since": "2026-12-04T12:03:00Z",
		},
	}
	resolve := map[string]any{
		"routing_key": routingKey, "event_action": "resolve", "dedup_key": "CandlekeepDataStale", "client": "candlekeep",
	}
	a := newEventsAPI(t, http.StatusAccepted, nil, `{"status":"success","dedup_key":"CandlekeepDataStale"}`)
	n := notifier(t, a.srv.URL)
	for _, k := range []notify.Kind{notify.Firing, notify.Repeat, notify.Resolved} {
		if retry, err := n.Notify(context.Background(), stale(k)); err != nil || retry {
			t.Fatalf("Notify(%s) = %v, %v; want delivered", k, retry, err)
		}
	}
	if diff := cmp.Diff([]map[string]any{trigger, repeat, resolve}, a.bodies); diff != "" {
		t.Errorf("event bodies (-want +got):\n%s", diff)
	}
	for _, p := range a.paths {
		if p != "POST /v2/enqueue application/json" {
			t.Errorf("request %q, want POST /v2/enqueue application/json", p)
		}
	}
}

func TestSeverityMap(t *testing.T) {
	for in, want := range map[string]string{"critical": "critical", "warning": "warning", "info": "info", "": "error", "page": "error"} {
		n := stale(notify.Firing)
		n.Severity = in
		if got := pagerduty.NewEvent(routingKey, "x", n).Payload.Severity; got != want {
			t.Errorf("severity %q → %q, want %q", in, got, want)
		}
	}
}

func TestNotifyClassifiesFailures(t *testing.T) {
	refused := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "http://" + l.Addr().String()
	}()
	for _, tc := range []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		url        string
		retry      bool
		retryAfter time.Duration
		err        string
	}{
		{name: "429 with Retry-After", status: 429, header: map[string]string{"Retry-After": "3"},
			retry: true, retryAfter: 3 * time.Second, err: "pagerduty: rate limited (429 Too Many Requests)"},
		{name: "429 without", status: 429, retry: true, err: "pagerduty: rate limited (429 Too Many Requests)"},
		{name: "500", status: 500, retry: true, err: "pagerduty: events API answered 500 Internal Server Error"},
		{name: "400 echoing the key", status: 400,
			body:  `{"status":"invalid event","message":"Event object is invalid","errors":["bad routing_key ` + routingKey + `"]}`,
			retry: false,
			err: `pagerduty: events API rejected the event: 400 Bad Request: {"status":"invalid event","message":"Event object is invalid",` +
				`"errors":["bad routing_key (routing key redacted)"]}`},
		{name: "connection refused", url: refused, retry: true, err: "pagerduty: send event: dial tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url
			if url == "" {
				url = newEventsAPI(t, tc.status, tc.header, tc.body).srv.URL
			}
			retry, err := notifier(t, url).Notify(context.Background(), stale(notify.Firing))
			if err == nil {
				t.Fatal("Notify succeeded, want an error")
			}
			if retry != tc.retry {
				t.Errorf("retry = %v, want %v", retry, tc.retry)
			}
			if !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("err = %q, want it to start with %q", err, tc.err)
			}
			if strings.Contains(err.Error(), routingKey) {
				t.Errorf("err %q shows the routing key", err)
			}
			var ra *notify.RetryAfterError
			if got := errors.As(err, &ra); got != (tc.retryAfter > 0) || (got && ra.After != tc.retryAfter) {
				t.Errorf("RetryAfterError = %v %+v, want After %v", got, ra, tc.retryAfter)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o    pagerduty.Options
		want string
	}{
		{pagerduty.Options{}, "pagerduty: no routing key"},
		{pagerduty.Options{RoutingKey: routingKey, URL: "events.pagerduty.com"}, "pagerduty: URL is not an http(s) URL"},
	} {
		_, err := pagerduty.New(tc.o)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), routingKey) {
			t.Errorf("New(%+v) = %v, want %q without the key", tc.o.URL, err, tc.want)
		}
	}
	if _, err := pagerduty.New(pagerduty.Options{RoutingKey: routingKey}); err != nil {
		t.Errorf("New with the default URL: %v", err)
	}
}

// A report (the monthly SLA audit) is read, not paged: nothing is sent
// and the Dispatcher counts it delivered.
func TestReportIsNotPaged(t *testing.T) {
	api := newEventsAPI(t, http.StatusAccepted, nil, `{"status":"success"}`)
	n := notify.Notification{ID: "sla.report:1", GroupKey: "sla.report", Kind: notify.Report, Alert: "SLA audit", Summary: "3 missed"}
	retry, err := notifier(t, api.srv.URL).Notify(context.Background(), n)
	if retry || err != nil {
		t.Fatalf("Notify = %v, %v; want false, nil", retry, err)
	}
	// The trigger that follows is the first body the API got: the report
	// sent nothing before it.
	if _, err := notifier(t, api.srv.URL).Notify(context.Background(), stale(notify.Firing)); err != nil {
		t.Fatal(err)
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.bodies) != 1 || api.bodies[0]["event_action"] != "trigger" {
		t.Fatalf("the API got %v, want only the alert's trigger", api.bodies)
	}
}
