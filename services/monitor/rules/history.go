package rules

import (
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Lookback is how far back an instant selector looks for a series' newest
// sample, Prometheus' default --query.lookback-delta.
const Lookback = 5 * time.Minute

// staleNaNBits is the bit pattern of Prometheus' staleness marker
// (model/value.StaleNaN): a NaN written when a series vanishes from a
// scrape, so instant selectors stop returning it at once instead of for
// the 5 minutes of lookback.
const staleNaNBits uint64 = 0x7ff0000000000002

func staleNaN() float64 { return math.Float64frombits(staleNaNBits) }

func isStale(v float64) bool { return math.Float64bits(v) == staleNaNBits }

// History keeps the samples of every series gathered at each evaluation for
// a retention (long enough for the widest window a rule asks, 1 h), so the
// rules can be evaluated over it as Prometheus evaluates rules.yml over
// its TSDB.
//
// Only counters (and the _bucket/_sum/_count series of histograms and
// summaries, which are counters too) keep their samples for the retention:
// increase() is only asked of them. Gauges keep their newest sample, which
// is all an instant selector reads. A series costs two slices (timestamps
// and values): 20,000 counters scraped every 15 s, kept 1 h 5 min, hold
// about 100 MB (BenchmarkHistoryAppend20000Counters).
//
// History is safe for concurrent use.
type History struct {
	retention time.Duration

	mu     sync.Mutex
	series map[string]map[string]*series // metric name → labels key → series
}

// series is one time series' samples, oldest first, timestamps in Unix
// milliseconds as Prometheus keeps them.
type series struct {
	labels Labels
	keep   bool // keep every sample for the retention (counters), else only the newest
	seen   bool // in the Append under way
	ts     []int64
	vs     []float64
}

// NewHistory returns an empty History keeping samples for retention.
// Give at least the widest window a rule asks (times the rule time scale)
// plus Lookback: MinRetention does.
func NewHistory(retention time.Duration) *History {
	return &History{retention: retention, series: map[string]map[string]*series{}}
}

// MinRetention is the retention a History needs for rules: their widest
// Increase window, scaled, plus the lookback.
func MinRetention(rs []Rule, timeScale float64) time.Duration {
	var widest time.Duration
	for _, r := range rs {
		widest = max(widest, r.Window)
	}
	return time.Duration(float64(widest)*timeScale) + Lookback
}

// Append records the gathered metric families as samples at t (a scrape),
// and drops samples older than the retention. A series gathered before but
// missing now gets a staleness marker at t, as Prometheus' scrape loop
// writes one. A sample not newer than its series' newest is ignored, as
// Prometheus rejects out-of-order samples.
func (h *History) Append(t time.Time, mfs []*dto.MetricFamily) {
	ms := t.UnixMilli()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			lbls := make(Labels, len(m.GetLabel()))
			for _, lp := range m.GetLabel() {
				if lp.GetValue() != "" { // an empty label is no label, in PromQL
					lbls[lp.GetName()] = lp.GetValue()
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				h.add(name, lbls, ms, m.GetCounter().GetValue(), true)
			case dto.MetricType_GAUGE:
				h.add(name, lbls, ms, m.GetGauge().GetValue(), false)
			case dto.MetricType_UNTYPED:
				h.add(name, lbls, ms, m.GetUntyped().GetValue(), false)
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				hi := m.GetHistogram()
				inf := false
				for _, b := range hi.GetBucket() {
					if math.IsInf(b.GetUpperBound(), +1) {
						inf = true
					}
					h.add(name+"_bucket", withLabel(lbls, "le", formatBound(b.GetUpperBound())), ms, bucketCount(b), true)
				}
				if !inf { // the exposition formats add the +Inf bucket
					h.add(name+"_bucket", withLabel(lbls, "le", "+Inf"), ms, countOf(hi), true)
				}
				h.add(name+"_sum", lbls, ms, hi.GetSampleSum(), true)
				h.add(name+"_count", lbls, ms, countOf(hi), true)
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					h.add(name, withLabel(lbls, "quantile", formatBound(q.GetQuantile())), ms, q.GetValue(), false)
				}
				h.add(name+"_sum", lbls, ms, s.GetSampleSum(), true)
				h.add(name+"_count", lbls, ms, float64(s.GetSampleCount()), true)
			}
		}
	}
	for _, byKey := range h.series {
		for _, s := range byKey {
			if !s.seen && len(s.vs) > 0 && !isStale(s.vs[len(s.vs)-1]) {
				s.append(ms, staleNaN())
			}
			s.seen = false
		}
	}
	h.trim(ms)
}

func countOf(hi *dto.Histogram) float64 {
	if hi.SampleCountFloat != nil {
		return hi.GetSampleCountFloat()
	}
	return float64(hi.GetSampleCount())
}

func bucketCount(b *dto.Bucket) float64 {
	if b.CumulativeCountFloat != nil {
		return b.GetCumulativeCountFloat()
	}
	return float64(b.GetCumulativeCount())
}

// formatBound writes an le or quantile label value as the text exposition
// format does.
func formatBound(f float64) string {
	switch {
	case math.IsInf(f, +1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func withLabel(l Labels, k, v string) Labels {
	c := maps.Clone(l)
	c[k] = v
	return c
}

// add records one sample (v may be the staleness marker). The caller holds
// h.mu.
func (h *History) add(name string, lbls Labels, ms int64, v float64, keep bool) {
	byKey := h.series[name]
	if byKey == nil {
		byKey = map[string]*series{}
		h.series[name] = byKey
	}
	key := labelsKey(lbls)
	s := byKey[key]
	if s == nil {
		s = &series{labels: lbls, keep: keep}
		byKey[key] = s
	}
	s.seen = true
	if n := len(s.ts); n > 0 && ms <= s.ts[n-1] {
		return
	}
	s.append(ms, v)
}

func (s *series) append(ms int64, v float64) {
	if !s.keep && len(s.ts) > 0 {
		s.ts[0], s.vs[0] = ms, v
		return
	}
	if len(s.ts) == cap(s.ts) {
		// Grow by an eighth, not append's doubling: a counter's samples
		// settle at retention/interval, and a doubled array would be half
		// empty for good.
		n := len(s.ts) + len(s.ts)/8 + 4
		s.ts = append(make([]int64, 0, n), s.ts...)
		s.vs = append(make([]float64, 0, n), s.vs...)
	}
	s.ts = append(s.ts, ms)
	s.vs = append(s.vs, v)
}

// trim drops the samples older than the retention before ms, and the
// series left without any. The caller holds h.mu.
func (h *History) trim(ms int64) {
	oldest := ms - h.retention.Milliseconds()
	for name, byKey := range h.series {
		for key, s := range byKey {
			i := sort.Search(len(s.ts), func(i int) bool { return s.ts[i] >= oldest })
			if i == len(s.ts) {
				delete(byKey, key)
				continue
			}
			if i > 0 {
				n := copy(s.ts, s.ts[i:])
				copy(s.vs, s.vs[i:])
				s.ts, s.vs = s.ts[:n], s.vs[:n]
			}
		}
		if len(byKey) == 0 {
			delete(h.series, name)
		}
	}
}

// At is a Querier over the history at evaluation time t: the time of the
// latest Append, or later. (Earlier works for counters, but a gauge keeps
// only its newest sample, which a query of the past cannot see.)
func (h *History) At(t time.Time) Querier { return historyQuerier{h: h, t: t} }

type historyQuerier struct {
	h *History
	t time.Time
}

func (q historyQuerier) Now() time.Time { return q.t }

// Instant returns each series' newest sample in (t − Lookback, t], unless
// that sample is a staleness marker, as a PromQL instant vector selector
// does (Prometheus 3: the lookback window is open on the left).
func (q historyQuerier) Instant(metric string) []Sample {
	end := q.t.UnixMilli()
	start := end - Lookback.Milliseconds()
	q.h.mu.Lock()
	defer q.h.mu.Unlock()
	var out []Sample
	for _, s := range q.h.series[metric] {
		i := sort.Search(len(s.ts), func(i int) bool { return s.ts[i] > end }) - 1
		if i < 0 || s.ts[i] <= start || isStale(s.vs[i]) {
			continue
		}
		out = append(out, Sample{Labels: maps.Clone(s.labels), Value: s.vs[i]})
	}
	sortSamples(out)
	return out
}

// Increase returns increase(metric[window]) at t per series, over the
// samples in (t − window, t] without staleness markers; a series with fewer
// than two of them has none.
func (q historyQuerier) Increase(metric string, window time.Duration) []Sample {
	end := q.t.UnixMilli()
	start := end - window.Milliseconds()
	q.h.mu.Lock()
	defer q.h.mu.Unlock()
	var (
		out []Sample
		ts  []int64
		vs  []float64
	)
	for _, s := range q.h.series[metric] {
		ts, vs = ts[:0], vs[:0]
		i := sort.Search(len(s.ts), func(i int) bool { return s.ts[i] > start })
		for ; i < len(s.ts) && s.ts[i] <= end; i++ {
			if !isStale(s.vs[i]) {
				ts, vs = append(ts, s.ts[i]), append(vs, s.vs[i])
			}
		}
		v, ok := extrapolatedIncrease(ts, vs, start, end)
		if !ok {
			continue
		}
		out = append(out, Sample{Labels: maps.Clone(s.labels), Value: v})
	}
	sortSamples(out)
	return out
}

// extrapolatedIncrease is PromQL's increase() of one float counter series:
// ts (Unix ms) and vs are its samples in the range (start, end], oldest
// first. It is the float-sample path of extrapolatedRate in Prometheus'
// promql/functions.go (Apache License 2.0, © The Prometheus Authors), with
// isCounter true and isRate false, copied so the monitor's alerts agree
// with Prometheus' to the last bit.
func extrapolatedIncrease(ts []int64, vs []float64, start, end int64) (float64, bool) {
	// No sense in trying to compute a rate without at least two points.
	if len(vs) < 2 {
		return 0, false
	}
	numSamplesMinusOne := len(vs) - 1
	firstT, lastT := ts[0], ts[numSamplesMinusOne]
	result := vs[numSamplesMinusOne] - vs[0]
	// Handle counter resets: a drop means the counter restarted from 0, so
	// the value before the drop was gained too.
	for i := 1; i < len(vs); i++ {
		if vs[i] < vs[i-1] {
			result += vs[i-1]
		}
	}

	// Duration between first/last samples and boundary of range.
	durationToStart := float64(firstT-start) / 1000
	durationToEnd := float64(end-lastT) / 1000

	sampledInterval := float64(lastT-firstT) / 1000
	averageDurationBetweenSamples := sampledInterval / float64(numSamplesMinusOne)

	// Samples close enough to a boundary (up to 10 % more than the average
	// spacing) are extrapolated all the way to it; otherwise the series is
	// taken to start or end within the range, half a spacing beyond its
	// first or last sample.
	extrapolationThreshold := averageDurationBetweenSamples * 1.1
	if durationToStart >= extrapolationThreshold {
		durationToStart = averageDurationBetweenSamples / 2
	}
	// Counters cannot be negative. If we have any slope at all (i.e. result
	// went up), we can extrapolate the zero point of the counter. If the
	// duration to the zero point is shorter than the durationToStart, we
	// take the zero point as the start of the series, thereby avoiding
	// extrapolation to negative counter values.
	durationToZero := durationToStart
	if result > 0 && vs[0] >= 0 {
		durationToZero = sampledInterval * (vs[0] / result)
	}
	if durationToZero < durationToStart {
		durationToStart = durationToZero
	}
	if durationToEnd >= extrapolationThreshold {
		durationToEnd = averageDurationBetweenSamples / 2
	}

	factor := (sampledInterval + durationToStart + durationToEnd) / sampledInterval
	return result * factor, true
}

// labelsKey is a label set's identity: its pairs sorted by name.
func labelsKey(l Labels) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(l)) {
		b.WriteString(k)
		b.WriteByte(0xfe)
		b.WriteString(l[k])
		b.WriteByte(0xff)
	}
	return b.String()
}

// compareLabels orders label sets as Prometheus' labels.Compare does: pair
// by pair in name order, then the shorter first.
func compareLabels(a, b Labels) int {
	ka, kb := slices.Sorted(maps.Keys(a)), slices.Sorted(maps.Keys(b))
	for i := 0; i < len(ka) && i < len(kb); i++ {
		if c := strings.Compare(ka[i], kb[i]); c != 0 {
			return c
		}
		if c := strings.Compare(a[ka[i]], b[kb[i]]); c != 0 {
			return c
		}
	}
	return len(ka) - len(kb)
}

func sortSamples(ss []Sample) {
	slices.SortFunc(ss, func(a, b Sample) int { return compareLabels(a.Labels, b.Labels) })
}
