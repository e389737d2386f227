package rules

import (
	"fmt"
	"math"
	"strings"
	"text/template"
)

// RenderSummary expands the rule's Summary template for one alert as
// Prometheus expands annotation templates: $labels are the series' labels,
// $value the sample value, and humanize, humanizeDuration and
// humanizePercentage format as Prometheus' template functions do (their
// code is copied from prometheus/template/template.go, Apache License 2.0,
// © The Prometheus Authors), so a notification reads the same whether
// Prometheus or the monitor raised it.
func (r Rule) RenderSummary(labels Labels, value float64) (string, error) {
	// The variables Prometheus' AlertingRule defines before each template.
	const defs = "{{$labels := .Labels}}{{$value := .Value}}"
	tmpl, err := template.New(r.Name).Funcs(templateFuncs()).Option("missingkey=zero").Parse(defs + r.Summary)
	if err != nil {
		return "", fmt.Errorf("parse summary of %s: %w", r.Name, err)
	}
	var b strings.Builder
	data := struct {
		Labels map[string]string
		Value  float64
	}{labels, value}
	if err := tmpl.Execute(&b, data); err != nil {
		return "", fmt.Errorf("expand summary of %s: %w", r.Name, err)
	}
	return b.String(), nil
}

// templateFuncs are Prometheus' formatting template functions the rules
// use.
func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"humanize":           humanize,
		"humanizeDuration":   humanizeDuration,
		"humanizePercentage": func(v float64) string { return fmt.Sprintf("%.4g%%", v*100) },
	}
}

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
			sign = "-"
			v = -v
		}
		seconds := int64(v) % 60
		minutes := (int64(v) / 60) % 60
		hours := (int64(v) / 60 / 60) % 24
		days := int64(v) / 60 / 60 / 24
		// From days to minutes, seconds are shown as an integer.
		if days != 0 {
			return fmt.Sprintf("%s%dd %dh %dm %ds", sign, days, hours, minutes, seconds)
		}
		if hours != 0 {
			return fmt.Sprintf("%s%dh %dm %ds", sign, hours, minutes, seconds)
		}
		if minutes != 0 {
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
