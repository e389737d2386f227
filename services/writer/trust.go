package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// Why a batch is not the pipeline's (the start of batch.rejected's reason;
// docs/messages.md). Only the pipeline writes: a batch is applied only when
// it belongs to a job a run planned (sync.started announced the run, the
// pair, the hash of the job's token and its ranges), carries that job's
// token, stays in the job's ranges and holds no candle closing after now.
var (
	errUnknownRun   = errors.New("unknown run")
	errPairNotInRun = errors.New("pair not in run")
	errBadToken     = errors.New("bad job token")
	errOutsideRange = errors.New("outside planned range")
	errFuture       = errors.New("candle in the future")
	errRunClosed    = errors.New("run already closed")
)

// DefaultFutureSkew is how far past the writer's clock a candle may close
// and still be taken for a closed one (clocks differ a little).
const DefaultFutureSkew = time.Minute

// runWaitPoll is how often a batch of a run not registered yet looks at the
// run consumer's progress.
const runWaitPoll = 20 * time.Millisecond

// admit decides whether the pipeline produced b: nil when it may be
// applied, else why not. ok is false when ctx ended first (the message is
// left unacked). A batch of a run the database does not know yet waits
// until the run consumer has handled every sync.started published so far:
// the fetcher publishes sync.started before the run's jobs, so a genuine
// batch's run is registered by then, whichever consumer ran ahead.
func (w *Writer) admit(ctx context.Context, s *batchState, d decoded) (refusal error, ok bool) {
	b := d.batch
	if w.o.AllowUnplanned || (b.Token == "" && d.seq <= s.legacy) {
		return nil, true
	}
	attrs := []any{"run_id", b.RunID, "symbol", b.Symbol, "interval", b.Interval, "stream_seq", d.seq}
	var g store.Grant
	lookup := func(ctx context.Context) error {
		var err error
		g, err = w.store().RunGrant(ctx, b.RunID, b.Symbol, b.Interval)
		return err
	}
	if b.RunID == "" {
		return fmt.Errorf("%w: the batch names no run", errUnknownRun), true
	}
	if !w.retry(ctx, d.msg, "look up the run of a batch", attrs, lookup) {
		return nil, false
	}
	if g.Run == store.RunUnknown {
		if !w.awaitRuns(ctx, d.msg, attrs) {
			return nil, false
		}
		if !w.retry(ctx, d.msg, "look up the run of a batch", attrs, lookup) {
			return nil, false
		}
	}
	return w.judge(b, g, 0), true
}

// awaitRuns waits until the run consumer has handled the last sync.started
// on EVENTS (as of now), keeping msg ours meanwhile. It reports false when
// ctx ended first.
func (w *Writer) awaitRuns(ctx context.Context, msg jetstream.Msg, attrs []any) bool {
	var target uint64
	if !w.retry(ctx, msg, "find the last sync.started", attrs, func(ctx context.Context) error {
		events, err := w.js.Stream(ctx, candles.StreamEvents)
		if err != nil {
			return fmt.Errorf("stream %s: %w", candles.StreamEvents, err)
		}
		m, err := events.GetLastMsgForSubject(ctx, candles.EventSubject(candles.KindSyncStarted))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			target = 0
			return nil
		}
		if err != nil {
			return fmt.Errorf("last sync.started: %w", err)
		}
		target = m.Sequence
		return nil
	}) {
		return false
	}
	began, lastTouch, warned := time.Now(), time.Now(), false
	for {
		wm, err := w.store().Watermark(ctx, candles.StreamEvents)
		if err == nil && wm >= target {
			return true
		}
		if err != nil && w.noteErr(err) {
			return false
		}
		if time.Since(lastTouch) > w.o.AckWait/3 {
			lastTouch = time.Now()
			if err := msg.InProgress(); err != nil {
				w.log.Warn("extend ack deadline", append(attrs, "err", err)...)
			}
		}
		if !warned && time.Since(began) > 10*time.Second {
			warned = true
			w.log.Warn("batch waits for its run to be registered", append(attrs, "events_seq", target, "events_watermark", wm)...)
		}
		if !sleep(ctx, runWaitPoll) {
			return false
		}
	}
}

// judge checks b against what its run allows (g). A replay (replaySeq, the
// batch's stream sequence; 0 for the live consumer) re-applies the pages of
// runs that have finished since, up to the sequence that finished them:
// later ones were refused.
func (w *Writer) judge(b candles.Batch, g store.Grant, replaySeq uint64) error {
	switch {
	case b.RunID == "" || g.Run == store.RunUnknown:
		return fmt.Errorf("%w: no sync.started announced run %q", errUnknownRun, b.RunID)
	case !g.Listed:
		return fmt.Errorf("%w: run %s does not sync %s/%s", errPairNotInRun, b.RunID, b.Symbol, b.Interval)
	case !candles.TokenMatches(b.Token, g.TokenSHA256):
		if b.Token == "" {
			return fmt.Errorf("%w: the batch carries no token of a job of run %s", errBadToken, b.RunID)
		}
		return fmt.Errorf("%w: not the token of run %s's job for %s/%s", errBadToken, b.RunID, b.Symbol, b.Interval)
	case g.Run == store.RunFinished && (replaySeq == 0 || (g.FinishedSeq > 0 && replaySeq > g.FinishedSeq)):
		return fmt.Errorf("%w: run %s is complete", errRunClosed, b.RunID)
	}
	if n := len(b.Candles); n > 0 {
		limit := w.o.Now().Add(w.o.FutureSkew).UnixMilli()
		for _, c := range b.Candles {
			if c.CloseTime > limit {
				return fmt.Errorf("%w: the candle opening %s closes at %s, after now (%s)", errFuture,
					time.UnixMilli(c.OpenTime).UTC().Format(time.RFC3339), time.UnixMilli(c.CloseTime).UTC().Format(time.RFC3339),
					w.o.Now().UTC().Format(time.RFC3339))
			}
		}
	}
	for _, c := range b.Candles {
		if !inAny(g.Ranges, c.OpenTime, c.OpenTime+1) {
			return fmt.Errorf("%w: the candle opening %s is not in run %s's ranges for %s/%s %s", errOutsideRange,
				time.UnixMilli(c.OpenTime).UTC().Format(time.RFC3339), b.RunID, b.Symbol, b.Interval, rangesString(g.Ranges))
		}
	}
	if (b.From != 0 || b.Until != 0) && !inAny(g.Ranges, b.From, b.Until) {
		return fmt.Errorf("%w: the covered span [%d, %d) is not in run %s's ranges for %s/%s %s", errOutsideRange,
			b.From, b.Until, b.RunID, b.Symbol, b.Interval, rangesString(g.Ranges))
	}
	return nil
}

// inAny tells whether [from, until) lies in one of rs.
func inAny(rs []candles.Range, from, until int64) bool {
	for _, r := range rs {
		if r.From <= from && until <= r.Until {
			return true
		}
	}
	return false
}

func rangesString(rs []candles.Range) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf("[%d, %d)", r.From, r.Until)
	}
	if out == "" {
		return "(none)"
	}
	return out
}

// claimsGenuine tells whether a batch that cannot be applied (it failed
// validation) still proves it is its job's, by the token it carries: only
// then does its rejection fail its pair in its run. A forgery naming a live
// run must not close that run's pair.
func (w *Writer) claimsGenuine(ctx context.Context, s *batchState, msg jetstream.Msg, seq uint64, runID, symbol, interval string) bool {
	var claimed struct {
		Token string `json:"token"`
	}
	_ = json.Unmarshal(msg.Data(), &claimed)
	if w.o.AllowUnplanned || (claimed.Token == "" && seq <= s.legacy) {
		return true
	}
	if claimed.Token == "" {
		return false
	}
	g, err := w.store().RunGrant(ctx, runID, symbol, interval)
	return err == nil && g.Run != store.RunUnknown && g.Listed && candles.TokenMatches(claimed.Token, g.TokenSHA256)
}
