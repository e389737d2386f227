package rules

import (
	"time"

	dto "github.com/prometheus/client_model/go"
)

// History keeps the samples of every series gathered at each evaluation for
// a retention (long enough for the widest window a rule asks, 1 h), so the
// rules can be evaluated over it as Prometheus evaluates rules.yml over
// its TSDB. STUB: the rules work implements it.
type History struct {
	retention time.Duration
}

// NewHistory returns an empty History keeping samples for retention.
func NewHistory(retention time.Duration) *History { return &History{retention: retention} }

// Append records the gathered metric families as samples at t (a scrape),
// and drops samples older than the retention.
func (h *History) Append(t time.Time, mfs []*dto.MetricFamily) {}

// At is a Querier over the history at evaluation time t.
func (h *History) At(t time.Time) Querier { return nil }
