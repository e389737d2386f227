// Package alerts turns the rule evaluator's active alerts into alert groups
// (one per rule: every stale pair is one CandlekeepDataStale group), keeps
// their state in the JetStream KV bucket candlekeep_alerts so a monitor
// restart neither re-sends nor forgets, publishes alert.firing and
// alert.resolved events and hands one notification per group firing,
// repeat (CRITICAL, every RepeatInterval) and resolution to a Sender.
// STUB: the alerting work implements it.
package alerts

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

// Bucket is the KV bucket holding the alert state.
const Bucket = "candlekeep_alerts"

// DefaultRepeatInterval is how often a still-firing CRITICAL group is sent again.
const DefaultRepeatInterval = 4 * time.Hour

// Sender takes a notification for delivery (notify.Dispatcher).
type Sender interface {
	Send(ctx context.Context, n notify.Notification) error
}

// Options configure an Alerter.
type Options struct {
	JS             jetstream.JetStream
	Rules          []rules.Rule
	Sender         Sender
	RepeatInterval time.Duration
	Replicas       int
	// Source names this system in notifications (host or cluster name).
	Source string
	Logger *slog.Logger
	Now    func() time.Time
}

// Alerter evaluates the rules and notifies.
type Alerter struct {
	o Options
}

// New opens (or creates) the alert state bucket and restores the state.
func New(ctx context.Context, o Options) (*Alerter, error) { return &Alerter{o: o}, nil }

// Evaluate evaluates the rules over q, updates the groups, persists them,
// publishes alert.firing / alert.resolved and sends the notifications due.
func (a *Alerter) Evaluate(ctx context.Context, q rules.Querier) error { return nil }

// Firing returns the groups firing now, as alert.firing events describe them.
func (a *Alerter) Firing() []candles.AlertEvent { return nil }
