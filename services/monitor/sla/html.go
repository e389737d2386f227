package sla

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"
)

// WriteHTML writes r as one self-contained page an operator can attach to a
// monthly report: inline CSS and script, no external link, the figures as
// tables and the per-day heatmap (rows: pairs, columns: days) drawn by the
// script from the report embedded as JSON. The script sets document.title
// to "rendered" when it is done and shows any error in #errors.
func WriteHTML(w io.Writer, r Report) error {
	data, err := json.Marshal(r) // escapes <, > and &: safe inside <script>
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return page.Execute(w, struct {
		R     Report
		JSON  template.JS
		Title string
	}{r, template.JS(data), fmt.Sprintf("SLA audit %s .. %s", r.From.Format("2006-01-02"), r.To.Format("2006-01-02"))})
}

var page = template.Must(template.New("sla").Funcs(template.FuncMap{
	"time":     func(t time.Time) string { return t.Format(time.RFC3339) },
	"upper":    func(s Status) string { return strings.ToUpper(string(s)) },
	"class":    func(s Status) string { return strings.ReplaceAll(string(s), " ", "-") },
	"duration": func(s float64) string { return Duration(secs(s)) },
	"alertEnd": AlertEnd,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; text-align: left; border-bottom: 1px solid #ddd; }
.met { color: #17692c; font-weight: bold; }
.missed { color: #b3261e; font-weight: bold; }
.not-measured { color: #666; font-weight: bold; }
#heatmap td.cell { width: 14px; height: 14px; padding: 0; border: 1px solid #fff; }
#heatmap th { font-weight: normal; font-size: 11px; white-space: nowrap; }
#heatmap th.day { writing-mode: vertical-rl; transform: rotate(180deg); }
.fresh { background: #4caf50; } .stale { background: #e53935; } .nodata { background: #bdbdbd; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
#errors { color: #b3261e; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p>Window {{time .R.From}} .. {{time .R.To}}{{if not .R.HistoryStart.IsZero}}; freshness history from {{time .R.HistoryStart}}{{end}}.</p>
<div id="errors"></div>
<h2>Targets</h2>
<table id="targets">
<tr><th>Target</th><th>Status</th><th>Figure</th><th>Held to</th><th>Note</th></tr>
{{range .R.Targets}}<tr><td>{{.Name}}</td><td class="{{class .Status}}">{{upper .Status}}</td><td>{{.Figure}}</td><td>{{.Target}}</td><td>{{.Note}}</td></tr>
{{end}}</table>
{{if .R.Notes}}<h2>Notes</h2><ul>{{range .R.Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}
<h2>Freshness per pair and day</h2>
<p class="legend"><span class="fresh"></span>fresh<span class="stale"></span>stale<span class="nodata"></span>no data</p>
<table id="heatmap"></table>
<h2>Per day</h2>
<table id="days"><tr><th>Day</th><th>Fresh</th><th>Stale</th><th>No data</th></tr></table>
<h2>Sync runs</h2>
<table>
<tr><td>Runs finished / timed out</td><td>{{.R.Sync.Runs}} / {{.R.Sync.Timeouts}}</td></tr>
<tr><td>Duration p50 / p99 / max</td><td>{{duration .R.Sync.P50Seconds}} / {{duration .R.Sync.P99Seconds}} / {{duration .R.Sync.MaxSeconds}}</td></tr>
<tr><td>Pairs ok per run: min / mean / last</td><td>{{.R.Sync.PairsOKMin}} / {{printf "%.2f" .R.Sync.PairsOKMean}} / {{.R.Sync.PairsOKLast}} of {{.R.Sync.PairsTotalLast}}</td></tr>
<tr><td>Rate-limit hits: total / max in an hour / mean per hour</td><td>{{.R.RateLimit.Hits}} / {{.R.RateLimit.MaxPerHour}} / {{printf "%.3f" .R.RateLimit.MeanPerHour}}</td></tr>
<tr><td>Backups / worst age</td><td>{{.R.Backups.Count}} / {{duration .R.Backups.WorstAgeSeconds}}</td></tr>
<tr><td>Restores / drills (failed)</td><td>{{.R.Recovery.Restores}} / {{.R.Recovery.Drills}} ({{.R.Recovery.DrillsFailed}})</td></tr>
</table>
<h2>Alerts</h2>
{{if .R.Alerts}}<table id="alerts">
<tr><th>Alert</th><th>Severity</th><th>Start</th><th>End</th><th>Duration</th><th>Summary</th></tr>
{{range .R.Alerts}}<tr><td>{{.Alert}}</td><td>{{.Severity}}</td><td>{{time .Start}}</td><td>{{alertEnd .}}</td><td>{{duration .DurationSeconds}}</td><td>{{.Summary}}</td></tr>
{{end}}</table>{{else}}<p>No alert fired in the window.</p>{{end}}
<script>
(function () {
  try {
    var r = {{.JSON}};
    var heat = document.getElementById("heatmap");
    var head = heat.insertRow();
    head.appendChild(document.createElement("th"));
    r.days.forEach(function (d) {
      var th = document.createElement("th");
      th.className = "day";
      th.textContent = d.date;
      head.appendChild(th);
    });
    r.pairs.forEach(function (p, i) {
      var row = heat.insertRow();
      var th = document.createElement("th");
      th.textContent = p;
      row.appendChild(th);
      r.days.forEach(function (d) {
        var td = row.insertCell();
        var state = d.pairs[i];
        td.className = "cell " + state;
        td.title = p + " " + d.date + ": " + state;
      });
    });
    var days = document.getElementById("days");
    var pct = function (x) { return (x * 100).toFixed(1) + " %"; };
    r.days.forEach(function (d) {
      var row = days.insertRow();
      [d.date, pct(d.fresh), pct(d.stale), pct(d.nodata)].forEach(function (v) {
        row.insertCell().textContent = v;
      });
    });
    document.title = "rendered";
  } catch (e) {
    document.getElementById("errors").textContent = "The heatmap could not be drawn: " + e;
  }
})();
</script>
</body>
</html>
`))
