package alerts

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

// summaryAction is the subset of Prometheus' alert templates that the
// rules' summaries use: {{ $labels.x }}, {{ $value }} and $value piped to
// humanize, humanizeDuration or humanizePercentage.
var summaryAction = regexp.MustCompile(`{{\s*\$(labels\.([A-Za-z_][A-Za-z0-9_]*)|value(?:\s*\|\s*([A-Za-z]+))?)\s*}}`)

// renderSummary renders a rule's summary template for one alert, as
// Prometheus renders the annotation; of others adds how many more fire.
// An action outside the subset is left as written.
func renderSummary(tmpl string, l rules.Labels, v float64, of int) string {
	s := summaryAction.ReplaceAllStringFunc(tmpl, func(action string) string {
		m := summaryAction.FindStringSubmatch(action)
		if m[2] != "" {
			return l[m[2]]
		}
		switch m[3] {
		case "":
			return fmt.Sprint(v)
		case "humanize":
			return humanize(v)
		case "humanizeDuration":
			return humanizeDuration(v)
		case "humanizePercentage":
			return humanizePercentage(v)
		}
		return action
	})
	if of > 1 {
		s += fmt.Sprintf(" (and %d more)", of-1)
	}
	return s
}

// humanize, humanizeDuration and humanizePercentage render as Prometheus'
// template functions of the same names do (template/template.go).
func humanize(v float64) string {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprintf("%.4g", v)
	}
	if math.Abs(v) >= 1 {
		prefix := ""
		for _, p := range []string{"k", "M", "G", "T", "P", "E", "Z", "Y"} {
			if math.Abs(v) < 1000 {
				break
			}
			prefix = p
			v /= 1000
		}
		return fmt.Sprintf("%.4g%s", v, prefix)
	}
	prefix := ""
	for _, p := range []string{"m", "u", "n", "p", "f", "a", "z", "y"} {
		if math.Abs(v) >= 1 {
			break
		}
		prefix = p
		v *= 1000
	}
	return fmt.Sprintf("%.4g%s", v, prefix)
}

func humanizeDuration(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprintf("%.4g", v)
	}
	if v == 0 {
		return fmt.Sprintf("%.4gs", v)
	}
	if math.Abs(v) >= 1 {
		sign := ""
		if v < 0 {
			sign, v = "-", -v
		}
		d := int64(v)
		seconds, minutes, hours, days := d%60, d/60%60, d/3600%24, d/86400
		switch {
		case days != 0:
			return fmt.Sprintf("%s%dd %dh %dm %ds", sign, days, hours, minutes, seconds)
		case hours != 0:
			return fmt.Sprintf("%s%dh %dm %ds", sign, hours, minutes, seconds)
		case minutes != 0:
			return fmt.Sprintf("%s%dm %ds", sign, minutes, seconds)
		}
		return fmt.Sprintf("%s%.4gs", sign, v)
	}
	prefix := ""
	for _, p := range []string{"m", "u", "n", "p", "f", "a", "z", "y"} {
		if math.Abs(v) >= 1 {
			break
		}
		prefix = p
		v *= 1000
	}
	return fmt.Sprintf("%.4g%ss", v, prefix)
}

func humanizePercentage(v float64) string { return fmt.Sprintf("%.4g%%", v*100) }

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
			return humanizePercentage(a.Value) + " free", "10% free"
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
