package fetcher

import (
	"strings"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	now := time.Date(2026, 11, 27, 14, 30, 0, 0, time.UTC)
	tests := []struct {
		in, pattern string
		next        time.Time
		err         string
	}{
		{"0 0 1 * * *", "0 0 1 * * *", time.Date(2026, 11, 28, 1, 0, 0, 0, time.UTC), ""},
		{"30 1 * * *", "0 30 1 * * *", time.Date(2026, 11, 28, 1, 30, 0, 0, time.UTC), ""},
		{"@every 2s", "@every 2s", now.Add(2 * time.Second), ""},
		{"@every 90m", "@every 1h30m0s", now.Add(90 * time.Minute), ""},
		{"@daily", "@daily", time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC), ""},
		{"@hourly", "@hourly", time.Date(2026, 11, 27, 15, 0, 0, 0, time.UTC), ""},
		{"off", "off", time.Time{}, ""},
		{"@every 500ms", "", time.Time{}, "at least 1s"},
		{"@fortnightly", "", time.Time{}, "unknown descriptor"},
		{"0 0 25 * * *", "", time.Time{}, "0 0 25"},
		{"* * *", "", time.Time{}, "3 fields"},
		{"daily", "", time.Time{}, "1 fields"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			pattern, next, err := ParseSchedule(tt.in, now)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "--sync-schedule") {
					t.Fatalf("err = %v, want one naming --sync-schedule and %q", err, tt.err)
				}
				return
			}
			if err != nil || pattern != tt.pattern || !next.Equal(tt.next) {
				t.Fatalf("got %q %v %v, want %q %v", pattern, next, err, tt.pattern, tt.next)
			}
		})
	}
}
