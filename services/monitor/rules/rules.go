// Package rules holds candlekeep's eleven alert rules and evaluates them in
// process, over the same metrics and with the same conditions as the
// Prometheus rules file deploy/prometheus/rules.yml (a test keeps the two
// equal by running both over the same series).
package rules

import "time"

// Labels of a series, without __name__.
type Labels map[string]string

// Sample is one series' value at an evaluation.
type Sample struct {
	Labels Labels
	Value  float64
}

// Querier answers the questions the rules ask of the metrics at one
// evaluation time.
type Querier interface {
	// Instant returns every series of the metric (its name, e.g.
	// "candlekeep_service_up") at the evaluation time, as Prometheus would
	// for an instant vector selector (5 minutes lookback, stale series
	// dropped).
	Instant(metric string) []Sample
	// Increase returns, per series of the counter, its increase over the
	// window ending at the evaluation time, as PromQL's increase() does
	// (counter resets handled, extrapolated to the window's edges).
	Increase(metric string, window time.Duration) []Sample
	// Now is the evaluation time (PromQL's time()).
	Now() time.Time
}

// Rule is one alert rule, defined once here and kept equal to its twin in
// deploy/prometheus/rules.yml.
type Rule struct {
	Name     string        // alert name, e.g. CandlekeepDataStale
	Severity string        // critical, warning, info
	For      time.Duration // how long the condition must hold before it fires
	// Expr is the PromQL condition of rules.yml, word for word.
	Expr string
	// Summary is the annotation template of rules.yml; Runbook its link.
	Summary, Runbook string
	// Window is the widest range Expr takes increase() over (0 for none):
	// a History must keep at least that, see MinRetention.
	Window time.Duration
	// Eval is Expr evaluated by hand: one Sample per alerting series, with
	// the labels Prometheus' result would have.
	Eval func(q Querier) []Sample
}
