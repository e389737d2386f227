package alerts

import (
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/rules"
)

// The summary is the rule's own template as Prometheus renders it
// (rules.Rule.RenderSummary, checked against promtool in package rules);
// the group's message adds how many more alerts fire.
func TestRenderSummary(t *testing.T) {
	stale := rules.Rule{Name: "S", Summary: "{{ $labels.symbol }}/{{ $labels.interval }} has no new candle for {{ $value | humanizeDuration }}"}
	pair := rules.Labels{"symbol": "BTCUSDT", "interval": "4h"}
	cases := []struct {
		name  string
		r     rules.Rule
		value float64
		of    int
		want  string
	}{
		{"one alert", stale, 97200, 1, "BTCUSDT/4h has no new candle for 1d 3h 0m 0s"},
		{"more members", stale, 899.99, 3, "BTCUSDT/4h has no new candle for 14m 59s (and 2 more)"},
		{"a template that does not parse is sent as written", rules.Rule{Name: "B", Summary: "{{ $value | nosuch }}"}, 1, 1, "{{ $value | nosuch }}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := renderSummary(tc.r, pair, tc.value, tc.of); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// fakeInstant is a Querier with one metric's samples.
func fakeInstant(metric string, ss ...rules.Sample) rules.Querier {
	return querier{
		instant: func(m string) []rules.Sample {
			if m == metric {
				return ss
			}
			return nil
		},
		now: func() time.Time { return t0 },
	}
}

func TestFormatters(t *testing.T) {
	pl := rules.Labels{"symbol": "ETHUSDT", "interval": "1d"}
	cases := []struct {
		rule                 string
		q                    rules.Querier
		value                float64
		labels               rules.Labels
		wantValue, wantLimit string
	}{
		{"CandlekeepDataStale", fakeInstant("candlekeep_pair_staleness_limit_seconds", pair("BTCUSDT", "1d", 1), rules.Sample{Labels: pl, Value: 93600 + 7200}), 110000, pl, "30h33m20s since the last candle", "28h0m0s"},
		{"CandlekeepDataStale", fakeInstant(""), 110000, pl, "30h33m20s since the last candle", "its limit"},
		{"CandlekeepDatabaseCorrupt", fakeInstant(""), 0, nil, "integrity check failed", "integrity check passes"},
		{"CandlekeepSyncTimeout", fakeInstant(""), 1.0169, nil, "1 sync timeout(s) in 1h", "0 in 1h"},
		{"CandlekeepServiceDown", fakeInstant(""), 0, rules.Labels{"service": "writer"}, "not answering", "answering"},
		{"CandlekeepBackupStale", fakeInstant(""), 30 * 3600, nil, "30h0m0s old", "26h0m0s"},
		{"CandlekeepMissingSymbols", fakeInstant(""), 3, nil, "3 incomplete pair(s)", "0"},
		{"CandlekeepRateLimitAbuse", fakeInstant(""), 2.5, nil, "2.5 429/418 answer(s) in 1h", "< 1 in 1h"},
		{"CandlekeepSyncSlow", fakeInstant(""), 1900.4, nil, "31m40s", "30m0s"},
		{"CandlekeepDiskSpaceLow", fakeInstant(""), 0.075, nil, "7.5% free", "10% free"},
		{"CandlekeepPipelineErrors", fakeInstant(""), 4, nil, "4 failure(s) in 1h", "0 in 1h"},
		{"SomeOtherRule", fakeInstant(""), 0.25, nil, "0.25", ""},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			v, limit := formatterFor(tc.rule)(tc.q, rules.Alert{Rule: tc.rule, Labels: tc.labels, Value: tc.value})
			if v != tc.wantValue || limit != tc.wantLimit {
				t.Fatalf("got %q against %q, want %q against %q", v, limit, tc.wantValue, tc.wantLimit)
			}
		})
	}
}

func TestMemberName(t *testing.T) {
	cases := []struct {
		labels rules.Labels
		want   string
	}{
		{rules.Labels{"symbol": "BTCUSDT", "interval": "4h"}, "BTCUSDT/4h"},
		{rules.Labels{"service": "writer"}, "service=writer"},
		{rules.Labels{"symbol": "BTCUSDT", "interval": "4h", "job": "x"}, "interval=4h,job=x,symbol=BTCUSDT"},
		{rules.Labels{}, ""},
		{nil, ""},
	}
	for _, tc := range cases {
		if got := memberName(tc.labels); got != tc.want {
			t.Errorf("memberName(%v) = %q, want %q", tc.labels, got, tc.want)
		}
	}
}
