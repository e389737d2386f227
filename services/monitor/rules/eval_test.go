package rules

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// fakeQuerier answers from fixed gauges and increases at a set time.
type fakeQuerier struct {
	now      time.Time
	instant  map[string][]Sample
	increase func(metric string, window time.Duration) []Sample
}

func (q fakeQuerier) Now() time.Time                 { return q.now }
func (q fakeQuerier) Instant(metric string) []Sample { return q.instant[metric] }
func (q fakeQuerier) Increase(metric string, window time.Duration) []Sample {
	if q.increase == nil {
		return nil
	}
	return q.increase(metric, window)
}

// alertsString writes alerts compactly: rule{labels} state value active_at fired_at
// (times as offsets from t0).
func alertsString(as []Alert) string {
	var parts []string
	for _, a := range as {
		s := fmt.Sprintf("%s%s %s %v active=%v", a.Rule, labelsString(a.Labels), a.State, a.Value, a.ActiveAt.Sub(t0))
		if !a.FiredAt.IsZero() {
			s += fmt.Sprintf(" fired=%v", a.FiredAt.Sub(t0))
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func downRule(forD time.Duration) Rule {
	return Rule{Name: "Down", Severity: "critical", For: forD, Eval: func(q Querier) []Sample {
		return filter(q.Instant("up"), func(v float64) bool { return v == 0 })
	}}
}

// TestEvaluatorLifecycle: an alert is pending from the first evaluation its
// condition holds, fires once it has held for For, and is gone at the
// first evaluation it does not; For 0 fires at once.
func TestEvaluatorLifecycle(t *testing.T) {
	hot := Rule{Name: "Hot", Severity: "info", Eval: func(q Querier) []Sample {
		return filter(q.Instant("temp"), func(v float64) bool { return v > 90 })
	}}
	ev := NewEvaluator([]Rule{downRule(2 * time.Minute), hot})
	steps := []struct {
		at   time.Duration
		up   map[string]float64 // service → up
		temp float64
		want string
	}{
		{0, map[string]float64{"writer": 1, "fetcher": 1}, 20, ``},
		{1 * time.Minute, map[string]float64{"writer": 0, "fetcher": 1}, 95,
			`Down{service="writer"} pending 0 active=1m0s; Hot{} firing 95 active=1m0s fired=1m0s`},
		{2 * time.Minute, map[string]float64{"writer": 0, "fetcher": 0}, 96,
			`Down{service="fetcher"} pending 0 active=2m0s; Down{service="writer"} pending 0 active=1m0s; Hot{} firing 96 active=1m0s fired=1m0s`},
		{3 * time.Minute, map[string]float64{"writer": 0, "fetcher": 0}, 20,
			`Down{service="fetcher"} pending 0 active=2m0s; Down{service="writer"} firing 0 active=1m0s fired=3m0s`},
		{4 * time.Minute, map[string]float64{"writer": 1, "fetcher": 0}, 20,
			`Down{service="fetcher"} firing 0 active=2m0s fired=4m0s`},
		{5 * time.Minute, map[string]float64{"writer": 0, "fetcher": 1}, 20,
			`Down{service="writer"} pending 0 active=5m0s`},
	}
	for _, st := range steps {
		var up []Sample
		for s, v := range st.up {
			up = append(up, Sample{Labels: Labels{"service": s}, Value: v})
		}
		got := ev.Eval(fakeQuerier{now: t0.Add(st.at), instant: map[string][]Sample{
			"up": up, "temp": {{Labels: Labels{}, Value: st.temp}},
		}})
		if s := alertsString(got); s != st.want {
			t.Errorf("at %v: alerts\n  %s\nwant\n  %s", st.at, s, st.want)
		}
	}
}

// TestEvaluatorRestore: restored alerts keep their ActiveAt (a pending one
// fires on time after a restart) and vanish if the condition no longer
// holds.
func TestEvaluatorRestore(t *testing.T) {
	ev := NewEvaluator([]Rule{downRule(2 * time.Minute)})
	ev.Restore([]Alert{
		{Rule: "Down", Labels: Labels{"service": "writer"}, State: Pending, ActiveAt: t0},
		{Rule: "Down", Labels: Labels{"service": "fetcher"}, State: Firing, ActiveAt: t0.Add(-time.Hour), FiredAt: t0.Add(-58 * time.Minute)},
		{Rule: "Gone", Labels: Labels{}, State: Firing, ActiveAt: t0},
	})
	q := fakeQuerier{now: t0.Add(2 * time.Minute), instant: map[string][]Sample{
		"up": {{Labels: Labels{"service": "writer"}, Value: 0}, {Labels: Labels{"service": "backup"}, Value: 0}},
	}}
	want := `Down{service="backup"} pending 0 active=2m0s; Down{service="writer"} firing 0 active=0s fired=2m0s`
	if got := alertsString(ev.Eval(q)); got != want {
		t.Errorf("after Restore: alerts\n  %s\nwant\n  %s", got, want)
	}
}

// TestEvaluatorTimeScale: at scale 0.01 a 2 min For is 1.2 s and a 1 h
// window 36 s, over a real History.
func TestEvaluatorTimeScale(t *testing.T) {
	rs := []Rule{downRule(2 * time.Minute), All()[2]} // CandlekeepSyncTimeout: increase(…[1h]) > 0
	ev := NewEvaluator(rs)
	ev.SetTimeScale(0.01)
	h := NewHistory(MinRetention(rs, 0.01))
	var (
		fired         []string
		timeoutActive []int // seconds
	)
	for i := range 41 { // a scrape and an evaluation a second; one sync timeout between 1 s and 2 s
		at := t0.Add(time.Duration(i) * time.Second)
		timeouts := 0.0
		if i >= 2 {
			timeouts = 1
		}
		h.Append(at, []*dto.MetricFamily{gauge("up", 0), counter("candlekeep_sync_timeouts_total", timeouts)})
		for _, a := range ev.Eval(h.At(at)) {
			if a.State == Firing && a.FiredAt.Equal(at) {
				fired = append(fired, fmt.Sprintf("%s@%v", a.Rule, at.Sub(t0)))
			}
			if a.Rule == "CandlekeepSyncTimeout" {
				timeoutActive = append(timeoutActive, i)
			}
		}
	}
	// Down: For 1.2 s, active at 0 s: fires at the 2 s evaluation.
	// SyncTimeout: the 0→1 step between the 1 s and 2 s samples is in the
	// 36 s window (t−36 s, t] from 2 s to 36 s.
	if got := strings.Join(fired, " "); got != "Down@2s CandlekeepSyncTimeout@2s" {
		t.Errorf("fired %s, want Down@2s CandlekeepSyncTimeout@2s", got)
	}
	if n := len(timeoutActive); n != 35 || timeoutActive[0] != 2 || timeoutActive[n-1] != 36 {
		t.Errorf("CandlekeepSyncTimeout active at seconds %v, want 2 to 36", timeoutActive)
	}
}

// The alerts package finds the time scale knob by this method set.
var _ interface{ SetTimeScale(f float64) } = (*Evaluator)(nil)

// TestTimeScaleValidation: only a finite number above 0 scales time; any
// other leaves the scale as it was.
func TestTimeScaleValidation(t *testing.T) {
	for _, f := range []float64{0.01, 1, 60} {
		if err := ValidateTimeScale(f); err != nil {
			t.Errorf("ValidateTimeScale(%v) = %v, want nil", f, err)
		}
	}
	for _, f := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		if err := ValidateTimeScale(f); err == nil || !strings.Contains(err.Error(), "rule time scale") {
			t.Errorf("ValidateTimeScale(%v) = %v, want an error naming the rule time scale", f, err)
		}
	}
	// For 1 min at scale 0.5 fires after 30 s; a bad scale set after it
	// changes nothing.
	ev := NewEvaluator([]Rule{downRule(time.Minute)})
	ev.SetTimeScale(0.5)
	ev.SetTimeScale(-1)
	down := map[string][]Sample{"up": {{Labels: Labels{}, Value: 0}}}
	ev.Eval(fakeQuerier{now: t0, instant: down})
	if got := alertsString(ev.Eval(fakeQuerier{now: t0.Add(30 * time.Second), instant: down})); got != `Down{} firing 0 active=0s fired=30s` {
		t.Errorf("at scale 0.5: %s, want Down firing after 30 s", got)
	}
}
