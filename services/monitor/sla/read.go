package sla

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Kinds are the event kinds the audit reads.
var Kinds = []string{
	candles.KindFreshnessChanged,
	candles.KindSyncCompleted, candles.KindSyncTimeout,
	candles.KindRateLimitHit, candles.KindRateLimitBanned,
	candles.KindBackupCompleted, candles.KindBackupFailed,
	candles.KindRestoreCompleted, candles.KindDrillCompleted,
	candles.KindAlertFiring, candles.KindAlertResolved,
}

// Loaded is what Read found.
type Loaded struct {
	Events []candles.Event
	// Invalid counts messages that did not decode (skipped, not fatal);
	// FirstInvalid says why the first did.
	Invalid      int
	FirstInvalid string
	// MaxAge is the EVENTS stream's retention. FirstTime is its oldest
	// message when older ones expired: a window before it lost events.
	MaxAge    time.Duration
	FirstTime time.Time
}

// Notes are what an operator should know about where the events came from:
// a retention too short for a monthly audit, a window older than the
// stream's first event, events that did not decode.
func (l Loaded) Notes(from time.Time) []string {
	var out []string
	if l.MaxAge > 0 && l.MaxAge < candles.MinEventsMaxAge {
		out = append(out, fmt.Sprintf("EVENTS keeps events for %s only; a monthly audit needs at least %s (candlekeep config set events-max-age=%s)",
			days(l.MaxAge), days(candles.MinEventsMaxAge), candles.DefaultEventsMaxAge))
	}
	if !l.FirstTime.IsZero() && from.Before(l.FirstTime) {
		out = append(out, "events before "+l.FirstTime.UTC().Format(time.RFC3339)+" have expired from EVENTS: the audit cannot see them")
	}
	if l.Invalid > 0 {
		out = append(out, fmt.Sprintf("%d events could not be read and were skipped (first: %s)", l.Invalid, l.FirstInvalid))
	}
	return out
}

// days shows a retention: "30 days", or a Duration when not whole days.
func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return Duration(d)
}

// readWait bounds one fetch from the stream.
const readWait = 5 * time.Second

// Read loads the audit's events of [from-Context, to) from EVENTS with an
// ordered consumer starting at from-Context (stream time) and ending at
// the stream's last message when the read began. Events are kept by their
// own time, not the stream's, so an event published late still counts
// where it happened.
func Read(ctx context.Context, js jetstream.JetStream, from, to time.Time) (Loaded, error) {
	stream, err := js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		return Loaded{}, fmt.Errorf("stream %s: %w", candles.StreamEvents, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return Loaded{}, fmt.Errorf("stream %s: %w", candles.StreamEvents, err)
	}
	l := Loaded{MaxAge: info.Config.MaxAge}
	if info.State.FirstSeq > 1 {
		// Older events expired (or were purged): a window before the
		// oldest left cannot be fully audited.
		l.FirstTime = info.State.FirstTime
	}
	if info.State.Msgs == 0 {
		return l, nil
	}
	start := from.Add(-Context)
	var filters []string
	for _, k := range Kinds {
		filters = append(filters, candles.EventSubject(k))
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters,
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		return Loaded{}, fmt.Errorf("read %s: %w", candles.StreamEvents, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return Loaded{}, fmt.Errorf("read %s: %w", candles.StreamEvents, err)
	}
	pending := ci.NumPending
	for pending > 0 {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(readWait))
		if err != nil {
			return Loaded{}, fmt.Errorf("read %s: %w", candles.StreamEvents, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return Loaded{}, fmt.Errorf("read %s: %w", candles.StreamEvents, err)
			}
			pending = md.NumPending
			ev, err := Decode(msg.Subject(), msg.Data())
			if err != nil {
				if l.Invalid == 0 {
					l.FirstInvalid = fmt.Sprintf("stream_seq %d: %v", md.Sequence.Stream, err)
				}
				l.Invalid++
			} else if ev.Head().Time.Before(to) {
				l.Events = append(l.Events, ev)
			}
			if pending == 0 {
				break
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return Loaded{}, fmt.Errorf("read %s: %w", candles.StreamEvents, err)
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return Loaded{}, err
			}
			return Loaded{}, fmt.Errorf("read %s: no message within %v with %d pending", candles.StreamEvents, readWait, pending)
		}
	}
	return l, nil
}

// Decode reads an event of the audit from its subject and body.
func Decode(subject string, data []byte) (candles.Event, error) {
	kind, ok := strings.CutPrefix(subject, candles.SubjectEventPrefix)
	if !ok {
		return nil, fmt.Errorf("subject %q is not an event subject", subject)
	}
	var ev candles.Event
	switch kind {
	case candles.KindFreshnessChanged:
		ev = &candles.FreshnessChanged{}
	case candles.KindSyncCompleted:
		ev = &candles.SyncCompleted{}
	case candles.KindSyncTimeout:
		ev = &candles.SyncTimeout{}
	case candles.KindRateLimitHit:
		ev = &candles.RateLimitHit{}
	case candles.KindRateLimitBanned:
		ev = &candles.RateLimitBanned{}
	case candles.KindBackupCompleted:
		ev = &candles.BackupCompleted{}
	case candles.KindBackupFailed:
		ev = &candles.BackupFailed{}
	case candles.KindRestoreCompleted:
		ev = &candles.RestoreCompleted{}
	case candles.KindDrillCompleted:
		ev = &candles.DrillCompleted{}
	case candles.KindAlertFiring, candles.KindAlertResolved:
		ev = &candles.AlertEvent{}
	default:
		return nil, fmt.Errorf("%s is not an event the audit reads", kind)
	}
	if err := json.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kind, err)
	}
	h := ev.Head()
	if h.Time.IsZero() {
		return nil, fmt.Errorf("%s without a time", kind)
	}
	// The subject names the kind; a body claiming another is not trusted.
	h.Kind = kind
	return ev, nil
}
