package writer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// streamIdentity is what tells two streams of the same name apart: the
// creation time the server records in the stream's state. It survives
// server restarts and CreateOrUpdateStream, and changes when the stream is
// deleted and created again or the server's store is wiped.
func streamIdentity(info *jetstream.StreamInfo) string {
	return info.Created.UTC().Format(time.RFC3339Nano)
}

// stream looks stream up, creating the writer's streams again if it is
// gone (deleted while the writer ran, or a server that lost its store), and
// says so with resource.recreated, instead of failing until an operator
// notices.
func (w *Writer) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := w.js.Stream(ctx, name)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	w.log.Error("stream is gone; creating it again", "stream", name)
	if err := candles.EnsureStreams(ctx, w.js, w.o.Streams); err != nil {
		return nil, fmt.Errorf("create stream %s again: %w", name, err)
	}
	if s, err = w.js.Stream(ctx, name); err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	w.recreated(ctx, "stream", name, "", streamIdentity(s.CachedInfo()))
	return s, nil
}

// recreated publishes resource.recreated for a stream or consumer the
// writer created again; instance (the new stream's identity, or the
// consumer's creation time) makes the message id, so two goroutines that
// both noticed report it once.
func (w *Writer) recreated(ctx context.Context, resource, name, stream, instance string) {
	what := resource + " " + name // "stream CANDLES", the fetcher's form
	if stream != "" {
		what = resource + " " + stream + " > " + name // "consumer EVENTS > writer-runs"
	}
	ev := &candles.ResourceRecreated{
		EventHeader: candles.NewHeader(candles.KindResourceRecreated, ""),
		Resource:    what,
		Service:     ServiceName,
		Reason:      "not found while the writer ran",
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sideEffectTimeout)
	defer cancel()
	id := "resource.recreated:" + resource + ":" + stream + ":" + name + ":" + instance
	if err := candles.PublishEvent(pctx, w.js, ev, id, w.o.Now()); err != nil {
		w.log.Error("publish resource.recreated", "resource", resource, "name", name, "err", err)
		return
	}
	w.log.Warn("resource created again", "resource", resource, "name", name, "stream", stream)
}

// bindStream checks that the database's watermark of s counts in s. When
// it counted in another stream of the same name, every sequence number is
// new: the store resets the watermark to 0 and marks a full audit due (in
// one transaction), and stream.replaced tells operators that batches of the
// old stream the database never applied are gone, so the next sync audits
// every pair over its full range.
func (w *Writer) bindStream(ctx context.Context, s jetstream.Stream) error {
	info := s.CachedInfo()
	name, id := info.Config.Name, streamIdentity(info)
	b, err := w.store().BindStream(ctx, name, id)
	if err != nil {
		return err
	}
	switch {
	case b.Adopted:
		w.log.Info("watermark bound to the stream", "stream", name, "identity", id, "watermark", b.OldWatermark)
	case b.Replaced:
		w.log.Error("stream was replaced: reading it from the start; a full gap audit is due at the next sync",
			"stream", name, "old_identity", b.Previous, "new_identity", id, "old_watermark", b.OldWatermark,
			"stream_last_seq", info.State.LastSeq)
		ev := &candles.StreamReplaced{
			EventHeader:  candles.NewHeader(candles.KindStreamReplaced, ""),
			Stream:       name,
			OldIdentity:  b.Previous,
			NewIdentity:  id,
			OldWatermark: b.OldWatermark,
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sideEffectTimeout)
		defer cancel()
		if err := candles.PublishEvent(pctx, w.js, ev, "stream.replaced:"+name+":"+id, w.o.Now()); err != nil {
			// The reset is committed; the event is lost but the log and
			// the full audit flag (candlekeep coverage) remain.
			w.log.Error("publish stream.replaced", "stream", name, "err", err)
		}
	}
	return nil
}

// auditDone clears the full audit flag once a run that started after it
// was set completes with every pair the database holds ok: that run's plan
// measured each against its full expected range, repaired what was missing
// and synced it to the present.
func (w *Writer) auditDone(ctx context.Context, ev *candles.SyncCompleted) {
	if ev.PairsFailed > 0 || ev.PairsOK == 0 {
		return
	}
	cleared, err := w.store().ClearFullAudit(ctx, ev.RunID)
	if err != nil {
		w.log.Error("clear the full audit flag", "run_id", ev.RunID, "err", err)
		return
	}
	if cleared {
		w.log.Info("full gap audit done", "run_id", ev.RunID, "pairs", ev.PairsOK)
	}
}
