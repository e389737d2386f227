package alerts

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

func TestOptionsValidate(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	valid := func() Options {
		o := DefaultOptions()
		o.JS, o.Sender, o.Rules = js, &sender{}, []rules.Rule{staleRule(), serviceDownRule()}
		return o
	}
	cases := []struct {
		name string
		edit func(*Options)
		want string // "" for valid; else a substring of the error
	}{
		{"defaults", func(*Options) {}, ""},
		{"zero values take the defaults", func(o *Options) { o.RepeatInterval, o.Replicas, o.TimeScale = 0, 0, 0 }, ""},
		{"no rules", func(o *Options) { o.Rules = nil }, ""},
		{"no JS", func(o *Options) { o.JS = nil }, "JS is required"},
		{"no sender", func(o *Options) { o.Sender = nil }, "Sender is required"},
		{"negative repeat", func(o *Options) { o.RepeatInterval = -time.Second }, "repeat interval -1s: must be positive"},
		{"replicas", func(o *Options) { o.Replicas = 7 }, "replicas 7: must be 1 to 5"},
		{"time scale", func(o *Options) { o.TimeScale = -1 }, "time scale -1: must be positive"},
		{"rule name", func(o *Options) { o.Rules[0].Name = "Data.Stale" }, `name "Data.Stale": must be letters, digits, - and _`},
		{"rule twice", func(o *Options) { o.Rules[1] = staleRule() }, `rule "CandlekeepDataStale": defined twice`},
		{"severity", func(o *Options) { o.Rules[1].Severity = "page" }, `severity "page": must be critical, warning or info`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			tc.edit(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// scalingEvaluator is an Evaluator with SetTimeScale.
type scalingEvaluator struct {
	Evaluator
	scale float64
}

func (e *scalingEvaluator) SetTimeScale(f float64) { e.scale = f }

func TestTimeScaleReachesTheEvaluator(t *testing.T) {
	h := newHarness(t, evaluatorCase{"reference", newRefEvaluator}, serviceDownRule())
	ev := &scalingEvaluator{Evaluator: newRefEvaluator(h.rules)}
	h.alerter(func(o *Options) { o.Evaluator, o.TimeScale = ev, 0.01 })
	if ev.scale != 0.01 {
		t.Fatalf("time scale %v reached the evaluator, want 0.01", ev.scale)
	}
	o := Options{JS: h.js, Sender: h.sender, Rules: h.rules, Evaluator: newRefEvaluator(h.rules), TimeScale: 0.01}
	if _, err := New(t.Context(), o); err == nil || !strings.Contains(err.Error(), "the evaluator cannot scale time") {
		t.Fatalf("New with an evaluator that cannot scale: %v", err)
	}
}

// Every rule has its gauge from the start, and an Alerter started again
// in the same process takes the gauge over instead of failing.
func TestFiringGaugeForEveryRule(t *testing.T) {
	h := newHarness(t, evaluatorCase{"reference", newRefEvaluator}, staleRule(), serviceDownRule(), backupStaleRule())
	reg := prometheus.NewRegistry()
	a := h.alerter(func(o *Options) { o.Registerer = reg })
	h.series.set("candlekeep_service_up", rules.Sample{Labels: rules.Labels{"service": "writer"}, Value: 0})
	h.at(a, 0)
	h.at(a, 2*time.Minute)
	want := `# HELP candlekeep_alerts_firing 1 while the rule's alert group fires (in-process evaluation), 0 otherwise.
# TYPE candlekeep_alerts_firing gauge
candlekeep_alerts_firing{alertname="CandlekeepBackupStale",severity="warning"} 0
candlekeep_alerts_firing{alertname="CandlekeepDataStale",severity="critical"} 0
candlekeep_alerts_firing{alertname="CandlekeepServiceDown",severity="critical"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "candlekeep_alerts_firing"); err != nil {
		t.Fatal(err)
	}
	h.alerter(func(o *Options) { o.Registerer = reg })
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "candlekeep_alerts_firing"); err != nil {
		t.Fatalf("after a second Alerter: %v", err)
	}
}
