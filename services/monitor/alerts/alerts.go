// Package alerts turns the rule evaluator's active alerts into alert groups
// (one per rule: every stale pair is one CandlekeepDataStale group), keeps
// their state in the JetStream KV bucket candlekeep_alerts so a monitor
// restart neither re-sends nor forgets, publishes alert.firing and
// alert.resolved events and hands one notification per group firing,
// repeat (CRITICAL, every RepeatInterval) and resolution to a Sender.
//
// Each transition is written to the group's KV entry, together with the
// event and notification it owes (its outbox), before either leaves the
// process; they are then published and sent, and struck from the outbox.
// A crash or an error in between leaves them in the outbox, and the next
// Evaluate (or the next Alerter on the same bucket) delivers them again
// under the same ids: JetStream drops the duplicate event, the Dispatcher
// the duplicate notification.
package alerts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

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

// Evaluator is what the Alerter needs of rules.Evaluator: evaluate the
// rules, and take back the alerts persisted before a restart.
type Evaluator interface {
	Eval(q rules.Querier) []rules.Alert
	Restore(as []rules.Alert)
}

var (
	_ Sender    = (*notify.Dispatcher)(nil)
	_ Evaluator = (*rules.Evaluator)(nil)
)

// timeScaler is the optional part of an Evaluator that shortens every
// rule's For and window (--rule-time-scale, for demos and fast tests).
type timeScaler interface{ SetTimeScale(f float64) }

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
	// Now stamps what is not tied to an evaluation (the delivery of
	// notifications left over from before a restart).
	Now func() time.Time
	// Registerer takes candlekeep_alerts_firing; nil registers nothing.
	Registerer prometheus.Registerer
	// Evaluator runs Rules; nil means rules.NewEvaluator(Rules).
	Evaluator Evaluator
	// TimeScale, when not 0 or 1, is passed to the Evaluator's
	// SetTimeScale (it must have one).
	TimeScale float64
}

// DefaultOptions are the options' defaults; the caller adds JS, Rules,
// Sender and the rest.
func DefaultOptions() Options {
	return Options{RepeatInterval: DefaultRepeatInterval, Replicas: 1, TimeScale: 1}
}

// Validate checks the options, with the zero values meaning the defaults.
func (o Options) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("alerts: JS is required"))
	}
	if o.Sender == nil {
		errs = append(errs, errors.New("alerts: Sender is required"))
	}
	if o.RepeatInterval < 0 {
		errs = append(errs, fmt.Errorf("alerts: repeat interval %v: must be positive", o.RepeatInterval))
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		errs = append(errs, fmt.Errorf("alerts: replicas %d: must be 1 to 5", o.Replicas))
	}
	if o.TimeScale < 0 {
		errs = append(errs, fmt.Errorf("alerts: time scale %v: must be positive", o.TimeScale))
	}
	seen := map[string]bool{}
	for i, r := range o.Rules {
		switch {
		case !validKey(r.Name):
			errs = append(errs, fmt.Errorf("alerts: rule %d: name %q: must be letters, digits, - and _ (it is the group's KV key)", i, r.Name))
		case seen[r.Name]:
			errs = append(errs, fmt.Errorf("alerts: rule %q: defined twice", r.Name))
		}
		seen[r.Name] = true
		if r.Severity != severityCritical && r.Severity != "warning" && r.Severity != "info" {
			errs = append(errs, fmt.Errorf("alerts: rule %q: severity %q: must be critical, warning or info", r.Name, r.Severity))
		}
	}
	return errors.Join(errs...)
}

const severityCritical = "critical"

func validKey(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			return false
		}
	}
	return true
}

// Alerter evaluates the rules and notifies. Evaluate is meant to be called
// from one goroutine (the monitor's evaluation loop); Firing from any.
type Alerter struct {
	o      Options
	kv     jetstream.KeyValue
	eval   Evaluator
	log    *slog.Logger
	firing *prometheus.GaugeVec

	// evalMu serialises Evaluate (and the delivery New starts with); it
	// guards groups.
	evalMu sync.Mutex
	// groups are the rules' groups as last persisted (plus the latest
	// values, which are not worth a write of their own), by rule name.
	groups map[string]*group

	// mu guards snapshot, what Firing returns.
	mu       sync.RWMutex
	snapshot []candles.AlertEvent
}

// New opens (or creates) the alert state bucket and restores the state:
// the groups, the Evaluator's pending and firing alerts (so a rule's "for"
// keeps counting from before the restart), and the delivery of any event or
// notification a crash kept from going out.
func New(ctx context.Context, o Options) (*Alerter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.RepeatInterval == 0 {
		o.RepeatInterval = DefaultRepeatInterval
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
	if o.Evaluator == nil {
		o.Evaluator = rules.NewEvaluator(o.Rules)
	}
	if o.TimeScale != 0 && o.TimeScale != 1 {
		ts, ok := o.Evaluator.(timeScaler)
		if !ok {
			return nil, fmt.Errorf("alerts: time scale %v: the evaluator cannot scale time", o.TimeScale)
		}
		ts.SetTimeScale(o.TimeScale)
	}
	a := &Alerter{
		o:      o,
		eval:   o.Evaluator,
		log:    o.Logger,
		groups: map[string]*group{},
		firing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "candlekeep_alerts_firing",
			Help: "1 while the rule's alert group fires (in-process evaluation), 0 otherwise.",
		}, []string{"alertname", "severity"}),
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(a.firing); err != nil {
			// An Alerter started again in the same process (its monitor
			// restarted in place) takes over its predecessor's gauge.
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("alerts: register metrics: %w", err)
			}
			existing, ok := are.ExistingCollector.(*prometheus.GaugeVec)
			if !ok {
				return nil, fmt.Errorf("alerts: register metrics: %w", err)
			}
			a.firing = existing
		}
	}
	kv, err := o.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "candlekeep alert groups: state, members and undelivered notifications, one key per rule",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("alerts: open kv %s: %w", Bucket, err)
	}
	a.kv = kv

	var restore []rules.Alert
	for _, r := range o.Rules {
		g, err := a.load(ctx, r)
		if err != nil {
			return nil, err
		}
		a.groups[r.Name] = g
		restore = append(restore, g.alerts(r.Name)...)
	}
	a.eval.Restore(restore)
	a.publishState()

	// A notification persisted but perhaps never handed over goes out now
	// (a duplicate is dropped by its id); one that cannot waits for the
	// next Evaluate rather than keeping the monitor from starting.
	a.evalMu.Lock()
	defer a.evalMu.Unlock()
	if err := a.deliver(ctx, o.Now()); err != nil {
		a.log.Warn("alert deliveries left over from before the restart wait for the next evaluation", "err", err)
	}
	return a, nil
}

// Evaluate evaluates the rules over q, updates the groups, persists them,
// publishes alert.firing / alert.resolved and sends the notifications due.
// An error (KV, publish, send) loses nothing: what was not persisted is
// derived again by the next Evaluate, what was persisted but not delivered
// is delivered by it.
func (a *Alerter) Evaluate(ctx context.Context, q rules.Querier) error {
	a.evalMu.Lock()
	defer a.evalMu.Unlock()
	now := q.Now()
	active := map[string][]rules.Alert{}
	for _, al := range a.eval.Eval(q) {
		active[al.Rule] = append(active[al.Rule], al)
	}
	var errs []error
	for _, r := range a.o.Rules {
		prev := a.groups[r.Name]
		next, changed := a.step(r, prev, active[r.Name], q, now)
		if changed {
			if err := a.save(ctx, next); err != nil {
				// prev stays: the next evaluation derives the same
				// transition again from it.
				errs = append(errs, err)
				continue
			}
		}
		a.groups[r.Name] = next
	}
	if err := a.deliver(ctx, now); err != nil {
		errs = append(errs, err)
	}
	a.publishState()
	return errors.Join(errs...)
}

// Firing returns the groups firing now, as alert.firing events describe them.
func (a *Alerter) Firing() []candles.AlertEvent {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return slices.Clone(a.snapshot)
}

// publishState refreshes what Firing returns and the gauge. Callers hold
// evalMu (or are New, before the Alerter is shared).
func (a *Alerter) publishState() {
	var firing []candles.AlertEvent
	for _, r := range a.o.Rules {
		g := a.groups[r.Name]
		v := 0.0
		if g.State == stateFiring {
			v = 1
			ev := a.event(r, g, candles.KindAlertFiring, g.FiringSince)
			firing = append(firing, ev)
		}
		a.firing.WithLabelValues(r.Name, r.Severity).Set(v)
	}
	a.mu.Lock()
	a.snapshot = firing
	a.mu.Unlock()
}
