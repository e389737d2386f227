package rules

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// State of an alert, as Prometheus' alerting rules have it.
type State string

const (
	// Pending: the condition holds, for less than the rule's For.
	Pending State = "pending"
	// Firing: the condition has held for the rule's For.
	Firing State = "firing"
)

// Alert is one active alert: a rule and one label set its condition
// returned.
type Alert struct {
	Rule     string    `json:"rule"`
	Labels   Labels    `json:"labels"` // the series' labels (no alertname, severity)
	Value    float64   `json:"value"`
	State    State     `json:"state"`
	ActiveAt time.Time `json:"active_at"` // when the condition first held
	FiredAt  time.Time `json:"fired_at,omitzero"`
}

// Evaluator runs rules at each evaluation and keeps their alerts' state
// between evaluations (pending until For has passed, then firing; gone as
// soon as the condition no longer holds), as Prometheus' AlertingRule does
// (without keep_firing_for, which rules.yml does not use).
//
// Evaluator is safe for concurrent use.
type Evaluator struct {
	rules []Rule

	mu     sync.Mutex
	scale  float64
	active []map[string]*Alert // per rule, by labels key
}

// NewEvaluator returns an Evaluator of rs with no active alerts and time
// scale 1.
func NewEvaluator(rs []Rule) *Evaluator {
	e := &Evaluator{rules: rs, scale: 1, active: make([]map[string]*Alert, len(rs))}
	for i := range e.active {
		e.active[i] = map[string]*Alert{}
	}
	return e
}

// ValidateTimeScale says whether f can scale the rules' durations: a
// finite number above 0.
func ValidateTimeScale(f float64) error {
	if !(f > 0) || math.IsInf(f, 0) {
		return fmt.Errorf("rule time scale %v: want a number above 0 (1 is real time, 0.01 makes an hour 36 s)", f)
	}
	return nil
}

// SetTimeScale multiplies every rule's For and every increase() window by
// f from the next Eval on (the default, 1, is rules.yml's time): the knob
// behind --rule-time-scale, so a demo or a test sees an alert that needs
// an hour of data within a minute. The History must then keep
// MinRetention(rules, f). f must pass ValidateTimeScale (check it where
// the flag is read); any other value is ignored and the scale stays.
func (e *Evaluator) SetTimeScale(f float64) {
	if ValidateTimeScale(f) != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.scale = f
}

// Eval evaluates every rule at q.Now() and returns the alerts active after
// it (pending and firing), ordered by rule (in the Evaluator's order) and
// labels (as Prometheus orders label sets).
func (e *Evaluator) Eval(q Querier) []Alert {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := q.Now()
	if e.scale != 1 {
		q = scaledQuerier{Querier: q, scale: e.scale}
	}
	for i, r := range e.rules {
		hold := time.Duration(float64(r.For) * e.scale)
		next := map[string]*Alert{}
		for _, s := range r.Eval(q) {
			key := labelsKey(s.Labels)
			if next[key] != nil {
				continue // the same label set twice: Prometheus refuses the result; keep the first
			}
			a := e.active[i][key]
			if a == nil {
				a = &Alert{Rule: r.Name, Labels: maps.Clone(s.Labels), State: Pending, ActiveAt: now}
				if a.Labels == nil {
					a.Labels = Labels{}
				}
			}
			a.Value = s.Value
			if a.State == Pending && now.Sub(a.ActiveAt) >= hold {
				a.State, a.FiredAt = Firing, now
			}
			next[key] = a
		}
		e.active[i] = next
	}
	return e.alerts()
}

// alerts copies the active alerts out, in order. The caller holds e.mu.
func (e *Evaluator) alerts() []Alert {
	var out []Alert
	for i := range e.rules {
		start := len(out)
		for _, a := range e.active[i] {
			c := *a
			c.Labels = maps.Clone(a.Labels)
			out = append(out, c)
		}
		slices.SortFunc(out[start:], func(a, b Alert) int { return compareLabels(a.Labels, b.Labels) })
	}
	return out
}

// Restore sets the active alerts (as Eval last returned them, e.g. kept
// across a restart), so a pending alert keeps its ActiveAt and a firing
// one stays firing while its condition holds. Alerts of rules the
// Evaluator does not have are dropped.
func (e *Evaluator) Restore(as []Alert) {
	e.mu.Lock()
	defer e.mu.Unlock()
	byName := make(map[string]int, len(e.rules))
	for i, r := range e.rules {
		byName[r.Name] = i
	}
	for i := range e.active {
		e.active[i] = map[string]*Alert{}
	}
	for _, a := range as {
		i, ok := byName[a.Rule]
		if !ok {
			continue
		}
		c := a
		c.Labels = maps.Clone(a.Labels)
		if c.Labels == nil {
			c.Labels = Labels{}
		}
		e.active[i][labelsKey(c.Labels)] = &c
	}
}

// scaledQuerier stretches (or shrinks) every increase() window by scale.
type scaledQuerier struct {
	Querier
	scale float64
}

func (q scaledQuerier) Increase(metric string, window time.Duration) []Sample {
	return q.Querier.Increase(metric, time.Duration(float64(window)*q.scale))
}
