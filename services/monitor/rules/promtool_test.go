package rules

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// What the tests read of promtool's unit test files
// (https://prometheus.io/docs/prometheus/latest/configuration/unit_testing_rules/),
// and a loader of their input series into a History.

type promtoolFile struct {
	RuleFiles          []string       `yaml:"rule_files"`
	EvaluationInterval promDuration   `yaml:"evaluation_interval"`
	Tests              []promtoolTest `yaml:"tests"`
}

type promtoolTest struct {
	Interval       promDuration    `yaml:"interval"`
	InputSeries    []inputSeries   `yaml:"input_series"`
	AlertRuleTests []alertRuleTest `yaml:"alert_rule_test,omitempty"`
}

type inputSeries struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type alertRuleTest struct {
	EvalTime  promDuration `yaml:"eval_time"`
	Alertname string       `yaml:"alertname"`
	ExpAlerts []struct {
		ExpLabels      map[string]string `yaml:"exp_labels"`
		ExpAnnotations map[string]string `yaml:"exp_annotations"`
	} `yaml:"exp_alerts"`
}

// promDuration is a Prometheus duration ("1m", "26h20m", "1d").
type promDuration time.Duration

var promDurationRE = regexp.MustCompile(`^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$`)

func parsePromDuration(s string) (time.Duration, error) {
	m := promDurationRE.FindStringSubmatch(s)
	if s == "" || m == nil {
		return 0, fmt.Errorf("duration %q: not a Prometheus duration", s)
	}
	units := []time.Duration{365 * 24 * time.Hour, 7 * 24 * time.Hour, 24 * time.Hour, time.Hour, time.Minute, time.Second, time.Millisecond}
	var d time.Duration
	for i, u := range units {
		if n := m[2+2*i]; n != "" {
			v, _ := strconv.Atoi(n)
			d += time.Duration(v) * u
		}
	}
	return d, nil
}

func (d *promDuration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parsePromDuration(n.Value)
	*d = promDuration(v)
	return err
}

func readPromtoolFile(t *testing.T, path string) promtoolFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f promtoolFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if f.EvaluationInterval == 0 {
		f.EvaluationInterval = promDuration(time.Minute)
	}
	for i := range f.Tests {
		if f.Tests[i].Interval == 0 {
			f.Tests[i].Interval = f.EvaluationInterval
		}
	}
	return f
}

// point is one step of a series: a value, a missing sample (`_`) or a
// staleness marker (`stale`).
type point struct {
	missing bool
	v       float64 // staleNaN() for `stale`
}

type notatedSeries struct {
	name   string
	labels Labels
	points []point // at 0, interval, 2·interval, …
}

// parseSeries reads promtool's series selector (`name{a="b"}`) and values
// notation: `a`, `axN` (N+1 times a), `a+bxN` / `a-bxN` (a, a±b, … N+1
// values), `_` and `_xN` (N missing samples), `stale`.
func parseSeries(s inputSeries) (notatedSeries, error) {
	ns := notatedSeries{labels: Labels{}}
	sel := strings.TrimSpace(s.Series)
	name, rest, hasLabels := strings.Cut(sel, "{")
	ns.name = strings.TrimSpace(name)
	if hasLabels {
		body, ok := strings.CutSuffix(strings.TrimSpace(rest), "}")
		if !ok {
			return ns, fmt.Errorf("series %q: no closing }", sel)
		}
		for pair := range strings.SplitSeq(body, ",") {
			if strings.TrimSpace(pair) == "" {
				continue
			}
			k, v, ok := strings.Cut(pair, "=")
			if !ok {
				return ns, fmt.Errorf("series %q: label %q has no =", sel, pair)
			}
			uv, err := strconv.Unquote(strings.TrimSpace(v))
			if err != nil {
				return ns, fmt.Errorf("series %q: label %q: %w", sel, pair, err)
			}
			if k = strings.TrimSpace(k); k == "__name__" {
				ns.name = uv
			} else {
				ns.labels[k] = uv
			}
		}
	}
	for tok := range strings.FieldsSeq(s.Values) {
		ps, err := parseValueToken(tok)
		if err != nil {
			return ns, fmt.Errorf("series %q values: %w", sel, err)
		}
		ns.points = append(ns.points, ps...)
	}
	return ns, nil
}

func parseValueToken(tok string) ([]point, error) {
	switch tok {
	case "_":
		return []point{{missing: true}}, nil
	case "stale":
		return []point{{v: staleNaN()}}, nil
	}
	x := strings.LastIndexByte(tok, 'x')
	if x < 0 {
		v, err := strconv.ParseFloat(tok, 64)
		if err != nil {
			return nil, fmt.Errorf("value %q: %w", tok, err)
		}
		return []point{{v: v}}, nil
	}
	times, err := strconv.Atoi(tok[x+1:])
	if err != nil {
		return nil, fmt.Errorf("value %q: repeat count: %w", tok, err)
	}
	head := tok[:x]
	if head == "_" {
		ps := make([]point, times)
		for i := range ps {
			ps[i].missing = true
		}
		return ps, nil
	}
	// The step's sign is the first + or - after the start that is not an
	// exponent's.
	op := -1
	for i := 1; i < len(head); i++ {
		if (head[i] == '+' || head[i] == '-') && head[i-1] != 'e' && head[i-1] != 'E' {
			op = i
			break
		}
	}
	start, step := head, "0"
	if op > 0 {
		start, step = head[:op], head[op:]
	}
	a, err := strconv.ParseFloat(start, 64)
	if err != nil {
		return nil, fmt.Errorf("value %q: %w", tok, err)
	}
	b, err := strconv.ParseFloat(step, 64)
	if err != nil {
		return nil, fmt.Errorf("value %q: %w", tok, err)
	}
	// Add the step again and again, as promtool's parser does, so the
	// floats are the same bits.
	ps := []point{{v: a}}
	for range times {
		a += b
		ps = append(ps, point{v: a})
	}
	return ps, nil
}

// loadSeries parses a test's input series.
func loadSeries(t *testing.T, in []inputSeries) []notatedSeries {
	t.Helper()
	var out []notatedSeries
	for _, s := range in {
		ns, err := parseSeries(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ns)
	}
	return out
}

// feeder appends notated series to a History step by step, as promtool
// loads them into its storage (every sample kept, as for a counter).
type feeder struct {
	h        *History
	series   []notatedSeries
	interval time.Duration
	next     int // the next step to append
}

// upTo appends every step at or before t (t from the Unix epoch, promtool's
// time 0).
func (f *feeder) upTo(t time.Duration) {
	f.h.mu.Lock()
	defer f.h.mu.Unlock()
	for ; time.Duration(f.next)*f.interval <= t; f.next++ {
		ms := (time.Duration(f.next) * f.interval).Milliseconds()
		more := false
		for _, s := range f.series {
			if f.next >= len(s.points) {
				continue
			}
			more = true
			if p := s.points[f.next]; !p.missing {
				f.h.add(s.name, s.labels, ms, p.v, true)
			}
		}
		if !more {
			return
		}
	}
}

func TestParseSeriesNotation(t *testing.T) {
	tests := []struct {
		values string
		want   []string // formatted points: value, "_" or "stale"
	}{
		{"1 2 3", []string{"1", "2", "3"}},
		{"93600+60x2", []string{"93600", "93660", "93720"}},
		{"5-2x3", []string{"5", "3", "1", "-1"}},
		{"0x2", []string{"0", "0", "0"}},
		{"-1x1 1e3", []string{"-1", "-1", "1000"}},
		{"1e-1+1e-1x1", []string{"0.1", "0.2"}},
		{"_ 1 _x2 stale", []string{"_", "1", "_", "_", "stale"}},
	}
	for _, tc := range tests {
		t.Run(tc.values, func(t *testing.T) {
			ns, err := parseSeries(inputSeries{Series: `m{a="x", b="y"}`, Values: tc.values})
			if err != nil {
				t.Fatal(err)
			}
			if ns.name != "m" || ns.labels["a"] != "x" || ns.labels["b"] != "y" || len(ns.labels) != 2 {
				t.Errorf("series = %s %v, want m {a=x, b=y}", ns.name, ns.labels)
			}
			var got []string
			for _, p := range ns.points {
				switch {
				case p.missing:
					got = append(got, "_")
				case isStale(p.v):
					got = append(got, "stale")
				default:
					got = append(got, strconv.FormatFloat(p.v, 'g', -1, 64))
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("points = %v, want %v", got, tc.want)
			}
		})
	}
}
