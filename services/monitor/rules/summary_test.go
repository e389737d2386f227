package rules

import (
	"math"
	"testing"
)

// TestRenderSummary: every rule's summary expands as Prometheus expands
// it (the values worked out from Prometheus' template functions).
func TestRenderSummary(t *testing.T) {
	byName := map[string]Rule{}
	for _, r := range All() {
		byName[r.Name] = r
	}
	tests := []struct {
		rule   string
		labels Labels
		value  float64
		want   string
	}{
		{"CandlekeepDataStale", Labels{"symbol": "BTCUSDT", "interval": "1d"}, 180000, "BTCUSDT/1d has no new candle for 2d 2h 0m 0s"},
		{"CandlekeepDataStale", Labels{"symbol": "ETHUSDT", "interval": "1m"}, 5400.9, "ETHUSDT/1m has no new candle for 1h 30m 0s"},
		{"CandlekeepDatabaseCorrupt", Labels{}, 0, "the candle database failed its integrity check; writes are stopped"},
		{"CandlekeepSyncTimeout", Labels{}, 2.5, "2.5 sync run(s) hit their deadline in the last hour"},
		{"CandlekeepSyncTimeout", Labels{}, 1234.5, "1.234k sync run(s) hit their deadline in the last hour"},
		{"CandlekeepServiceDown", Labels{"service": "fetcher"}, 0, "the candlekeep fetcher service does not answer"},
		{"CandlekeepServiceDown", Labels{}, 0, "the candlekeep  service does not answer"},
		{"CandlekeepBackupStale", Labels{}, 42.25, "the newest verified backup is 42.25s old"},
		{"CandlekeepMissingSymbols", Labels{}, 2, "2 configured pair(s) are not complete"},
		{"CandlekeepSyncSlow", Labels{}, 2700, "the last sync run took 45m 0s"},
		{"CandlekeepDiskSpaceLow", Labels{}, 0.0512345, "5.123% free on the data volume"},
	}
	for _, tc := range tests {
		got, err := byName[tc.rule].RenderSummary(tc.labels, tc.value)
		if err != nil || got != tc.want {
			t.Errorf("%s summary for %v %v = %q, %v; want %q", tc.rule, tc.labels, tc.value, got, err, tc.want)
		}
	}
}

func TestHumanize(t *testing.T) {
	tests := []struct {
		f    func(float64) string
		name string
		v    float64
		want string
	}{
		{humanize, "humanize", 0, "0"},
		{humanize, "humanize", 1, "1"},
		{humanize, "humanize", 0.0015, "1.5m"},
		{humanize, "humanize", 2.5e9, "2.5G"},
		{humanize, "humanize", math.Inf(1), "+Inf"},
		{humanizeDuration, "humanizeDuration", 0, "0s"},
		{humanizeDuration, "humanizeDuration", 0.25, "250ms"},
		{humanizeDuration, "humanizeDuration", 59.5, "59.5s"},
		{humanizeDuration, "humanizeDuration", -90, "-1m 30s"},
		{humanizeDuration, "humanizeDuration", 90061, "1d 1h 1m 1s"},
		{humanizeDuration, "humanizeDuration", math.NaN(), "NaN"},
	}
	for _, tc := range tests {
		if got := tc.f(tc.v); got != tc.want {
			t.Errorf("%s(%v) = %q, want %q", tc.name, tc.v, got, tc.want)
		}
	}
}
