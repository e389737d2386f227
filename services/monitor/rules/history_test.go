package rules

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// increaseCases are increase() results computed by hand from PromQL's
// definition, over series in promtool's notation, one sample a minute from
// time 0. TestIncreaseMatchesPromQL checks History against them and asks
// promtool to confirm each. The evaluation times fall between samples:
// Prometheus 2 (promtool 2.42 in Debian) takes a range as [t−w, t],
// Prometheus 3 and History as (t−w, t], which differ only for a sample
// exactly at t−w.
// extrapolate is PromQL's increase() from its parts: the increase between
// the first and last sample in the range, the time between them, and the
// time extrapolated before and after (seconds), multiplied in PromQL's
// order, so the float result is the same to the last bit.
func extrapolate(increase, sampled, toStart, toEnd float64) []float64 {
	return []float64{increase * ((sampled + toStart + toEnd) / sampled)}
}

var increaseCases = []struct {
	name   string
	values string
	window string
	at     string
	want   []float64 // none: no result
}{
	// 60 samples 41..100m, 410..1000: 590 over 59 min, extrapolated 30 s to
	// each edge: 590 × 3600/3540.
	{"steady", "0+10x120", "1h", "100m30s", extrapolate(590, 3540, 30, 30)},
	// Reset after 600 (at 60m) to 10 (at 61m): 41..60m is 410..600,
	// 61..100m is 10..400, so 400 − 410 + 600 = 590.
	{"counter reset", "0+10x60 10+10x59", "1h", "100m30s", extrapolate(590, 3540, 30, 30)},
	// A staleness marker at 61m is no sample: 41..60m and 62..100m,
	// 410..1000 over 59 min.
	{"stale marker skipped", "0+10x60 stale 620+10x38", "1h", "100m30s", extrapolate(590, 3540, 30, 30)},
	// Born at 80m from 0: 21 samples, 0..200 over 20 min; the start is
	// further than 1.1 spacings, and the zero point (0 s before the first
	// sample) is nearer than half a spacing: 200 × (1200+0+30)/1200.
	{"younger than window from zero", "_x80 0+10x40", "1h", "100m30s", extrapolate(200, 1200, 0, 30)},
	// Born at 80m at 100: the zero point is 600 s back, so half a spacing
	// (30 s) is used: 200 × (1200+30+30)/1200.
	{"younger than window", "_x80 100+10x40", "1h", "100m30s", extrapolate(200, 1200, 30, 30)},
	// Born at 70m at 30: zero point 180 s back, half a spacing wins:
	// 300 × (1800+30+30)/1800.
	{"younger than window zero point far", "_x70 30+10x50", "1h", "100m30s", extrapolate(300, 1800, 30, 30)},
	// Born at 41m at 2: the window start is 30 s back but the zero point
	// only 3540 × 2/590 = 12 s: 590 × (3540+12+30)/3540.
	{"zero point before window start", "_x41 2+10x59", "1h", "100m30s", extrapolate(590, 3540, 12, 30)},
	// Ended at 90m: 50 samples 410..900 over 49 min, half a spacing at the
	// end: 490 × (2940+30+30)/2940.
	{"ended within window", "0+10x90", "1h", "100m30s", extrapolate(490, 2940, 30, 30)},
	// 10 samples 91..100m: 90 over 9 min, to a 10 min window.
	{"short window", "0+10x120", "10m", "100m30s", extrapolate(90, 540, 30, 30)},
	{"flat", "7x120", "1h", "100m30s", []float64{0}},
	{"one sample", "_x100 5", "1h", "100m30s", nil},
	{"no sample in window", "0+10x30", "1h", "100m30s", nil},
}

func TestIncreaseMatchesPromQL(t *testing.T) {
	for _, tc := range increaseCases {
		t.Run(tc.name, func(t *testing.T) {
			window, err := parsePromDuration(tc.window)
			if err != nil {
				t.Fatal(err)
			}
			at, err := parsePromDuration(tc.at)
			if err != nil {
				t.Fatal(err)
			}
			fd := &feeder{h: NewHistory(24 * time.Hour), interval: time.Minute,
				series: loadSeries(t, []inputSeries{{Series: `c{case="x"}`, Values: tc.values}})}
			fd.upTo(at)
			got := fd.h.At(time.UnixMilli(0).Add(at)).Increase("c", window)
			if len(got) != len(tc.want) {
				t.Fatalf("increase(c[%s]) at %s = %v, want %v", tc.window, tc.at, got, tc.want)
			}
			for i, s := range got {
				if s.Value != tc.want[i] || len(s.Labels) != 1 || s.Labels["case"] != "x" {
					t.Errorf("increase(c[%s]) at %s = %v %v, want {case=x} %v", tc.window, tc.at, s.Labels, s.Value, tc.want[i])
				}
			}
		})
	}

	// The same cases in a promtool test file: promtool computes the same
	// numbers to the last bit.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not on PATH (CI installs it): the hand-computed values are not confirmed by Prometheus")
	}
	var b strings.Builder
	b.WriteString("rule_files: []\nevaluation_interval: 1m\ntests:\n")
	for _, tc := range increaseCases {
		fmt.Fprintf(&b, "  - interval: 1m\n    input_series:\n      - series: 'c{case=\"x\"}'\n        values: '%s'\n", tc.values)
		fmt.Fprintf(&b, "    promql_expr_test:\n      - expr: 'increase(c[%s])'\n        eval_time: %s\n        exp_samples:", tc.window, tc.at)
		if len(tc.want) == 0 {
			b.WriteString(" []\n")
			continue
		}
		b.WriteString("\n")
		for _, v := range tc.want {
			fmt.Fprintf(&b, "          - labels: '{case=\"x\"}'\n            value: %s\n", strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	path := filepath.Join(t.TempDir(), "increase_test.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool test rules disagrees with the hand-computed increases: %v\n%s\n%s", err, out, b.String())
	}
}

func gauge(name string, v float64, labels ...string) *dto.MetricFamily {
	return family(name, dto.MetricType_GAUGE, &dto.Metric{Label: pairs(labels), Gauge: &dto.Gauge{Value: proto.Float64(v)}})
}

func counter(name string, v float64, labels ...string) *dto.MetricFamily {
	return family(name, dto.MetricType_COUNTER, &dto.Metric{Label: pairs(labels), Counter: &dto.Counter{Value: proto.Float64(v)}})
}

func family(name string, typ dto.MetricType, ms ...*dto.Metric) *dto.MetricFamily {
	return &dto.MetricFamily{Name: proto.String(name), Type: typ.Enum(), Metric: ms}
}

func pairs(kv []string) []*dto.LabelPair {
	var out []*dto.LabelPair
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: proto.String(kv[i]), Value: proto.String(kv[i+1])})
	}
	return out
}

func samplesString(ss []Sample) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, labelsString(s.Labels)+" "+strconv.FormatFloat(s.Value, 'g', -1, 64))
	}
	return strings.Join(parts, "; ")
}

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// TestHistoryAppend: gathered families become series as Prometheus would
// scrape them, and an instant selector sees what Prometheus' would.
func TestHistoryAppend(t *testing.T) {
	h := NewHistory(time.Hour + Lookback)
	hist := &dto.Metric{Histogram: &dto.Histogram{
		SampleCount: proto.Uint64(3), SampleSum: proto.Float64(42.5),
		Bucket: []*dto.Bucket{
			{UpperBound: proto.Float64(1), CumulativeCount: proto.Uint64(1)},
			{UpperBound: proto.Float64(1800), CumulativeCount: proto.Uint64(2)},
		},
	}}
	summ := &dto.Metric{Label: pairs([]string{"fetcher", "f1"}), Summary: &dto.Summary{
		SampleCount: proto.Uint64(4), SampleSum: proto.Float64(2),
		Quantile: []*dto.Quantile{{Quantile: proto.Float64(0.5), Value: proto.Float64(0.25)}},
	}}
	h.Append(t0, []*dto.MetricFamily{
		gauge("candlekeep_service_up", 1, "service", "writer"),
		gauge("candlekeep_service_up", 0, "service", "fetcher", "zone", ""),
		counter("candlekeep_sync_timeouts_total", 2),
		family("candlekeep_sync_duration_seconds", dto.MetricType_HISTOGRAM, hist),
		family("candlekeep_fetch_seconds", dto.MetricType_SUMMARY, summ),
		family("candlekeep_untyped", dto.MetricType_UNTYPED, &dto.Metric{Untyped: &dto.Untyped{Value: proto.Float64(7)}}),
	})
	q := h.At(t0)
	tests := []struct{ metric, want string }{
		{"candlekeep_service_up", `{service="fetcher"} 0; {service="writer"} 1`},
		{"candlekeep_sync_timeouts_total", `{} 2`},
		{"candlekeep_sync_duration_seconds_bucket", `{le="+Inf"} 3; {le="1"} 1; {le="1800"} 2`},
		{"candlekeep_sync_duration_seconds_sum", `{} 42.5`},
		{"candlekeep_sync_duration_seconds_count", `{} 3`},
		{"candlekeep_fetch_seconds", `{fetcher="f1", quantile="0.5"} 0.25`},
		{"candlekeep_fetch_seconds_sum", `{fetcher="f1"} 2`},
		{"candlekeep_fetch_seconds_count", `{fetcher="f1"} 4`},
		{"candlekeep_untyped", `{} 7`},
		{"candlekeep_nothing", ``},
	}
	for _, tc := range tests {
		if got := samplesString(q.Instant(tc.metric)); got != tc.want {
			t.Errorf("Instant(%s) = %s, want %s", tc.metric, got, tc.want)
		}
	}
	if !q.Now().Equal(t0) {
		t.Errorf("Now() = %v, want %v", q.Now(), t0)
	}
	// Before the first scrape nothing is seen; 5 min after the scrape the
	// lookback has passed.
	for _, at := range []time.Time{t0.Add(-time.Second), t0.Add(Lookback)} {
		if got := h.At(at).Instant("candlekeep_service_up"); len(got) != 0 {
			t.Errorf("Instant at %v = %s, want nothing", at, samplesString(got))
		}
	}
	if got := samplesString(h.At(t0.Add(Lookback - time.Millisecond)).Instant("candlekeep_service_up")); got != `{service="fetcher"} 0; {service="writer"} 1` {
		t.Errorf("Instant just within the lookback = %s", got)
	}
}

// TestHistoryStaleness: a series missing from a scrape is stale at once
// (Prometheus writes a staleness marker), and comes back when scraped
// again; increase() skips the marker.
func TestHistoryStaleness(t *testing.T) {
	h := NewHistory(time.Hour + Lookback)
	h.Append(t0, []*dto.MetricFamily{gauge("up", 1, "service", "writer"), gauge("up", 1, "service", "fetcher"), counter("c", 1)})
	h.Append(t0.Add(15*time.Second), []*dto.MetricFamily{gauge("up", 0, "service", "writer")})
	q := h.At(t0.Add(15 * time.Second))
	if got := samplesString(q.Instant("up")); got != `{service="writer"} 0` {
		t.Errorf("after the fetcher vanished: Instant(up) = %s, want the writer only", got)
	}
	if got := q.Instant("c"); len(got) != 0 {
		t.Errorf("vanished counter: Instant(c) = %s, want nothing", samplesString(got))
	}
	h.Append(t0.Add(30*time.Second), []*dto.MetricFamily{gauge("up", 1, "service", "fetcher"), counter("c", 3)})
	q = h.At(t0.Add(30 * time.Second))
	if got := samplesString(q.Instant("up")); got != `{service="fetcher"} 1` {
		t.Errorf("after the fetcher came back and the writer vanished: Instant(up) = %s", got)
	}
	// c: 1 at 0 s, stale at 15 s, 3 at 30 s: two samples 30 s apart over a
	// 1 min window, the start is 30 s back (< 1.1 × 30 s) but the zero point
	// only 15 s; the end is at the last sample: 2 × (30+15+0)/30 = 3.
	if got := samplesString(q.Increase("c", time.Minute)); got != `{} 3` {
		t.Errorf("Increase(c, 1m) = %s, want {} 3", got)
	}
}

// TestHistoryRetention: counters keep their samples for the retention,
// gauges only their newest; older samples and dead series are dropped;
// out-of-order samples are ignored.
func TestHistoryRetention(t *testing.T) {
	h := NewHistory(10 * time.Minute)
	for i := range 20 {
		at := t0.Add(time.Duration(i) * time.Minute)
		mfs := []*dto.MetricFamily{counter("c", float64(i)), gauge("g", float64(i))}
		if i < 5 {
			mfs = append(mfs, gauge("gone", 1))
		}
		h.Append(at, mfs)
	}
	h.Append(t0.Add(5*time.Minute), []*dto.MetricFamily{counter("c", 100), gauge("g", 100)}) // out of order
	h.mu.Lock()
	c, g := h.series["c"][labelsKey(Labels{})], h.series["g"][labelsKey(Labels{})]
	_, gone := h.series["gone"]
	cn, first, gn, gv := len(c.ts), time.UnixMilli(c.ts[0]).Sub(t0), len(g.ts), g.vs[0]
	h.mu.Unlock()
	if cn != 11 || first != 9*time.Minute {
		t.Errorf("counter keeps %d samples from %v, want 11 from 9m (10 min retention at 19m)", cn, first)
	}
	if gn != 1 || gv != 19 {
		t.Errorf("gauge keeps %d samples, newest %v; want 1, 19", gn, gv)
	}
	if gone {
		t.Errorf("a series stale for longer than the retention is still kept")
	}
	if got := samplesString(h.At(t0.Add(19 * time.Minute)).Instant("c")); got != `{} 19` {
		t.Errorf("Instant(c) = %s, want {} 19 (the out-of-order 100 ignored)", got)
	}
}

func TestMinRetention(t *testing.T) {
	if got := MinRetention(All(), 1); got != time.Hour+Lookback {
		t.Errorf("MinRetention(All(), 1) = %v, want 1h5m", got)
	}
	if got := MinRetention(All(), 0.01); got != 36*time.Second+Lookback {
		t.Errorf("MinRetention(All(), 0.01) = %v, want 5m36s", got)
	}
}

func TestStaleNaNIsPrometheus(t *testing.T) {
	// model/value.StaleNaN is 0x7ff0000000000002; an ordinary NaN is not
	// a staleness marker.
	if !isStale(staleNaN()) || isStale(math.NaN()) || isStale(0) {
		t.Error("isStale does not tell the staleness marker from other values")
	}
}

// BenchmarkHistoryAppend20000Counters fills a History as the brief's worst
// case does: 20,000 counter series scraped every 15 s for 1 h 5 min, and
// reports the heap it holds and the time of one scrape's Append.
func BenchmarkHistoryAppend20000Counters(b *testing.B) {
	const nSeries = 20000
	scrape := make([]*dto.MetricFamily, 0, nSeries/100)
	for f := range nSeries / 100 {
		mf := family(fmt.Sprintf("c%d_total", f), dto.MetricType_COUNTER)
		for s := range 100 {
			mf.Metric = append(mf.Metric, &dto.Metric{Label: pairs([]string{"symbol", fmt.Sprintf("S%d", s), "interval", "1m"}), Counter: &dto.Counter{Value: proto.Float64(0)}})
		}
		scrape = append(scrape, mf)
	}
	for range b.N {
		h := NewHistory(time.Hour + Lookback)
		steps := int((time.Hour + Lookback) / (15 * time.Second))
		start := time.Now()
		for i := range steps {
			for _, mf := range scrape {
				for _, m := range mf.Metric {
					*m.Counter.Value = float64(i)
				}
			}
			h.Append(t0.Add(time.Duration(i)*15*time.Second), scrape)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(steps), "ms/append")
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc)/1e6, "heapMB")
		if got := len(h.At(t0.Add(time.Duration(steps-1) * 15 * time.Second)).Instant("c0_total")); got != 100 {
			b.Fatalf("Instant(c0_total) has %d series, want 100", got)
		}
	}
}
