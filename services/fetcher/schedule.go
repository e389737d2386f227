package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Schedule defaults and words.
const (
	// DefaultSyncSchedule runs the daily sync at 01:00:00 UTC.
	DefaultSyncSchedule = "0 0 1 * * *"
	// ScheduleOff removes candlekeep's schedule (syncs then come only from
	// requests and the start-up catch-up).
	ScheduleOff = "off"

	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
	scheduleBody         = `{"reason":"schedule"}`
)

var cronParser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule turns --sync-schedule into the pattern nats-server's message
// scheduler runs: a 6-field cron with seconds ("0 0 1 * * *", UTC), a
// standard 5-field cron ("0 1 * * *", given seconds 0), "@every 30s" (at
// least one second), "@hourly", "@daily" / "@midnight", "@weekly",
// "@monthly", "@yearly", or "off". It returns the next tick after now for
// the log.
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

// installSchedule makes the SYNC stream's schedule message match pattern.
// It is idempotent: an identical schedule is left alone (so its timer keeps
// running), a different one replaces it (the schedule subject rolls up), and
// "off" removes it. However many fetchers run, the server publishes one sync
// request per tick.
func installSchedule(ctx context.Context, js jetstream.JetStream, pattern string, log *slog.Logger) error {
	stream, err := js.Stream(ctx, candles.StreamSync)
	if err != nil {
		return fmt.Errorf("stream %s: %w", candles.StreamSync, err)
	}
	current, err := stream.GetLastMsgForSubject(ctx, candles.SubjectSyncSchedule)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		current = nil
	case err != nil:
		return fmt.Errorf("read the sync schedule: %w", err)
	}
	if pattern == ScheduleOff {
		if current != nil {
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(candles.SubjectSyncSchedule)); err != nil {
				return fmt.Errorf("remove the sync schedule: %w", err)
			}
			log.Info("sync schedule removed (--sync-schedule off)")
		}
		return nil
	}
	if current != nil && current.Header.Get(headerSchedule) == pattern &&
		current.Header.Get(headerScheduleTarget) == candles.SubjectSyncRequest {
		log.Info("sync schedule in place", "schedule", pattern, "subject", candles.SubjectSyncSchedule)
		return nil
	}
	msg := nats.NewMsg(candles.SubjectSyncSchedule)
	msg.Header.Set(headerSchedule, pattern)
	msg.Header.Set(headerScheduleTarget, candles.SubjectSyncRequest)
	msg.Data = []byte(scheduleBody)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("install the sync schedule %q: %w (does the server support message schedules? nats-server >= 2.12 is needed)", pattern, err)
	}
	log.Info("sync schedule installed", "schedule", pattern, "subject", candles.SubjectSyncSchedule, "target", candles.SubjectSyncRequest)
	return nil
}
