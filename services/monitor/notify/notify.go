// Package notify delivers alert notifications to receivers (Slack, e-mail,
// PagerDuty), one package per receiver behind the one-method Notifier, as
// Alertmanager's notify/ does. A Dispatcher queues each notification per
// receiver, durably, and retries a receiver's temporary failures with
// backoff, so a receiver that is down or slow delays neither the others
// nor the caller.
package notify

import (
	"context"
	"time"
)

// Kind is what a notification says about its alert group.
type Kind string

const (
	// Firing: the group started firing.
	Firing Kind = "firing"
	// Repeat: a CRITICAL group is still firing (sent every repeat interval).
	Repeat Kind = "repeat"
	// Resolved: every alert of the group stopped firing.
	Resolved Kind = "resolved"
	// Report: a periodic report (the monthly SLA audit), about no alert
	// group: Summary is its headline and Details its lines. Receivers
	// that page (PagerDuty) do not send it.
	Report Kind = "report"
)

// Notification is one message about one alert group: the alerts of one rule
// that fire together (e.g. every stale pair) are one group and one message.
type Notification struct {
	// ID is unique per message and stable across restarts
	// (<group>:<firing since unix ms>:<kind>[:<n>]); a receiver that
	// supports it uses it to deduplicate, and the Dispatcher never
	// delivers the same ID twice to a receiver.
	ID string `json:"id"`
	// GroupKey pairs a group's firing, repeats and resolved message (the
	// PagerDuty dedup key, the Slack message's pairing line).
	GroupKey string `json:"group_key"`
	Kind     Kind   `json:"kind"`
	Alert    string `json:"alert"`    // rule name, e.g. CandlekeepDataStale
	Severity string `json:"severity"` // critical, warning, info
	Summary  string `json:"summary"`  // one line: what is wrong
	// Value and Threshold are the measurement against its limit, as text.
	Value     string `json:"value"`
	Threshold string `json:"threshold"`
	// Members are the firing label sets ("BTCUSDT/4h"), empty for a rule
	// without labels.
	Members []string `json:"members,omitempty"`
	// Since is when the group started firing; ResolvedAt when it stopped.
	Since      time.Time `json:"since"`
	ResolvedAt time.Time `json:"resolved_at,omitzero"`
	// Runbook is the link to what the on-call does (docs/alerts.md#…).
	Runbook string `json:"runbook"`
	// Details are a Report's lines (one per figure), empty for alerts.
	Details []string `json:"details,omitempty"`
	// Source names the system that sends it (host, cluster), for a
	// receiver that serves several.
	Source string `json:"source,omitempty"`
}

// Notifier sends one notification to one receiver. retry reports whether a
// failure is temporary (a 429, a 5xx, a timeout): the Dispatcher then tries
// again after a backoff, or after RetryAfter(err) when the receiver said how
// long to wait. Errors name the receiver, never its secret (webhook URL,
// password, routing key).
type Notifier interface {
	Notify(ctx context.Context, n Notification) (retry bool, err error)
}

// RetryAfterError is returned by a Notifier whose receiver said how long to
// wait (HTTP Retry-After); the Dispatcher honours After.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }
