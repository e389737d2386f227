package alerts

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

// renderSummary renders rule's summary template for its first firing
// alert as Prometheus renders the annotation (rules.Rule.RenderSummary,
// checked against promtool); of > 1 adds how many more fire. A template
// that cannot render falls back to the template text, so a message still
// goes out.
func renderSummary(r rules.Rule, l rules.Labels, v float64, of int) string {
	s, err := r.RenderSummary(l, v)
	if err != nil {
		s = r.Summary
	}
	if of > 1 {
		s += fmt.Sprintf(" (and %d more)", of-1)
	}
	return s
}

// formatter renders a firing alert's measurement and the limit it broke, as
// an operator reads them ("27h0m0s" against "26h0m0s").
type formatter func(q rules.Querier, a rules.Alert) (value, threshold string)

// formatterFor returns the formatter of the rule named name; the limits are
// those of deploy/prometheus/rules.yml.
func formatterFor(name string) formatter {
	switch name {
	case "CandlekeepDataStale":
		return func(q rules.Querier, a rules.Alert) (string, string) {
			limit := "its limit"
			for _, s := range q.Instant("candlekeep_pair_staleness_limit_seconds") {
				if s.Labels["symbol"] == a.Labels["symbol"] && s.Labels["interval"] == a.Labels["interval"] {
					limit = seconds(s.Value)
				}
			}
			return seconds(a.Value) + " since the last candle", limit
		}
	case "CandlekeepDatabaseCorrupt":
		return fixed("integrity check failed", "integrity check passes")
	case "CandlekeepSyncTimeout":
		return perHour("sync timeout(s)", "0")
	case "CandlekeepServiceDown":
		return fixed("not answering", "answering")
	case "CandlekeepBackupStale":
		return func(_ rules.Querier, a rules.Alert) (string, string) {
			return seconds(a.Value) + " old", seconds(26 * 3600)
		}
	case "CandlekeepMissingSymbols":
		return func(_ rules.Querier, a rules.Alert) (string, string) {
			return count(a.Value) + " incomplete pair(s)", "0"
		}
	case "CandlekeepRateLimitAbuse":
		return perHour("429/418 answer(s)", "< 1")
	case "CandlekeepSyncSlow":
		return func(_ rules.Querier, a rules.Alert) (string, string) {
			return seconds(a.Value), seconds(1800)
		}
	case "CandlekeepDiskSpaceLow":
		return func(_ rules.Querier, a rules.Alert) (string, string) {
			return fmt.Sprintf("%.4g%%", a.Value*100) + " free", "10% free"
		}
	case "CandlekeepPipelineErrors":
		return perHour("failure(s)", "0")
	}
	return func(_ rules.Querier, a rules.Alert) (string, string) { return fmt.Sprint(a.Value), "" }
}

func fixed(value, threshold string) formatter {
	return func(rules.Querier, rules.Alert) (string, string) { return value, threshold }
}

func perHour(what, limit string) formatter {
	return func(_ rules.Querier, a rules.Alert) (string, string) {
		return count(a.Value) + " " + what + " in 1h", limit + " in 1h"
	}
}

// seconds renders a number of seconds as a Go duration to the second.
func seconds(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprint(v)
	}
	return (time.Duration(v * float64(time.Second))).Round(time.Second).String()
}

// count renders an increase() result, which PromQL extrapolates to a
// fraction, to at most one decimal.
func count(v float64) string { return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) }
