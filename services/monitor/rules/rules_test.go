package rules

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const deployDir = "../../../deploy/prometheus"

// TestRulesEqualRulesYML: rules.All() is rules.yml rule by rule: name,
// severity, for, expr and the summary and runbook annotations.
func TestRulesEqualRulesYML(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("parse rules.yml: %v", err)
	}
	if len(file.Groups) != 1 {
		t.Fatalf("rules.yml has %d groups, want 1", len(file.Groups))
	}
	yml, all := file.Groups[0].Rules, All()
	if len(yml) != len(all) || len(all) != 11 {
		t.Fatalf("rules.yml has %d rules, All() %d, want 11 each", len(yml), len(all))
	}
	for i, y := range yml {
		r := all[i]
		t.Run(y.Alert, func(t *testing.T) {
			var forD time.Duration
			if y.For != "" {
				if forD, err = parsePromDuration(y.For); err != nil {
					t.Fatal(err)
				}
			}
			checks := []struct{ what, got, want string }{
				{"name", r.Name, y.Alert},
				{"severity", r.Severity, y.Labels["severity"]},
				{"for", r.For.String(), forD.String()},
				{"expr", r.Expr, y.Expr},
				{"summary", r.Summary, y.Annotations["summary"]},
				{"runbook", r.Runbook, y.Annotations["runbook"]},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %q, rules.yml has %q", c.what, c.got, c.want)
				}
			}
			if len(y.Labels) != 1 || len(y.Annotations) != 2 {
				t.Errorf("rules.yml gives labels %v and annotations %v; All() has only severity, summary and runbook", y.Labels, y.Annotations)
			}
			// Window must cover the ranges Expr takes increase() over, for
			// MinRetention.
			if strings.Contains(y.Expr, "[1h]") != (r.Window == time.Hour) {
				t.Errorf("Window = %v for expr %q", r.Window, y.Expr)
			}
		})
	}
}

// TestRulesAgreeWithPromtoolTests runs every promtool test file of
// deploy/prometheus/tests through a History and an Evaluator of All(): at
// each evaluation step up to each alert_rule_test's eval_time, as promtool
// does, and then the firing alerts of the rule under test must be exactly
// the test's exp_alerts: their labels, and their summaries as
// RenderSummary expands them from the alerts' values. The Go rules and rules.yml so agree on the same
// inputs (promtool itself checks rules.yml against them in
// cmd/candlekeep's TestPrometheusRulesAndAlertmanagerConfig).
func TestRulesAgreeWithPromtoolTests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(deployDir, "tests", "*.yml"))
	if err != nil || len(files) < 11 {
		t.Fatalf("want a promtool test file per rule, found %d (%v)", len(files), err)
	}
	rs := All()
	byName := map[string]Rule{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	for _, path := range files {
		f := readPromtoolFile(t, path)
		for gi, g := range f.Tests {
			if len(g.AlertRuleTests) == 0 {
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", filepath.Base(path), gi), func(t *testing.T) {
				step := time.Duration(f.EvaluationInterval)
				fd := &feeder{h: NewHistory(24 * time.Hour), series: loadSeries(t, g.InputSeries), interval: time.Duration(g.Interval)}
				ev := NewEvaluator(rs)
				tests := slices.Clone(g.AlertRuleTests)
				slices.SortStableFunc(tests, func(a, b alertRuleTest) int { return int(a.EvalTime - b.EvalTime) })
				var now time.Duration
				var alerts []Alert
				for _, at := range tests {
					evalAt := time.Duration(at.EvalTime)
					if evalAt%step != 0 {
						t.Fatalf("eval_time %v is not a multiple of evaluation_interval %v", evalAt, step)
					}
					for ; now <= evalAt; now += step {
						fd.upTo(now)
						alerts = ev.Eval(fd.h.At(time.UnixMilli(0).Add(now)))
					}
					r, ok := byName[at.Alertname]
					if !ok {
						t.Fatalf("eval_time %v: no rule %s", evalAt, at.Alertname)
					}
					var got, want []string
					for _, a := range alerts {
						if a.Rule == r.Name && a.State == Firing {
							l := withLabel(withLabel(a.Labels, "alertname", r.Name), "severity", r.Severity)
							summary, err := r.RenderSummary(a.Labels, a.Value)
							if err != nil {
								t.Fatal(err)
							}
							got = append(got, labelsString(l)+" summary="+summary)
						}
					}
					for _, e := range at.ExpAlerts {
						l := withLabel(e.ExpLabels, "alertname", at.Alertname)
						want = append(want, labelsString(l)+" summary="+e.ExpAnnotations["summary"])
						if rb := e.ExpAnnotations["runbook"]; rb != r.Runbook {
							t.Errorf("eval_time %v: exp runbook %q, rule has %q", evalAt, rb, r.Runbook)
						}
					}
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Errorf("eval_time %v: %s firing %v, promtool test expects %v", evalAt, r.Name, got, want)
					}
				}
			})
		}
	}
}

// labelsString writes a label set as PromQL does: {a="x", b="y"}.
func labelsString(l Labels) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+`"`+l[k]+`"`)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
