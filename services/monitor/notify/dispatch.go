package notify

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket of the notification queue: one key per
// notification and receiver until it is delivered or given up.
const Bucket = "candlekeep_notifications"

// DispatcherOptions configure a Dispatcher.
type DispatcherOptions struct {
	JS jetstream.JetStream
	// Receivers by name ("slack", "email", "pagerduty").
	Receivers map[string]Notifier
	Replicas  int
	Logger    *slog.Logger
	Now       func() time.Time
}

// Dispatcher delivers notifications to every receiver, each on its own
// queue. STUB: the notify work implements it.
type Dispatcher struct {
	o DispatcherOptions
}

// NewDispatcher opens (or creates) the queue bucket.
func NewDispatcher(ctx context.Context, o DispatcherOptions) (*Dispatcher, error) {
	return &Dispatcher{o: o}, nil
}

// Send queues n for every receiver durably and returns; it never waits for
// a receiver.
func (d *Dispatcher) Send(ctx context.Context, n Notification) error { return nil }

// Run delivers queued notifications until ctx ends, picking up what an
// earlier Dispatcher left undelivered.
func (d *Dispatcher) Run(ctx context.Context) error { <-ctx.Done(); return nil }
