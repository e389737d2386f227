package slack_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/slack"
)

// The parts of a Block Kit message the tests read.
type block struct {
	Type string `json:"type"`
	Text *struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"text"`
	Fields []struct {
		Text string `json:"text"`
	} `json:"fields"`
	Elements []struct {
		Type string `json:"type"`
		Text any    `json:"text"`
		URL  string `json:"url"`
	} `json:"elements"`
}

type message struct {
	Text   string  `json:"text"`
	Blocks []block `json:"blocks"`
}

// webhook is a loopback Slack webhook that keeps the messages it got.
type webhook struct {
	srv  *httptest.Server
	mu   sync.Mutex
	msgs []message
	raw  []string
}

func newWebhook(t *testing.T, status int, header map[string]string) *webhook {
	t.Helper()
	w := &webhook{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(rw, "want a JSON POST", http.StatusMethodNotAllowed)
			return
		}
		var m message
		var raw json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.raw = append(w.raw, string(raw))
		w.mu.Unlock()
		for k, v := range header {
			rw.Header().Set(k, v)
		}
		rw.WriteHeader(status)
		_, _ = rw.Write([]byte("ok"))
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhook) url() string { return w.srv.URL + "/services/T0/B0/XXsecretXX" }

func (w *webhook) only(t *testing.T) message {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.msgs) != 1 {
		t.Fatalf("webhook got %d messages, want 1", len(w.msgs))
	}
	return w.msgs[0]
}

var (
	since    = time.Date(2026, 12, 4, 12, 3, 0, 0, time.UTC)
	resolved = since.Add(3*time.Hour + 12*time.Minute)
)

func stale(kind notify.Kind) notify.Notification {
	members := make([]string, 12)
	for i := range members {
		members[i] = fmt.Sprintf("PAIR%02dUSDT/4h", i)
	}
	n := notify.Notification{
		ID: "CandlekeepDataStale:1764849780000:" + string(kind), GroupKey: "CandlekeepDataStale", Kind: kind,
		Alert: "CandlekeepDataStale", Severity: "critical", Summary: "12 pairs have no candle newer than 5m",
		Value: "17m", Threshold: "5m", Members: members, Since: since,
		Runbook: "https://git.example.org/candlekeep/docs/alerts.md#candlekeepdatastale", Source: "host-a",
	}
	if kind == notify.Resolved {
		n.ResolvedAt = resolved
	}
	return n
}

func notifier(t *testing.T, url string, now time.Time) *slack.Notifier {
	t.Helper()
	n, err := slack.New(slack.Options{WebhookURL: url, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func blockText(b block) string {
	if b.Text == nil {
		return ""
	}
	return b.Text.Text
}

func TestMessagePayload(t *testing.T) {
	for _, tc := range []struct {
		kind    notify.Kind
		header  string
		since   string
		pairing string
	}{
		{notify.Firing, "🔴 CandlekeepDataStale FIRING", "*Since*\n2026-12-04 12:03 UTC",
			"Fired at 12:03 UTC, group `CandlekeepDataStale` · host-a"},
		{notify.Repeat, "🔴 CandlekeepDataStale STILL FIRING", "*Since*\n2026-12-04 12:03 UTC (for 3h12m)",
			"Still firing since 12:03 UTC, group `CandlekeepDataStale` · host-a"},
		{notify.Resolved, "✅ CandlekeepDataStale RESOLVED", "*Since*\n2026-12-04 12:03 UTC (for 3h12m)",
			"Resolves the alert fired at 12:03 UTC, group `CandlekeepDataStale` · host-a"},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			w := newWebhook(t, http.StatusOK, nil)
			retry, err := notifier(t, w.url(), resolved).Notify(context.Background(), stale(tc.kind))
			if err != nil || retry {
				t.Fatalf("Notify = %v, %v; want delivered", retry, err)
			}
			m := w.only(t)
			wantText := "[" + tc.kind.Title() + "] critical CandlekeepDataStale: 12 pairs have no candle newer than 5m"
			if m.Text != wantText {
				t.Errorf("fallback text = %q, want %q", m.Text, wantText)
			}
			if len(m.Blocks) != 5 {
				t.Fatalf("got %d blocks, want header, summary, fields, runbook, pairing:\n%s", len(m.Blocks), w.raw[0])
			}
			if b := m.Blocks[0]; b.Type != "header" || blockText(b) != tc.header {
				t.Errorf("header = %s %q, want header %q", b.Type, blockText(b), tc.header)
			}
			if got := blockText(m.Blocks[1]); got != "12 pairs have no candle newer than 5m" {
				t.Errorf("summary section = %q", got)
			}
			var fields []string
			for _, f := range m.Blocks[2].Fields {
				fields = append(fields, f.Text)
			}
			want := []string{
				"*Severity*\ncritical",
				tc.since,
				"*Value*\n`17m` (threshold `5m`)",
				"*Members (12)*\nPAIR00USDT/4h, PAIR01USDT/4h, PAIR02USDT/4h, PAIR03USDT/4h, PAIR04USDT/4h, " +
					"PAIR05USDT/4h, PAIR06USDT/4h, PAIR07USDT/4h, PAIR08USDT/4h, PAIR09USDT/4h and 2 more",
			}
			if tc.kind == notify.Resolved {
				want = append(want, "*Resolved*\n2026-12-04 15:15 UTC")
			}
			if strings.Join(fields, "|") != strings.Join(want, "|") {
				t.Errorf("fields =\n%q\nwant\n%q", fields, want)
			}
			rb := m.Blocks[3]
			if rb.Type != "actions" || len(rb.Elements) != 1 || rb.Elements[0].Type != "button" ||
				rb.Elements[0].URL != "https://git.example.org/candlekeep/docs/alerts.md#candlekeepdatastale" {
				t.Errorf("runbook block = %+v, want a button to the runbook", rb)
			}
			pb := m.Blocks[4]
			if pb.Type != "context" || len(pb.Elements) != 1 || pb.Elements[0].Text != tc.pairing {
				t.Errorf("pairing block = %+v, want context %q", pb, tc.pairing)
			}
		})
	}
}

func TestMessageRelativeRunbookIsText(t *testing.T) {
	w := newWebhook(t, http.StatusOK, nil)
	n := stale(notify.Firing)
	n.Runbook = "docs/alerts.md#candlekeepdatastale"
	n.Members = nil
	if _, err := notifier(t, w.url(), since).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	m := w.only(t)
	rb := m.Blocks[3]
	if rb.Type != "context" || len(rb.Elements) != 1 || rb.Elements[0].Text != "Runbook: docs/alerts.md#candlekeepdatastale" {
		t.Errorf("runbook block = %+v, want a context line (a button needs an absolute URL)", rb)
	}
	for _, f := range m.Blocks[2].Fields {
		if strings.Contains(f.Text, "Members") {
			t.Errorf("a group without members shows %q", f.Text)
		}
	}
}

func TestNotifyClassifiesFailures(t *testing.T) {
	refused := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr + "/services/T0/B0/XXsecretXX"
	}()
	for _, tc := range []struct {
		name       string
		status     int
		header     map[string]string
		url        string
		retry      bool
		retryAfter time.Duration
		err        string
	}{
		{name: "429 with Retry-After", status: 429, header: map[string]string{"Retry-After": "7"},
			retry: true, retryAfter: 7 * time.Second, err: "slack: rate limited (429), retry after 7s"},
		{name: "429 without Retry-After", status: 429, retry: true, err: "slack: webhook answered 429 Too Many Requests"},
		{name: "500", status: 500, retry: true, err: "slack: webhook answered 500 Internal Server Error"},
		{name: "503", status: 503, retry: true, err: "slack: webhook answered 503 Service Unavailable"},
		{name: "400", status: 400, retry: false, err: "slack: webhook answered 400 Bad Request"},
		{name: "404", status: 404, retry: false, err: "slack: webhook answered 404 Not Found"},
		{name: "connection refused", url: refused, retry: true, err: "slack: post webhook: dial tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url
			if url == "" {
				url = newWebhook(t, tc.status, tc.header).url()
			}
			retry, err := notifier(t, url, since).Notify(context.Background(), stale(notify.Firing))
			if err == nil {
				t.Fatal("Notify succeeded, want an error")
			}
			if retry != tc.retry {
				t.Errorf("retry = %v, want %v (err %v)", retry, tc.retry, err)
			}
			if !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("err = %q, want it to start with %q", err, tc.err)
			}
			if strings.Contains(err.Error(), "XXsecretXX") || strings.Contains(err.Error(), "/services/") {
				t.Errorf("err %q shows the webhook URL", err)
			}
			var ra *notify.RetryAfterError
			if got := errors.As(err, &ra); got != (tc.retryAfter > 0) || (got && ra.After != tc.retryAfter) {
				t.Errorf("RetryAfterError = %v %+v, want After %v", got, ra, tc.retryAfter)
			}
		})
	}
}

func TestNotifyTimeoutHidesURL(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hang) })
	n := notifier(t, srv.URL+"/services/T0/B0/XXsecretXX", since)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	retry, err := n.Notify(ctx, stale(notify.Firing))
	if err == nil || !retry {
		t.Fatalf("Notify = %v, %v; want a retryable error", retry, err)
	}
	if !strings.HasPrefix(err.Error(), "slack: post webhook: ") || strings.Contains(err.Error(), "XXsecretXX") {
		t.Errorf("err = %q, want a slack error without the URL", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		url, want string
	}{
		{"", "slack: no webhook URL"},
		{"hooks.slack.com/services/XXsecretXX", "slack: webhook URL is not an http(s) URL"},
		{"ftp://hooks.slack.com/services/XXsecretXX", "slack: webhook URL is not an http(s) URL"},
	} {
		_, err := slack.New(slack.Options{WebhookURL: tc.url})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "XXsecretXX") {
			t.Errorf("New(%q) = %v, want %q without the URL", tc.url, err, tc.want)
		}
	}
}
