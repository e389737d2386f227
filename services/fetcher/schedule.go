package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// Schedule defaults and words (the syntax lives with the cluster settings).
const (
	DefaultSyncSchedule = cluster.DefaultSyncSchedule
	ScheduleOff         = cluster.ScheduleOff

	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
	scheduleBody         = `{"reason":"schedule"}`
)

// ParseSchedule is cluster.ParseSchedule.
func ParseSchedule(s string, now time.Time) (pattern string, next time.Time, err error) {
	return cluster.ParseSchedule(s, now)
}

// installSchedule makes the SYNC stream's schedule message match pattern.
// It is idempotent: an identical schedule is left alone (so its timer keeps
// running), a different one replaces it (the schedule subject rolls up), and
// "off" removes it. However many fetchers run, the server publishes one sync
// request per tick.
func installSchedule(ctx context.Context, js jetstream.JetStream, pattern string, log *slog.Logger) error {
	return installScheduleRev(ctx, js, pattern, 0, log)
}

// headerConfigRevision marks a schedule message candlekeep installed with
// the revision of the sync-schedule setting it came from, so a process
// starting later can tell a schedule that is behind the configuration (the
// setting changed while no fetcher ran: install it) from one an operator
// put there by hand with the nats CLI (no header: leave it, and warn).
const headerConfigRevision = "Candlekeep-Config-Revision"

// installScheduleRev is installSchedule recording the setting's revision
// (0: none).
func installScheduleRev(ctx context.Context, js jetstream.JetStream, pattern string, rev uint64, log *slog.Logger) error {
	stream, current, err := readSchedule(ctx, js)
	if err != nil {
		return err
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
		current.Header.Get(headerScheduleTarget) == candles.SubjectSyncRequest &&
		(rev == 0 || current.Header.Get(headerConfigRevision) == strconv.FormatUint(rev, 10)) {
		log.Info("sync schedule in place", "schedule", pattern, "subject", candles.SubjectSyncSchedule)
		return nil
	}
	msg := nats.NewMsg(candles.SubjectSyncSchedule)
	msg.Header.Set(headerSchedule, pattern)
	msg.Header.Set(headerScheduleTarget, candles.SubjectSyncRequest)
	if rev > 0 {
		msg.Header.Set(headerConfigRevision, strconv.FormatUint(rev, 10))
	}
	msg.Data = []byte(scheduleBody)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("install the sync schedule %q: %w (does the server support message schedules? nats-server >= 2.12 is needed)", pattern, err)
	}
	log.Info("sync schedule installed", "schedule", pattern, "subject", candles.SubjectSyncSchedule, "target", candles.SubjectSyncRequest)
	return nil
}

// startSchedule puts the sync schedule in place at start-up and, when the
// fetcher follows the cluster configuration, keeps it in step with the
// sync-schedule setting. Without a cluster, Options.SyncSchedule is
// installed as given ("" leaves the schedule alone).
func (f *Fetcher) startSchedule(ctx context.Context) error {
	if f.o.Cluster == nil {
		if f.o.SyncSchedule == "" {
			return nil
		}
		pattern, next, _ := ParseSchedule(f.o.SyncSchedule, f.o.Now())
		if err := installSchedule(ctx, f.js, pattern, f.log); err != nil {
			return err
		}
		logNext(f.log, next)
		return nil
	}
	f.o.Cluster.OnChange(func(key string, s cluster.Settings) {
		if key != "sync-schedule" {
			return
		}
		pattern, next, err := ParseSchedule(s.SyncSchedule, f.o.Now())
		if err != nil {
			return // the configuration refuses such values; nothing to install
		}
		if err := installScheduleRev(ctx, f.js, pattern, f.o.Cluster.Revision(key), f.log); err != nil {
			f.log.Error("cannot install the changed sync schedule; it is tried again at the next change or start", "schedule", pattern, "err", err)
			return
		}
		logNext(f.log, next)
	})
	s := f.settings()
	rev := f.o.Cluster.Revision("sync-schedule")
	pattern, next, err := ParseSchedule(s.SyncSchedule, f.o.Now())
	if err != nil {
		return err
	}
	_, current, err := readSchedule(ctx, f.js)
	if err != nil {
		return err
	}
	if current != nil && current.Header.Get(headerConfigRevision) == "" && current.Header.Get(headerSchedule) != pattern {
		// Put there by hand (nats CLI): the operator's word stands until the
		// setting changes.
		f.log.Warn("the sync schedule in the SYNC stream was set by hand and differs from the sync-schedule setting; leaving it",
			"stream_schedule", current.Header.Get(headerSchedule), "setting", pattern,
			"to_align", fmt.Sprintf("candlekeep config set sync-schedule=%q", current.Header.Get(headerSchedule)))
		return nil
	}
	if current != nil {
		if have, _ := strconv.ParseUint(current.Header.Get(headerConfigRevision), 10, 64); have > rev {
			return nil // installed from a newer revision than this process has seen; its watch catches up
		}
	}
	if err := installScheduleRev(ctx, f.js, pattern, rev, f.log); err != nil {
		return err
	}
	logNext(f.log, next)
	return nil
}

func logNext(log *slog.Logger, next time.Time) {
	if !next.IsZero() {
		log.Info("next scheduled sync", "at", next.Format(time.RFC3339))
	}
}

// readSchedule returns the SYNC stream and its schedule message (nil when
// there is none).
func readSchedule(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, *jetstream.RawStreamMsg, error) {
	stream, err := js.Stream(ctx, candles.StreamSync)
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", candles.StreamSync, err)
	}
	current, err := stream.GetLastMsgForSubject(ctx, candles.SubjectSyncSchedule)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return stream, nil, nil
	case err != nil:
		return nil, nil, fmt.Errorf("read the sync schedule: %w", err)
	}
	return stream, current, nil
}
