package rules

import "time"

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
// soon as the condition no longer holds), as Prometheus' rule manager does.
// STUB: the rules work implements it.
type Evaluator struct {
	rules []Rule
}

// NewEvaluator returns an Evaluator of rules with no active alerts.
func NewEvaluator(rs []Rule) *Evaluator { return &Evaluator{rules: rs} }

// Eval evaluates every rule at q.Now() and returns the alerts active after
// it (pending and firing), ordered by rule and labels.
func (e *Evaluator) Eval(q Querier) []Alert { return nil }

// Restore sets the active alerts (as Eval last returned them, e.g. kept
// across a restart), so a pending alert keeps its ActiveAt.
func (e *Evaluator) Restore(as []Alert) {}

// All returns candlekeep's ten rules, in the order of rules.yml.
func All() []Rule { return nil }
