package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const dashboardPath = "../../deploy/grafana/candlekeep.json"

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	SchemaVersion int `json:"schemaVersion"`
	UID           string
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashPanel `json:"panels"`
}

type dashPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *dashSource              `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []dashTarget             `json:"targets"`
}

type dashSource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashTarget struct {
	Datasource *dashSource `json:"datasource"`
	Expr       string      `json:"expr"`
	RefID      string      `json:"refId"`
	Instant    bool        `json:"instant"`
}

// panelQuery is one target of one panel, with Grafana's variables
// substituted as a dashboard showing the last hour would.
type panelQuery struct {
	Panel, RefID, Expr string
	Instant            bool
}

func (q panelQuery) String() string { return fmt.Sprintf("%q %s: %s", q.Panel, q.RefID, q.Expr) }

// grafanaVars are Grafana's built-in interval variables as a dashboard over
// the last hour with 15s points resolves them.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "${__rate_interval}", "1m",
	"$__interval", "15s", "${__interval}", "15s", "$__range", "1h", "${__range}", "1h")

func loadDashboard(t testing.TB) (dashboard, []panelQuery) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []panelQuery
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, panelQuery{Panel: p.Title, RefID: tg.RefID, Expr: grafanaVars.Replace(tg.Expr), Instant: tg.Instant})
		}
	}
	return d, qs
}

var metricNameRE = regexp.MustCompile(`\bcandlekeep_[a-z_]+`)

// The dashboard is importable and provisionable as shipped: one Prometheus
// datasource variable used by every panel and query, the rows the operator
// expects, panels on the 24-column grid without overlap, exactly the metrics
// the monitor serves (docs/monitoring.md's table), and every query parses as
// PromQL (promtool check rules over them as recording rules: promtool has
// no parse-only command).
func TestGrafanaDashboard(t *testing.T) {
	d, queries := loadDashboard(t)
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want a Grafana 10/11 dashboard (~39)", d.SchemaVersion)
	}
	if len(d.Templating.List) != 1 || d.Templating.List[0].Name != "DS_PROMETHEUS" ||
		d.Templating.List[0].Type != "datasource" || d.Templating.List[0].Query != "prometheus" {
		t.Errorf("templating = %+v, want one datasource variable DS_PROMETHEUS of type prometheus", d.Templating.List)
	}

	var rows []string
	checks := map[string]bool{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range d.Panels {
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at (%d,%d)", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${DS_PROMETHEUS}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${DS_PROMETHEUS}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${DS_PROMETHEUS}" {
				t.Errorf("panel %q %s: target datasource %+v, want ${DS_PROMETHEUS}", p.Title, tg.RefID, tg.Datasource)
			}
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %+v needs an expr and a unique refId", p.Title, tg)
			}
			refs[tg.RefID] = true
			if m := regexp.MustCompile(`check="([a-z]+)"`).FindStringSubmatch(tg.Expr); m != nil && p.Type == "stat" {
				checks[m[1]] = true
			}
		}
	}
	if want := []string{"Health", "Freshness", "Sync", "Exchange", "Pipeline", "Storage", "Backup"}; !slices.Equal(rows, want) {
		t.Errorf("rows %q, want %q", rows, want)
	}
	for _, c := range []string{"freshness", "coverage", "integrity", "size", "backup", "activity"} {
		if !checks[c] {
			t.Errorf("no stat panel for the %s health check", c)
		}
	}

	// Only metrics the monitor serves: the table in docs/monitoring.md.
	doc, err := os.ReadFile("../../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `candlekeep_") {
			for _, m := range metricNameRE.FindAllString(strings.SplitN(line, "|", 3)[1], -1) {
				documented[m] = true
			}
		}
	}
	used := map[string]bool{}
	for _, q := range queries {
		for _, m := range metricNameRE.FindAllString(q.Expr, -1) {
			m = strings.TrimSuffix(m, "_bucket")
			used[m] = true
			if !documented[m] {
				t.Errorf("%s: %s is not in docs/monitoring.md's metric table", q, m)
			}
		}
	}
	for m := range documented {
		if !used[m] {
			t.Errorf("%s (docs/monitoring.md) is on no panel of the dashboard", m)
		}
	}

	// Every query parses: each becomes a recording rule for promtool.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: apt-get install prometheus (.ci/run does)")
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, q := range queries {
		expr, _ := json.Marshal(q.Expr) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, expr)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("SUCCESS: %d rules found", len(queries))) {
		t.Fatalf("promtool check rules over the dashboard's %d queries: %v\n%s", len(queries), err, out)
	}
}
