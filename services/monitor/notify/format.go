package notify

import (
	"fmt"
	"strings"
	"time"
)

// Title is how a message headline names its kind.
func (k Kind) Title() string {
	switch k {
	case Firing:
		return "FIRING"
	case Repeat:
		return "STILL FIRING"
	case Resolved:
		return "RESOLVED"
	}
	return strings.ToUpper(string(k))
}

// MaxMembers is how many members a message lists before "and N more".
const MaxMembers = 10

// FormatMembers lists the first max members and counts the rest, so a
// message about 400 stale pairs stays readable.
func FormatMembers(members []string, max int) string {
	if len(members) <= max {
		return strings.Join(members, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(members[:max], ", "), len(members)-max)
}

// FormatDuration renders a firing duration the way people say it: 3h12m,
// 12m, 45s, 2d3h.
func FormatDuration(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	}
	days, h, m := int(d/(24*time.Hour)), int(d/time.Hour)%24, int(d/time.Minute)%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh%dm", h, m)
	}
	return fmt.Sprintf("%dm", m)
}

// FiringFor is how long n's group has been firing: until ResolvedAt for a
// resolved one, until now otherwise. Zero when Since is unknown.
func FiringFor(n Notification, now time.Time) time.Duration {
	if n.Since.IsZero() {
		return 0
	}
	end := now
	if n.Kind == Resolved && !n.ResolvedAt.IsZero() {
		end = n.ResolvedAt
	}
	return max(0, end.Sub(n.Since))
}

// Subject is the one-line headline every receiver uses:
// "FIRING critical CandlekeepDataStale: 3 pairs have no fresh candle".
func Subject(n Notification) string {
	s := n.Kind.Title() + " " + n.Severity + " " + n.Alert
	if n.Summary != "" {
		s += ": " + n.Summary
	}
	return s
}

// ClockUTC is a time as a message shows it: 12:03 UTC, with the date when
// it is not the day of now.
func ClockUTC(t, now time.Time) string {
	t, now = t.UTC(), now.UTC()
	if t.Format(time.DateOnly) == now.Format(time.DateOnly) {
		return t.Format("15:04") + " UTC"
	}
	return t.Format("2006-01-02 15:04") + " UTC"
}
