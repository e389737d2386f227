// Package pagerduty sends candlekeep notifications to PagerDuty's Events
// API v2: a firing (or repeat) group triggers an incident, its resolved
// message resolves it, both under dedup_key = the group key, so PagerDuty
// folds repeats into the open incident.
//
// It is a small net/http client rather than github.com/PagerDuty/go-pagerduty,
// which the module list available to this project does not carry; one POST
// of one JSON body does not need more.
package pagerduty

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// DefaultURL is PagerDuty's Events API host.
const DefaultURL = "https://events.pagerduty.com"

// maxSummary is the Events API's limit on payload.summary.
const maxSummary = 1024

// Options configure a Notifier.
type Options struct {
	// RoutingKey is the integration key of the service; it is a secret.
	RoutingKey string
	// URL is the Events API base; events go to URL + "/v2/enqueue".
	// Empty is DefaultURL.
	URL string
	// Source names the system in the incident when a notification has none;
	// empty is "candlekeep".
	Source string
	// HTTPClient sends the events; nil uses a client with a 10 s timeout.
	HTTPClient *http.Client
}

// Validate checks the options without echoing the routing key.
func (o Options) Validate() error {
	if o.RoutingKey == "" {
		return errors.New("pagerduty: no routing key (set the PagerDuty integration key to enable PagerDuty)")
	}
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("pagerduty: URL is not an http(s) URL")
		}
	}
	return nil
}

// Notifier sends events to one PagerDuty service.
type Notifier struct {
	o        Options
	endpoint string
}

var _ notify.Notifier = (*Notifier)(nil)

// New returns a Notifier for o.
func New(o Options) (*Notifier, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.Source == "" {
		o.Source = "candlekeep"
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	return &Notifier{o: o, endpoint: strings.TrimSuffix(o.URL, "/") + "/v2/enqueue"}, nil
}

// Event is the Events API v2 request body.
type Event struct {
	RoutingKey  string   `json:"routing_key"`
	EventAction string   `json:"event_action"` // trigger, resolve
	DedupKey    string   `json:"dedup_key"`
	Client      string   `json:"client,omitempty"`
	Payload     *Payload `json:"payload,omitempty"`
	Links       []Link   `json:"links,omitempty"`
}

// Payload describes the incident of a trigger.
type Payload struct {
	Summary       string         `json:"summary"`
	Source        string         `json:"source"`
	Severity      string         `json:"severity"` // critical, error, warning, info
	Timestamp     string         `json:"timestamp,omitempty"`
	Component     string         `json:"component,omitempty"`
	Class         string         `json:"class,omitempty"`
	CustomDetails map[string]any `json:"custom_details,omitempty"`
}

// Link is a link shown on the incident.
type Link struct {
	Href string `json:"href"`
	Text string `json:"text,omitempty"`
}

// NewEvent builds the event for n: a trigger for a firing or repeat (PD
// dedups the repeat into the open incident), a resolve for a resolved one.
func NewEvent(routingKey, source string, n notify.Notification) Event {
	ev := Event{RoutingKey: routingKey, DedupKey: n.GroupKey, Client: "candlekeep"}
	if n.Kind == notify.Resolved {
		ev.EventAction = "resolve"
		return ev
	}
	ev.EventAction = "trigger"
	if n.Source != "" {
		source = n.Source
	}
	details := map[string]any{
		"value":     n.Value,
		"threshold": n.Threshold,
		"kind":      string(n.Kind),
	}
	if len(n.Members) > 0 {
		details["members"] = n.Members
	}
	if n.Runbook != "" {
		details["runbook"] = n.Runbook
	}
	if !n.Since.IsZero() {
		details["firing_since"] = n.Since.UTC().Format(time.RFC3339)
	}
	ev.Payload = &Payload{
		Summary:       clip(n.Alert+": "+n.Summary, maxSummary),
		Source:        source,
		Severity:      severity(n.Severity),
		Class:         n.Alert,
		CustomDetails: details,
	}
	if !n.Since.IsZero() {
		ev.Payload.Timestamp = n.Since.UTC().Format(time.RFC3339)
	}
	if strings.HasPrefix(n.Runbook, "https://") || strings.HasPrefix(n.Runbook, "http://") {
		ev.Links = []Link{{Href: n.Runbook, Text: "Runbook"}}
	}
	return ev
}

// severity maps candlekeep's severities onto PagerDuty's; anything unknown
// pages as an error rather than being rejected.
func severity(s string) string {
	switch s {
	case "critical", "warning", "info", "error":
		return s
	}
	return "error"
}

// Notify sends n's event.
func (p *Notifier) Notify(ctx context.Context, n notify.Notification) (bool, error) {
	if n.Kind == notify.Report {
		return false, nil // a report is read, not paged
	}
	if n.GroupKey == "" {
		return false, fmt.Errorf("pagerduty: %s has no group key to dedup on", n.ID)
	}
	body, err := json.Marshal(NewEvent(p.o.RoutingKey, p.o.Source, n))
	if err != nil {
		return false, fmt.Errorf("pagerduty: encode event: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("pagerduty: cannot build the request (check the URL)")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.o.HTTPClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// url.Error quotes the URL, which may carry credentials.
			err = ue.Err
		}
		return true, fmt.Errorf("pagerduty: send event: %v", err)
	}
	defer resp.Body.Close()
	// PagerDuty explains a 400 in the body ("Event object is invalid").
	detail, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		e := fmt.Errorf("pagerduty: rate limited (%s)", resp.Status)
		if after, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return true, &notify.RetryAfterError{After: after, Err: e}
		}
		return true, e
	case resp.StatusCode >= 500:
		return true, fmt.Errorf("pagerduty: events API answered %s", resp.Status)
	}
	return false, fmt.Errorf("pagerduty: events API rejected the event: %s: %s", resp.Status,
		strings.ReplaceAll(strings.TrimSpace(string(detail)), p.o.RoutingKey, "(routing key redacted)"))
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h string) (time.Duration, bool) {
	if h == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(0, time.Until(t)), true
	}
	return 0, false
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
