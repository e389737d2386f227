package writer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// watchDeadlines closes the runs that missed their deadline and announces
// their sync.timeout: once at start-up and then every DeadlineEvery, until
// ctx ends.
func (w *Writer) watchDeadlines(ctx context.Context) error {
	t := time.NewTicker(w.o.DeadlineEvery)
	defer t.Stop()
	for {
		w.checkDeadlines(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// checkDeadlines times out the open runs whose deadline is before both now
// and appliedUntil. The second bound is what makes a timeout true: a run
// whose last batches were published in time but are still queued (the
// writer was down or behind) completes when they are applied rather than
// time out. Nothing is read from JetStream unless a deadline has passed.
func (w *Writer) checkDeadlines(ctx context.Context) {
	next, err := w.store().NextDeadline(ctx)
	if err != nil {
		if !w.noteErr(err) && ctx.Err() == nil {
			w.log.Warn("read run deadlines", "err", err)
		}
		return
	}
	now := w.o.Now()
	if next.IsZero() || !next.Before(now) {
		return
	}
	cutoff, err := w.appliedUntil(ctx, now)
	if err != nil {
		if !w.noteErr(err) && ctx.Err() == nil {
			w.log.Warn("check run deadlines", "err", err)
		}
		return
	}
	n, err := w.store().TimeOutRuns(ctx, cutoff)
	if err != nil {
		if !w.noteErr(err) && ctx.Err() == nil {
			w.log.Error("time out runs", "err", err)
		}
		return
	}
	if n > 0 {
		w.announce(ctx)
	} else if !next.Before(cutoff) {
		w.log.Debug("run deadline passed; waiting for queued messages before timing it out",
			"deadline", next, "applied_until", cutoff)
	}
}

// appliedUntil returns a time before which every message that can resolve a
// run's pair has been applied: the JetStream time of the first CANDLES batch
// beyond the database watermark, or of the first pair.failed beyond the
// EVENTS watermark, whichever is earlier; now when both are applied.
func (w *Writer) appliedUntil(ctx context.Context, now time.Time) (time.Time, error) {
	cutoff := now
	for _, src := range []struct{ stream, subject string }{
		{candles.StreamCandles, candles.SubjectBatchPrefix + ">"},
		{candles.StreamEvents, candles.EventSubject(candles.KindPairFailed)},
	} {
		wm, err := w.store().Watermark(ctx, src.stream)
		if err != nil {
			return time.Time{}, err
		}
		s, err := w.js.Stream(ctx, src.stream)
		if err != nil {
			return time.Time{}, fmt.Errorf("stream %s: %w", src.stream, err)
		}
		m, err := s.GetMsg(ctx, wm+1, jetstream.WithGetMsgSubject(src.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("first unapplied message of %s: %w", src.stream, err)
		}
		if m.Time.Before(cutoff) {
			cutoff = m.Time
		}
	}
	return cutoff, nil
}
