package cluster

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule words.
const (
	// DefaultSyncSchedule runs the daily sync at 01:00:00 UTC.
	DefaultSyncSchedule = "0 0 1 * * *"
	// ScheduleOff removes candlekeep's schedule (syncs then come only from
	// requests and the start-up catch-up).
	ScheduleOff = "off"
)

// cronParser is stateless; a package-level parser is a constant in effect.
var cronParser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule turns a sync schedule into the pattern nats-server's message
// scheduler runs: a 6-field cron with seconds ("0 0 1 * * *", UTC), a
// standard 5-field cron ("0 1 * * *", given seconds 0), "@every 30s" (at
// least one second), "@hourly", "@daily" / "@midnight", "@weekly",
// "@monthly", "@yearly", or "off". It returns the next tick after now for
// the log. Errors name the --sync-schedule flag (the config key of the same
// name).
func ParseSchedule(s string, now time.Time) (pattern string, next time.Time, err error) {
	s = strings.TrimSpace(s)
	const allowed = `want a 6-field cron with seconds ("0 0 1 * * *", UTC), a 5-field cron ("0 1 * * *"), "@every 30s", "@hourly", "@daily", "@weekly", "@monthly" or "off"`
	switch {
	case s == ScheduleOff:
		return ScheduleOff, time.Time{}, nil
	case strings.HasPrefix(s, "@every "):
		d, err := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(s, "@every ")))
		if err != nil || d < time.Second {
			return "", time.Time{}, fmt.Errorf("--sync-schedule %q: @every needs a duration of at least 1s, such as @every 30s", s)
		}
		return "@every " + d.String(), now.Add(d), nil
	case strings.HasPrefix(s, "@"):
		switch s {
		case "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly":
		default:
			return "", time.Time{}, fmt.Errorf("--sync-schedule %q: unknown descriptor; %s", s, allowed)
		}
		sched, err := cronParser.Parse(s)
		if err != nil {
			return "", time.Time{}, fmt.Errorf("--sync-schedule %q: %v; %s", s, err, allowed)
		}
		return s, sched.Next(now.UTC()), nil
	}
	fields := strings.Fields(s)
	switch len(fields) {
	case 5:
		fields = append([]string{"0"}, fields...)
	case 6:
	default:
		return "", time.Time{}, fmt.Errorf("--sync-schedule %q: %d fields; %s", s, len(fields), allowed)
	}
	pattern = strings.Join(fields, " ")
	sched, err := cronParser.Parse(pattern)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("--sync-schedule %q: %v; %s", s, err, allowed)
	}
	return pattern, sched.Next(now.UTC()), nil
}
