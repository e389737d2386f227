package notify

import (
	"testing"
	"time"
)

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{45 * time.Second, "45s"},
		{12*time.Minute + 59*time.Second, "12m"},
		{3*time.Hour + 12*time.Minute, "3h12m"},
		{3 * time.Hour, "3h0m"},
		{51 * time.Hour, "2d3h"},
	} {
		if got := FormatDuration(tc.d); got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestFormatMembers(t *testing.T) {
	for _, tc := range []struct {
		members []string
		want    string
	}{
		{nil, ""},
		{[]string{"A", "B"}, "A, B"},
		{[]string{"A", "B", "C"}, "A, B, C"},
		{[]string{"A", "B", "C", "D"}, "A, B, C and 1 more"},
	} {
		if got := FormatMembers(tc.members, 3); got != tc.want {
			t.Errorf("FormatMembers(%v, 3) = %q, want %q", tc.members, got, tc.want)
		}
	}
}

func TestFiringForAndClock(t *testing.T) {
	since := time.Date(2026, 12, 4, 12, 3, 0, 0, time.UTC)
	now := since.Add(5 * time.Hour)
	n := Notification{Kind: Resolved, Since: since, ResolvedAt: since.Add(3*time.Hour + 12*time.Minute)}
	if got := FiringFor(n, now); got != 3*time.Hour+12*time.Minute {
		t.Errorf("resolved FiringFor = %v, want until ResolvedAt", got)
	}
	n.Kind = Repeat
	if got := FiringFor(n, now); got != 5*time.Hour {
		t.Errorf("repeat FiringFor = %v, want until now", got)
	}
	if got := FiringFor(Notification{}, now); got != 0 {
		t.Errorf("FiringFor without Since = %v, want 0", got)
	}
	if got := ClockUTC(since, now); got != "12:03 UTC" {
		t.Errorf("ClockUTC same day = %q", got)
	}
	if got := ClockUTC(since, now.Add(24*time.Hour)); got != "2026-12-04 12:03 UTC" {
		t.Errorf("ClockUTC other day = %q", got)
	}
}
