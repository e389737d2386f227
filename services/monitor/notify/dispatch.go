package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Bucket is the KV bucket of the notification queue: one key per
// notification and receiver until it is delivered or given up.
const Bucket = "candlekeep_notifications"

// Defaults of DispatcherOptions; a zero field takes its default.
const (
	DefaultBackoffInitial = time.Second
	DefaultBackoffMax     = 5 * time.Minute
	DefaultMaxAge         = 24 * time.Hour
	DefaultAttemptTimeout = 10 * time.Second
	// DefaultSentRetention is how long a delivered notification's marker
	// stays in the bucket, so that the same ID sent again (a monitor that
	// restarted and re-evaluated) is recognised and not delivered twice.
	DefaultSentRetention = 24 * time.Hour
	// DefaultTick bounds how long a receiver's queue sleeps without looking
	// at the clock again (give-ups, the sent markers' expiry).
	DefaultTick = time.Minute
)

// Outcomes counted in candlekeep_notifications_total.
const (
	OutcomeSent    = "sent"
	OutcomeRetried = "retried"
	OutcomeFailed  = "failed"
)

// receiverName is what a receiver may be called: its name is the first
// token of its keys in the bucket.
var receiverName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// DispatcherOptions configure a Dispatcher.
type DispatcherOptions struct {
	JS jetstream.JetStream
	// Receivers by name ("slack", "email", "pagerduty").
	Receivers map[string]Notifier
	Replicas  int
	Logger    *slog.Logger
	Now       func() time.Time

	// Registerer receives candlekeep_notifications_total; nil registers
	// nothing (the counter still counts, for tests through Counter).
	Registerer prometheus.Registerer
	// BackoffInitial is the wait after a receiver's first temporary
	// failure; each further failure doubles it up to BackoffMax. A
	// RetryAfterError's After replaces it.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// MaxAge: a notification not delivered this long after Send is given up
	// (counted failed): a day-old page helps nobody.
	MaxAge time.Duration
	// AttemptTimeout bounds one Notify call, so a receiver that hangs is
	// retried instead of holding its queue forever.
	AttemptTimeout time.Duration
	// SentRetention is how long a delivered notification is remembered.
	SentRetention time.Duration
	// Tick: see DefaultTick.
	Tick time.Duration
}

// Validate reports options that cannot work; zero durations are fine (they
// take the defaults).
func (o DispatcherOptions) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("notify: no JetStream context"))
	}
	for name, n := range o.Receivers {
		if !receiverName.MatchString(name) {
			errs = append(errs, fmt.Errorf("notify: receiver name %q: want letters, digits, '-' or '_'", name))
		}
		if n == nil {
			errs = append(errs, fmt.Errorf("notify: receiver %q has no notifier", name))
		}
	}
	if o.Replicas < 0 {
		errs = append(errs, fmt.Errorf("notify: replicas %d: want 1 or more (0 means 1)", o.Replicas))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"backoff initial", o.BackoffInitial}, {"backoff max", o.BackoffMax}, {"max age", o.MaxAge},
		{"attempt timeout", o.AttemptTimeout}, {"sent retention", o.SentRetention}, {"tick", o.Tick},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("notify: %s %v: want a positive duration (0 takes the default)", d.name, d.v))
		}
	}
	if o.BackoffInitial > 0 && o.BackoffMax > 0 && o.BackoffMax < o.BackoffInitial {
		errs = append(errs, fmt.Errorf("notify: backoff max %v is below backoff initial %v", o.BackoffMax, o.BackoffInitial))
	}
	return errors.Join(errs...)
}

func (o DispatcherOptions) withDefaults() DispatcherOptions {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.BackoffInitial, DefaultBackoffInitial)
	def(&o.BackoffMax, DefaultBackoffMax)
	def(&o.MaxAge, DefaultMaxAge)
	def(&o.AttemptTimeout, DefaultAttemptTimeout)
	def(&o.SentRetention, DefaultSentRetention)
	def(&o.Tick, DefaultTick)
	if o.BackoffMax < o.BackoffInitial {
		o.BackoffMax = o.BackoffInitial
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// entry is the value of one queue key: a notification on its way to one
// receiver. Once delivered it stays as a marker (Sent set, Notification
// kept for the operator reading the bucket) for SentRetention, so that Send
// of the same ID is a no-op.
type entry struct {
	Notification Notification `json:"notification"`
	// Queued is when Send queued it; MaxAge counts from here.
	Queued   time.Time `json:"queued"`
	Attempts int       `json:"attempts"`
	// NextAt is when the next attempt may be made (zero: at once).
	NextAt    time.Time `json:"next_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// Seq is the key's revision when it was created, written on the first
	// update: it orders a receiver's queue (oldest first) across updates
	// and restarts, where the clock may not (equal or stepped times).
	Seq uint64 `json:"seq,omitempty"`
	// Sent is when it left the queue; Outcome says how: "sent", or
	// "failed" (rejected by the receiver, or given up after MaxAge).
	Sent    time.Time `json:"sent,omitzero"`
	Outcome string    `json:"outcome,omitempty"`
}

// Dispatcher delivers notifications to every receiver, each on its own
// durable queue in the Bucket KV: Send only writes the queue, Run drains it
// with one goroutine per receiver, so a receiver that is down or hangs
// delays neither the caller nor another receiver, and what is queued
// survives a restart of the monitor.
type Dispatcher struct {
	o     DispatcherOptions
	kv    jetstream.KeyValue
	total *prometheus.CounterVec
}

// NewDispatcher opens (or creates) the queue bucket.
func NewDispatcher(ctx context.Context, o DispatcherOptions) (*Dispatcher, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	kv, err := o.JS.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = o.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Description: "candlekeep notifications queued per receiver until delivered",
			History:     1,
			Replicas:    o.Replicas,
			Storage:     jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			// Another monitor created it meanwhile.
			kv, err = o.JS.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("notify: open bucket %s: %w", Bucket, err)
	}
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "candlekeep_notifications_total",
		Help: "Notification delivery attempts by receiver and outcome (sent, retried, failed: dropped or given up).",
	}, []string{"receiver", "outcome"})
	if o.Registerer != nil {
		if err := o.Registerer.Register(total); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("notify: register metrics: %w", err)
			}
			// A second Dispatcher in the same process (tests, a restart of
			// the component) keeps counting on the first one's counter.
			total = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	// Zero series for every receiver, so a rate() over them is defined
	// before the first notification.
	for name := range o.Receivers {
		for _, oc := range []string{OutcomeSent, OutcomeRetried, OutcomeFailed} {
			total.WithLabelValues(name, oc)
		}
	}
	return &Dispatcher{o: o, kv: kv, total: total}, nil
}

// Counter returns the delivery counter for receiver and outcome, for tests
// and status pages.
func (d *Dispatcher) Counter(receiver, outcome string) prometheus.Counter {
	return d.total.WithLabelValues(receiver, outcome)
}

// key is the queue key of a notification for one receiver; the ID is
// hashed because it may hold characters a key cannot.
func key(receiver, id string) string {
	sum := sha256.Sum256([]byte(id))
	return receiver + "." + hex.EncodeToString(sum[:16])
}

// Send queues n for every receiver durably and returns; it never waits for
// a receiver. Sending an ID that is queued or was delivered within
// SentRetention is a no-op, so a restarted monitor that sends again loses
// nothing and pages nobody twice.
func (d *Dispatcher) Send(ctx context.Context, n Notification) error {
	if n.ID == "" {
		return fmt.Errorf("notify: notification for %s has no ID", n.Alert)
	}
	val, err := json.Marshal(entry{Notification: n, Queued: d.o.Now().UTC()})
	if err != nil {
		return fmt.Errorf("notify: encode %s: %w", n.ID, err)
	}
	var errs []error
	for name := range d.o.Receivers {
		_, err := d.kv.Create(ctx, key(name, n.ID), val)
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			errs = append(errs, fmt.Errorf("notify: queue %s for %s: %w", n.ID, name, err))
		}
	}
	return errors.Join(errs...)
}

// Run delivers queued notifications until ctx ends, picking up what an
// earlier Dispatcher left undelivered.
func (d *Dispatcher) Run(ctx context.Context) error {
	// Delete markers of expired sent markers are only bookkeeping; drop the
	// old ones so the bucket does not grow with every notification ever sent.
	if err := d.kv.PurgeDeletes(ctx); err != nil && ctx.Err() == nil {
		d.o.Logger.Warn("notification queue: old delete markers not purged", "err", err)
	}
	var wg sync.WaitGroup
	for name, n := range d.o.Receivers {
		q := &queue{d: d, name: name, n: n, log: d.o.Logger.With("receiver", name), items: map[string]*item{}}
		wg.Go(func() { q.run(ctx) })
	}
	wg.Wait()
	return nil
}
