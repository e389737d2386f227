package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// maxTermReason keeps TermWithReason's reason (a header) short.
const maxTermReason = 200

// consumeBatches applies CANDLES until ctx ends. Whatever goes wrong with the
// consumer (NATS restarting, the consumer deleted, a gap) is logged and the
// consumer is rebuilt from the database watermark after a backoff.
func (w *Writer) consumeBatches(ctx context.Context) error {
	return w.supervise(ctx, candles.StreamCandles, w.batchesOnce)
}

// supervise runs once until ctx ends, restarting it with capped backoff.
func (w *Writer) supervise(ctx context.Context, stream string, once func(context.Context) error) error {
	backoff := retryMin
	for {
		began := time.Now()
		err := once(ctx)
		if w.noteErr(err) || ctx.Err() != nil {
			return nil
		}
		if time.Since(began) > time.Minute {
			backoff = retryMin // a long healthy session: this is a new problem
		}
		if errors.Is(err, errResync) {
			w.log.Warn("resynchronising consumer", "stream", stream, "err", err)
			backoff = retryMin
		} else {
			w.log.Error("consumer stopped; restarting", "stream", stream, "err", err, "retry_in", backoff)
		}
		if !sleep(ctx, backoff) {
			return nil
		}
		backoff = nextBackoff(backoff, retryMax)
	}
}

// batchState is what one consumer session knows.
type batchState struct {
	stream jetstream.Stream
	// applied is the database watermark as of the last message handled.
	applied uint64
	// legacy is the last sequence whose batches may lack a job token
	// (store.LegacyCutoff): the pipeline's from before job tokens.
	legacy uint64
}

// batchesOnce runs one consumer session: reconcile the consumer with the
// watermark, then handle messages one at a time, in stream order.
func (w *Writer) batchesOnce(ctx context.Context) error {
	wm, err := w.watermark(ctx, candles.StreamCandles)
	if err != nil {
		return err
	}
	stream, err := w.stream(ctx, candles.StreamCandles)
	if err != nil {
		return err
	}
	info := stream.CachedInfo()
	legacy, err := w.store().LegacyCutoff(ctx, candles.StreamCandles, streamIdentity(info), info.State.LastSeq)
	if err != nil {
		return err
	}
	cons, err := w.ensureConsumer(ctx, candles.StreamCandles, jetstream.ConsumerConfig{
		Durable:       ConsumerBatches,
		Description:   "candlekeep writer: applies batches to the database in stream order",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.o.AckWait,
		MaxAckPending: batchMaxAckPending,
		MaxDeliver:    -1,
	}, wm)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(batchMaxAckPending, batchBufferBytes))
	if err != nil {
		return fmt.Errorf("consume %s: %w", candles.StreamCandles, err)
	}
	defer it.Stop()
	w.log.Info("consuming batches", "watermark", wm)

	// Decoding (JSON and validation) runs one step ahead of the database in
	// its own goroutine; everything that decides a message's fate stays in
	// the single applying goroutine, in stream order.
	g, gctx := errgroup.WithContext(ctx)
	ahead := make(chan decoded, decodeAhead)
	g.Go(func() error {
		defer close(ahead)
		for {
			msg, err := it.Next(jetstream.NextContext(gctx))
			if err != nil {
				if gctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("next batch: %w", err)
			}
			d, err := decode(msg)
			if err != nil {
				return err
			}
			select {
			case ahead <- d:
			case <-gctx.Done():
				return nil
			}
		}
	})
	g.Go(func() error {
		s := &batchState{stream: stream, applied: wm, legacy: legacy}
		for d := range ahead {
			if gctx.Err() != nil {
				return nil
			}
			if err := w.handleBatch(gctx, s, d); err != nil {
				return err
			}
		}
		return nil
	})
	return g.Wait()
}

// decodeAhead is how many decoded batches wait for the database.
const decodeAhead = 4

// decoded is a CANDLES message and what its payload says.
type decoded struct {
	msg jetstream.Msg
	seq uint64
	// delivered counts deliveries of this message.
	delivered uint64
	batch     candles.Batch
	// invalid is why the batch can never be applied (nil if it can).
	invalid error
}

func decode(msg jetstream.Msg) (decoded, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return decoded{}, fmt.Errorf("batch metadata: %w", err)
	}
	d := decoded{msg: msg, seq: meta.Sequence.Stream, delivered: meta.NumDelivered}
	d.batch, d.invalid = candles.DecodeBatch(msg.Subject(), msg.Data())
	return d, nil
}

// handleBatch decides what happens to one CANDLES message. It returns an
// error only to end the session; ctx ending mid-retry returns nil with the
// message unacked, and the next start replays it from the watermark.
func (w *Writer) handleBatch(ctx context.Context, s *batchState, d decoded) error {
	msg, seq, b := d.msg, d.seq, d.batch
	if seq <= s.applied {
		w.log.Debug("batch already applied; acking the redelivery", "stream_seq", seq, "delivered", d.delivered)
		w.ack(msg, seq)
		return nil
	}
	if seq > s.applied+1 {
		if err := w.checkGap(ctx, s, seq); err != nil {
			return err
		}
	}
	if d.invalid != nil {
		return w.rejectBatch(ctx, s, msg, seq, d.invalid, true)
	}
	refusal, ok := w.admit(ctx, s, d)
	if !ok {
		return nil
	}
	if refusal != nil {
		return w.rejectBatch(ctx, s, msg, seq, refusal, false)
	}
	var a Applied
	ok = w.retry(ctx, msg, "apply batch", []any{"run_id", b.RunID, "symbol", b.Symbol, "interval", b.Interval, "stream_seq", seq},
		func(ctx context.Context) error {
			var err error
			a, err = w.store().ApplyBatch(ctx, candles.StreamCandles, seq, b)
			return err
		})
	if !ok {
		return nil
	}
	s.applied = seq
	w.ack(msg, seq)
	w.log.Debug("batch applied", "run_id", b.RunID, "symbol", b.Symbol, "interval", b.Interval, "stream_seq", seq,
		"candles", len(b.Candles), "inserted", a.Inserted, "updated", a.Updated, "skipped", a.Skipped)
	if (b.Final && b.RunID != "" && !a.Skipped) || a.RunComplete {
		w.announce(ctx)
	}
	return nil
}

// checkGap is called when a message arrives beyond watermark+1. That is fine
// when the messages in between no longer exist (deleted or expired); if one
// does exist, its delivery was lost (a reconnect) and applying this message
// first would break the order, so the session is rebuilt at watermark+1.
func (w *Writer) checkGap(ctx context.Context, s *batchState, seq uint64) error {
	next, err := s.stream.GetMsg(ctx, s.applied+1, jetstream.WithGetMsgSubject(candles.SubjectBatchPrefix+">"))
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("check for a gap before stream_seq %d: %w", seq, err)
	}
	if err == nil && next.Sequence < seq {
		return fmt.Errorf("%w: stream_seq %d arrived before %d", errResync, seq, next.Sequence)
	}
	if s.applied > 0 {
		w.log.Warn("batches missing from CANDLES were skipped", "from_seq", s.applied+1, "to_seq", seq-1)
	}
	return nil
}

// rejectBatch handles a batch that can never be applied: one batch.rejected
// event (published first, so a crash can only repeat it, and JetStream drops
// the repeat by its message id), the batch's pair failed in its run (its data
// for that run has a hole) when the batch is its job's (invalid: it failed
// validation, and its token, if it proves the batch genuine; a batch the
// pipeline did not produce changes no run), the watermark moved past it,
// and Term.
func (w *Writer) rejectBatch(ctx context.Context, s *batchState, msg jetstream.Msg, seq uint64, cause error, invalid bool) error {
	interval, symbol, _ := candles.ParseBatchSubject(msg.Subject())
	runID := msg.Headers().Get(candles.HeaderRunID)
	var claimed struct {
		RunID string `json:"run_id"`
	}
	if json.Unmarshal(msg.Data(), &claimed) == nil && claimed.RunID != "" {
		runID = claimed.RunID
	}
	reason := cause.Error()
	w.log.Warn("batch rejected", "run_id", runID, "symbol", symbol, "interval", interval, "stream_seq", seq, "reason", reason)
	ev := &candles.BatchRejected{
		EventHeader: candles.NewHeader(candles.KindBatchRejected, runID),
		Symbol:      symbol,
		Interval:    interval,
		Reason:      reason,
		Source:      "stream",
		StreamSeq:   seq,
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sideEffectTimeout)
	err := candles.PublishEvent(pctx, w.js, ev, "batch.rejected:"+candles.StreamCandles+":"+strconv.FormatUint(seq, 10), w.o.Now())
	cancel()
	if err != nil {
		w.log.Error("publish batch.rejected", "stream_seq", seq, "err", err)
	}
	var complete bool
	if invalid && runID != "" && symbol != "" && w.claimsGenuine(ctx, s, msg, seq, runID, symbol, interval) {
		failReason := fmt.Sprintf("batch rejected (stream_seq %d): %s", seq, reason)
		if !w.retry(ctx, msg, "fail pair of rejected batch", []any{"run_id", runID, "stream_seq", seq}, func(ctx context.Context) error {
			var err error
			complete, err = w.store().FailPair(ctx, runID, symbol, interval, failReason)
			return err
		}) {
			return nil
		}
	}
	if !w.retry(ctx, msg, "reject batch", []any{"stream_seq", seq}, func(ctx context.Context) error {
		return w.store().Reject(ctx, candles.StreamCandles, seq)
	}) {
		return nil
	}
	s.applied = seq
	if w.fenced() {
		return nil
	}
	if err := msg.TermWithReason(truncate(reason, maxTermReason)); err != nil {
		w.log.Warn("term rejected batch", "stream_seq", seq, "err", err)
	}
	if complete {
		w.announce(ctx)
	}
	return nil
}

// retry runs a database write until it succeeds or ctx ends, keeping msg
// ours with InProgress meanwhile. Skipping or NAKing instead would break the
// stream order. Each attempt runs to completion even if ctx ends during it,
// so a stop never interrupts the batch in hand. It reports success.
func (w *Writer) retry(ctx context.Context, msg jetstream.Msg, what string, attrs []any, write func(context.Context) error) bool {
	backoff := retryMin
	limit := min(retryMax, w.o.AckWait/2)
	for {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.o.AckWait)
		err := write(actx)
		cancel()
		w.observeDisk(ctx, err)
		if err == nil {
			return true
		}
		if w.noteErr(err) { // a damaged file: retrying cannot help
			return false
		}
		w.log.Error(what+"; retrying", append(attrs, "err", err, "retry_in", backoff)...)
		if err := msg.InProgress(); err != nil {
			w.log.Warn("extend ack deadline", append(attrs, "err", err)...)
		}
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = nextBackoff(backoff, limit)
	}
}

// truncate shortens s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ack acks a message whose effect is committed. A lost ack only means a
// redelivery, which the watermark skips.
func (w *Writer) ack(msg jetstream.Msg, seq uint64) {
	if w.fenced() {
		w.log.Debug("not acking: the writer lease was lost", "subject", msg.Subject(), "stream_seq", seq)
		return
	}
	if err := msg.Ack(); err != nil {
		w.log.Warn("ack", "subject", msg.Subject(), "stream_seq", seq, "err", err)
	}
}
