package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

// A group's state. A pending group has active alerts none of which fires
// yet; it still needs its entry, so their ActiveAt survives a restart.
const (
	stateInactive = "inactive"
	statePending  = "pending"
	stateFiring   = "firing"
)

// groupVersion is the version of a group entry's JSON.
const groupVersion = 1

// group is one rule's alert group, as its KV entry (key: the rule name)
// holds it.
type group struct {
	V     int    `json:"v"`
	Rule  string `json:"rule"`
	State string `json:"state"`
	// Members are the rule's active alerts, pending and firing, as the
	// Evaluator last returned them (what Restore needs).
	Members []member `json:"members,omitempty"`
	// ActiveSince and FiringSince are of the current firing, or the last
	// one once resolved; Firing names its firing members (the last ones,
	// once resolved).
	ActiveSince time.Time `json:"active_since,omitzero"`
	FiringSince time.Time `json:"firing_since,omitzero"`
	Firing      []string  `json:"firing,omitempty"`
	// Fired names every member that fired during the current (or last)
	// firing, so the resolution names what the firing and its repeats
	// announced even when some members stopped before the others.
	Fired []string `json:"fired,omitempty"`
	// Summary, Value and Threshold describe the first firing member.
	// They are refreshed at every evaluation but written only with a
	// change of state or members: a resolved message after a restart may
	// show a value a little older than the last one measured.
	Summary   string `json:"summary,omitempty"`
	Value     string `json:"value,omitempty"`
	Threshold string `json:"threshold,omitempty"`
	// LastSent is the last firing, repeat or resolved message made;
	// Repeats counts the repeats of the current firing.
	LastSent *sent `json:"last_sent,omitempty"`
	Repeats  int   `json:"repeats,omitempty"`
	// Outbox holds what a transition owes and has not delivered yet,
	// oldest first.
	Outbox []delivery `json:"outbox,omitempty"`

	// dirty: the entry in KV is older than this (a save after a delivery
	// failed); the next Evaluate writes it.
	dirty bool
	// key caches persisted(), so each evaluation encodes a group once;
	// "" when not known (a clone may be changed).
	key string
}

// member is one active alert of the group's rule.
type member struct {
	Labels rules.Labels `json:"labels,omitempty"`
	// Value is text (strconv 'g'), since JSON has no NaN or Inf.
	Value    string    `json:"value"`
	ActiveAt time.Time `json:"active_at"`
	FiredAt  time.Time `json:"fired_at,omitzero"`
}

type sent struct {
	Kind notify.Kind `json:"kind"`
	At   time.Time   `json:"at"`
}

// delivery is one notification and the event that goes with it (none for a
// repeat), each marked once it went out.
type delivery struct {
	Notification notify.Notification `json:"notification"`
	Event        *candles.AlertEvent `json:"event,omitempty"`
	EventID      string              `json:"event_id,omitempty"`
	Published    bool                `json:"published,omitempty"`
	Sent         bool                `json:"sent,omitempty"`
}

func (g *group) clone() *group {
	c := *g
	c.key = ""
	c.Members = slices.Clone(g.Members)
	c.Firing = slices.Clone(g.Firing)
	c.Fired = slices.Clone(g.Fired)
	c.Outbox = slices.Clone(g.Outbox)
	if g.LastSent != nil {
		s := *g.LastSent
		c.LastSent = &s
	}
	return &c
}

// alerts are the group's members as the Evaluator's alerts, for Restore.
func (g *group) alerts(rule string) []rules.Alert {
	var as []rules.Alert
	for _, m := range g.Members {
		v, err := strconv.ParseFloat(m.Value, 64)
		if err != nil {
			v = math.NaN()
		}
		st := rules.Pending
		if !m.FiredAt.IsZero() {
			st = rules.Firing
		}
		as = append(as, rules.Alert{Rule: rule, Labels: maps.Clone(m.Labels), Value: v, State: st, ActiveAt: m.ActiveAt, FiredAt: m.FiredAt})
	}
	return as
}

// persisted is g without what changes at every evaluation without being
// worth a write (values and the text made from them).
func (g *group) persisted() string {
	c := g.clone()
	c.Summary, c.Value, c.Threshold = "", "", ""
	for i := range c.Members {
		c.Members[i].Value = ""
	}
	b, _ := json.Marshal(c) // nothing in a group fails to encode
	return string(b)
}

// step derives the group's next state from its previous one and the rule's
// active alerts at now. changed reports whether the entry must be written.
func (a *Alerter) step(r rules.Rule, prev *group, active []rules.Alert, q rules.Querier, now time.Time) (*group, bool) {
	next := prev.clone()
	next.Members = nil
	var firing []rules.Alert
	for _, al := range active {
		m := member{Labels: al.Labels, Value: strconv.FormatFloat(al.Value, 'g', -1, 64), ActiveAt: al.ActiveAt}
		if al.State == rules.Firing {
			if al.FiredAt.IsZero() {
				// An evaluator that does not say when: the first
				// evaluation that saw it firing.
				al.FiredAt = now
				if i := slices.IndexFunc(prev.Members, func(p member) bool { return maps.Equal(p.Labels, al.Labels) }); i >= 0 && !prev.Members[i].FiredAt.IsZero() {
					al.FiredAt = prev.Members[i].FiredAt
				}
			}
			m.FiredAt = al.FiredAt
			firing = append(firing, al)
		}
		next.Members = append(next.Members, m)
	}
	slices.SortFunc(firing, func(x, y rules.Alert) int { return strings.Compare(memberName(x.Labels), memberName(y.Labels)) })
	names := make([]string, 0, len(firing))
	for _, al := range firing {
		if n := memberName(al.Labels); n != "" {
			names = append(names, n)
		}
	}
	if len(firing) > 0 {
		next.Summary = renderSummary(r, firing[0].Labels, firing[0].Value, len(firing))
		next.Value, next.Threshold = formatterFor(r.Name)(q, firing[0])
	}

	switch {
	case len(firing) > 0 && prev.State != stateFiring:
		// The earliest FiredAt is the same when this transition is
		// derived again after a failed write, so its ids are too.
		since, activeSince := now, now
		for _, al := range firing {
			if !al.FiredAt.IsZero() && al.FiredAt.Before(since) {
				since = al.FiredAt
			}
			if !al.ActiveAt.IsZero() && al.ActiveAt.Before(activeSince) {
				activeSince = al.ActiveAt
			}
		}
		next.State, next.FiringSince, next.ActiveSince, next.Firing, next.Fired, next.Repeats = stateFiring, since, activeSince, names, names, 0
		a.queue(r, next, notify.Firing, now)
	case len(firing) > 0:
		// New members join without a message of their own; the
		// repeat and the resolution name them.
		next.Firing = names
		for _, n := range names {
			if !slices.Contains(next.Fired, n) {
				next.Fired = append(next.Fired, n)
			}
		}
		slices.Sort(next.Fired)
		if r.Severity == severityCritical && next.LastSent != nil && now.Sub(next.LastSent.At) >= a.o.RepeatInterval {
			next.Repeats++
			a.queue(r, next, notify.Repeat, now)
		}
	case prev.State == stateFiring:
		next.State = stateInactive
		if len(active) > 0 {
			next.State = statePending
		}
		a.queue(r, next, notify.Resolved, now)
	default:
		next.State = stateInactive
		if len(active) > 0 {
			next.State = statePending
		}
	}
	if prev.key == "" {
		prev.key = prev.persisted()
	}
	next.key = next.persisted()
	return next, next.dirty || prev.key != next.key
}

// queue puts the message of kind (and its event) in g's outbox.
func (a *Alerter) queue(r rules.Rule, g *group, kind notify.Kind, now time.Time) {
	since := g.FiringSince.UnixMilli()
	id := fmt.Sprintf("%s:%d:%s", r.Name, since, kind)
	if kind == notify.Repeat {
		id += ":" + strconv.Itoa(g.Repeats)
	}
	n := notify.Notification{
		ID:        id,
		GroupKey:  fmt.Sprintf("%s:%d", r.Name, since),
		Kind:      kind,
		Alert:     r.Name,
		Severity:  r.Severity,
		Summary:   g.Summary,
		Value:     g.Value,
		Threshold: g.Threshold,
		Members:   slices.Clone(g.Firing),
		Since:     g.FiringSince,
		Runbook:   r.Runbook,
		Source:    a.o.Source,
	}
	d := delivery{Notification: n}
	switch kind {
	case notify.Firing:
		ev := a.event(r, g, candles.KindAlertFiring, now)
		d.Event, d.EventID = &ev, fmt.Sprintf("%s:%s:%d", candles.KindAlertFiring, r.Name, since)
	case notify.Resolved:
		d.Notification.ResolvedAt = now
		d.Notification.Members = slices.Clone(g.Fired)
		ev := a.event(r, g, candles.KindAlertResolved, now)
		ev.ResolvedAt, ev.Members = now, slices.Clone(g.Fired)
		d.Event, d.EventID = &ev, fmt.Sprintf("%s:%s:%d", candles.KindAlertResolved, r.Name, since)
	}
	g.LastSent = &sent{Kind: kind, At: now}
	g.Outbox = append(g.Outbox, d)
	a.log.Info("alert "+string(kind), "alert", r.Name, "severity", r.Severity, "members", len(g.Firing), "firing_since", g.FiringSince, "notification_id", id)
}

// event describes g as an event of kind at t.
func (a *Alerter) event(r rules.Rule, g *group, kind string, t time.Time) candles.AlertEvent {
	ev := candles.AlertEvent{
		EventHeader: candles.NewHeader(kind, ""),
		Alert:       r.Name,
		Severity:    r.Severity,
		Summary:     g.Summary,
		Value:       g.Value,
		Threshold:   g.Threshold,
		Runbook:     r.Runbook,
		Members:     slices.Clone(g.Firing),
		ActiveSince: g.ActiveSince,
		FiringSince: g.FiringSince,
	}
	ev.Time = t.UTC()
	return ev
}

// deliver publishes and sends what the groups' outboxes hold, in order per
// group (a group's resolution never overtakes its firing), and strikes what
// went out.
func (a *Alerter) deliver(ctx context.Context, now time.Time) error {
	var errs []error
	for _, r := range a.o.Rules {
		g := a.groups[r.Name]
		if len(g.Outbox) == 0 && !g.dirty {
			continue
		}
		next := g.clone()
		done, progress := 0, false
		for i := range next.Outbox {
			d := &next.Outbox[i]
			if !d.Published && d.Event != nil {
				ev := *d.Event
				if err := candles.PublishEvent(ctx, a.o.JS, &ev, d.EventID, now); err != nil {
					errs = append(errs, fmt.Errorf("alerts: %s: %w", d.Notification.ID, err))
					break
				}
				d.Published, progress = true, true
			}
			if !d.Sent {
				if err := a.o.Sender.Send(ctx, d.Notification); err != nil {
					errs = append(errs, fmt.Errorf("alerts: send %s: %w", d.Notification.ID, err))
					break
				}
				d.Sent, progress = true, true
				a.log.Debug("alert notification handed over", "alert", r.Name, "notification_id", d.Notification.ID)
			}
			done++
		}
		changed := progress || done > 0 || g.dirty
		next.Outbox = slices.Delete(next.Outbox, 0, done)
		if !changed {
			continue
		}
		if err := a.save(ctx, next); err != nil {
			// What went out stays out; the entry is written again by
			// the next Evaluate. A restart before that re-delivers it,
			// which the ids make harmless.
			next.dirty = true
			errs = append(errs, err)
		}
		a.groups[r.Name] = next
	}
	return errors.Join(errs...)
}

func (a *Alerter) save(ctx context.Context, g *group) error {
	g.V = groupVersion
	data, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("alerts: encode group %s: %w", g.Rule, err)
	}
	if _, err := a.kv.Put(ctx, g.Rule, data); err != nil {
		return fmt.Errorf("alerts: save group %s: %w", g.Rule, err)
	}
	g.dirty = false
	return nil
}

// load reads r's group. An entry that cannot be decoded is logged and
// replaced by an inactive group: a firing it recorded is announced again.
func (a *Alerter) load(ctx context.Context, r rules.Rule) (*group, error) {
	fresh := &group{V: groupVersion, Rule: r.Name, State: stateInactive}
	e, err := a.kv.Get(ctx, r.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fresh, nil
	}
	if err != nil {
		return nil, fmt.Errorf("alerts: load group %s: %w", r.Name, err)
	}
	var g group
	if err := json.Unmarshal(e.Value(), &g); err != nil {
		a.log.Warn("alert group entry unreadable, starting it afresh", "alert", r.Name, "err", err)
		return fresh, nil
	}
	if g.V != groupVersion {
		a.log.Warn("alert group entry of another version, starting it afresh", "alert", r.Name, "v", g.V)
		return fresh, nil
	}
	g.Rule = r.Name
	return &g, nil
}

// memberName names an alert's label set in messages: "BTCUSDT/4h" for a
// pair, "service=writer" (sorted, comma-separated) otherwise, "" for none.
func memberName(l rules.Labels) string {
	if len(l) == 2 && l["symbol"] != "" && l["interval"] != "" {
		return l["symbol"] + "/" + l["interval"]
	}
	keys := slices.Sorted(maps.Keys(l))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
