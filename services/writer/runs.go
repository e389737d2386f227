package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// consumeRuns feeds sync.started and pair.failed to the run tracking until
// ctx ends.
func (w *Writer) consumeRuns(ctx context.Context) error {
	return w.supervise(ctx, candles.StreamEvents, w.runsOnce)
}

// runsOnce runs one session of the run-events consumer. The EVENTS watermark
// is advanced after each event's effect is committed; since the handlers are
// idempotent that is at-least-once, and MaxAckPending 1 makes the server
// deliver strictly in order, so the watermark never passes an event that was
// not handled. Events are few (a handful per run), so one at a time costs
// nothing.
func (w *Writer) runsOnce(ctx context.Context) error {
	wm, err := w.watermark(ctx, candles.StreamEvents)
	if err != nil {
		return err
	}
	cons, err := w.ensureConsumer(ctx, candles.StreamEvents, jetstream.ConsumerConfig{
		Durable:     ConsumerRuns,
		Description: "candlekeep writer: tracks sync runs to announce sync.completed",
		FilterSubjects: []string{
			candles.EventSubject(candles.KindSyncStarted),
			candles.EventSubject(candles.KindPairFailed),
		},
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.o.AckWait,
		MaxAckPending: 1,
		MaxDeliver:    -1,
	}, wm)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("consume %s: %w", candles.StreamEvents, err)
	}
	defer it.Stop()
	applied := wm
	for ctx.Err() == nil {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("next run event: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("run event metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq <= applied {
			w.ack(msg, seq)
			continue
		}
		complete, out := w.handleRunEvent(ctx, msg, seq)
		if out == stopped {
			return nil
		}
		if !w.retry(ctx, msg, "record run event", []any{"stream_seq", seq}, func(ctx context.Context) error {
			return w.store().Advance(ctx, candles.StreamEvents, seq)
		}) {
			return nil
		}
		applied = seq
		if out == handled {
			w.ack(msg, seq)
		}
		if complete {
			w.announce(ctx)
		}
	}
	return nil
}

// watermark reads the watermark of stream, after checking that it counts
// in this very stream (bindStream), and rebases it when the stream's
// sequence numbers started over: its messages are then new to this
// database, and keeping the watermark would skip them all.
func (w *Writer) watermark(ctx context.Context, stream string) (uint64, error) {
	s, err := w.stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	if err := w.bindStream(ctx, s); err != nil {
		return 0, err
	}
	wm, err := w.store().Watermark(ctx, stream)
	if err != nil {
		return 0, err
	}
	st := s.CachedInfo().State
	if wm > st.LastSeq {
		w.log.Error("stream is behind the database watermark, so it was reset; reading it from the start",
			"stream", stream, "watermark", wm, "stream_last_seq", st.LastSeq)
		if err := w.store().ResetWatermark(ctx, stream, 0); err != nil {
			return 0, err
		}
		return 0, nil
	}
	if wm > 0 && st.Msgs > 0 && wm+1 < st.FirstSeq {
		w.log.Warn("messages expired from the stream before the database applied them",
			"stream", stream, "watermark", wm, "stream_first_seq", st.FirstSeq)
	}
	return wm, nil
}

// outcome is what became of a run event.
type outcome int

const (
	handled outcome = iota // its effect is committed; ack it
	dropped                // malformed and terminated
	stopped                // ctx ended while the database kept failing
)

// handleRunEvent applies one run event and reports whether it completed a
// run. A malformed event is logged and terminated.
func (w *Writer) handleRunEvent(ctx context.Context, msg jetstream.Msg, seq uint64) (complete bool, _ outcome) {
	var write func(context.Context) error
	var attrs []any
	var what string
	switch msg.Subject() {
	case candles.EventSubject(candles.KindSyncStarted):
		ev, err := decodeSyncStarted(msg.Data())
		if err != nil {
			return false, w.termEvent(msg, seq, err)
		}
		if ev.PairsTotal != len(ev.Pairs) {
			w.log.Warn("sync.started pairs_total differs from its pair list; tracking the list",
				"run_id", ev.RunID, "pairs_total", ev.PairsTotal, "pairs", len(ev.Pairs))
		}
		started := ev.Time
		if started.IsZero() {
			started = w.o.Now()
		}
		attrs = []any{"run_id", ev.RunID, "stream_seq", seq}
		write = func(ctx context.Context) error {
			var err error
			complete, err = w.store().RegisterRun(ctx, ev.RunID, ev.Pairs, started, ev.Reason, ev.Deadline, ev.Jobs)
			if err != nil {
				return err
			}
			return w.store().ExpectListing(ctx, ev.RunID, ev.Listing)
		}
		what = "run registered"
	case candles.EventSubject(candles.KindPairFailed):
		ev, err := decodePairFailed(msg.Data())
		if err != nil {
			return false, w.termEvent(msg, seq, err)
		}
		attrs = []any{"run_id", ev.RunID, "symbol", ev.Symbol, "interval", ev.Interval, "stream_seq", seq}
		write = func(ctx context.Context) error {
			var err error
			complete, err = w.store().FailPair(ctx, ev.RunID, ev.Symbol, ev.Interval, ev.Reason)
			return err
		}
		attrs = append(attrs, "reason", ev.Reason)
		what = "pair failed"
	default:
		return false, w.termEvent(msg, seq, fmt.Errorf("unexpected subject %q", msg.Subject()))
	}
	if !w.retry(ctx, msg, "track run event", attrs, write) {
		return false, stopped
	}
	w.log.Debug(what, attrs...)
	return complete, handled
}

// termEvent gives up on an event that can never be handled.
func (w *Writer) termEvent(msg jetstream.Msg, seq uint64, cause error) outcome {
	w.log.Error("malformed run event dropped", "subject", msg.Subject(), "stream_seq", seq, "err", cause)
	if err := msg.TermWithReason(truncate(cause.Error(), maxTermReason)); err != nil {
		w.log.Warn("term run event", "stream_seq", seq, "err", err)
	}
	return dropped
}

func decodeSyncStarted(data []byte) (candles.SyncStarted, error) {
	var ev candles.SyncStarted
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, fmt.Errorf("sync.started: %w", err)
	}
	if ev.RunID == "" {
		return ev, errors.New("sync.started: run_id is empty")
	}
	for i, p := range ev.Pairs {
		if !candles.ValidSymbol(p.Symbol) {
			return ev, fmt.Errorf("sync.started: pairs[%d].symbol %q is not a symbol", i, p.Symbol)
		}
		if _, err := candles.ParseInterval(p.Interval); err != nil {
			return ev, fmt.Errorf("sync.started: pairs[%d].interval: %w", i, err)
		}
	}
	for i, j := range ev.Jobs {
		if len(j.TokenSHA256) != 64 {
			return ev, fmt.Errorf("sync.started: jobs[%d].token_sha256 is not a hex SHA-256", i)
		}
		for _, r := range j.Ranges() {
			if r.Until < r.From {
				return ev, fmt.Errorf("sync.started: jobs[%d]: range [%d, %d) is negative", i, r.From, r.Until)
			}
		}
	}
	return ev, nil
}

func decodePairFailed(data []byte) (candles.PairFailed, error) {
	var ev candles.PairFailed
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, fmt.Errorf("pair.failed: %w", err)
	}
	switch {
	case ev.RunID == "":
		return ev, errors.New("pair.failed: run_id is empty")
	case ev.Symbol == "":
		return ev, errors.New("pair.failed: symbol is empty")
	case ev.Interval == "":
		return ev, errors.New("pair.failed: interval is empty")
	}
	return ev, nil
}

// announce publishes the pair.completed, sync.completed and sync.timeout
// events the database holds as not yet announced, marking each after its
// publish. A failure is logged and left for the next call (the next final
// batch, run event, progress or deadline tick, or the next start); the
// message ids make a repeat harmless.
func (w *Writer) announce(ctx context.Context) {
	w.announceMu.Lock()
	defer w.announceMu.Unlock()
	if w.damaged() != nil {
		return // nothing more is written to a damaged file
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sideEffectTimeout)
	defer cancel()
	pairs, err := w.store().PendingPairCompletions(ctx)
	if w.noteErr(err) {
		return
	}
	if err != nil {
		w.log.Error("read pending pair.completed events", "err", err)
	}
	for i := range pairs {
		ev := &pairs[i]
		id := "pair.completed:" + ev.RunID + ":" + ev.Symbol + ":" + ev.Interval
		if err := candles.PublishEvent(ctx, w.js, ev, id, w.o.Now()); err != nil {
			w.log.Error("publish pair.completed; will retry", "run_id", ev.RunID, "symbol", ev.Symbol, "interval", ev.Interval, "err", err)
			return
		}
		if err := w.store().MarkPairAnnounced(ctx, ev.RunID, ev.Symbol, ev.Interval); err != nil {
			w.log.Error("mark pair.completed published", "run_id", ev.RunID, "err", err)
			return
		}
		w.log.Debug("pair completed", "run_id", ev.RunID, "symbol", ev.Symbol, "interval", ev.Interval, "candles", ev.Candles)
	}
	runs, err := w.store().PendingAnnouncements(ctx)
	if w.noteErr(err) {
		return
	}
	if err != nil {
		w.log.Error("read pending sync.completed events", "err", err)
		return
	}
	for i := range runs {
		ev := &runs[i]
		if err := candles.PublishEvent(ctx, w.js, ev, "sync.completed:"+ev.RunID, w.o.Now()); err != nil {
			w.log.Error("publish sync.completed; will retry", "run_id", ev.RunID, "err", err)
			return
		}
		if err := w.store().MarkAnnounced(ctx, ev.RunID); err != nil {
			w.log.Error("mark sync.completed published", "run_id", ev.RunID, "err", err)
			return
		}
		w.auditDone(ctx, ev)
		w.log.Info("sync completed", "run_id", ev.RunID, "pairs_total", ev.PairsTotal, "pairs_ok", ev.PairsOK,
			"pairs_failed", ev.PairsFailed, "candles", ev.Candles, "candles_new", ev.CandlesNew,
			"candles_refetched", ev.CandlesRefetched, "repaired", ev.Repaired, "gaps_recorded", ev.GapsRecorded,
			"duration", ev.FinishedAt.Sub(ev.StartedAt).Round(time.Millisecond))
	}
	timeouts, err := w.store().PendingTimeouts(ctx)
	if w.noteErr(err) {
		return
	}
	if err != nil {
		w.log.Error("read pending sync.timeout events", "err", err)
		return
	}
	for i := range timeouts {
		ev := &timeouts[i]
		if err := candles.PublishEvent(ctx, w.js, ev, "sync.timeout:"+ev.RunID, w.o.Now()); err != nil {
			w.log.Error("publish sync.timeout; will retry", "run_id", ev.RunID, "err", err)
			return
		}
		if err := w.store().MarkTimeoutAnnounced(ctx, ev.RunID); err != nil {
			w.log.Error("mark sync.timeout published", "run_id", ev.RunID, "err", err)
			return
		}
		open := make([]string, len(ev.OpenPairs))
		for j, p := range ev.OpenPairs {
			open[j] = p.String()
		}
		w.log.Warn("sync timed out", "run_id", ev.RunID, "deadline", ev.Deadline, "open_pairs", open,
			"pairs_ok", ev.PairsOK, "pairs_failed", ev.PairsFailed)
	}
}

// reportProgress logs unfinished runs every ProgressEvery and retries
// announcements that failed. A run whose numbers did not move since its last
// report is not repeated, so a run abandoned by its fetchers does not fill
// the log.
func (w *Writer) reportProgress(ctx context.Context) error {
	type report struct {
		candles int64
		done    int
		at      time.Time
	}
	last := map[string]report{}
	t := time.NewTicker(w.o.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		w.announce(ctx)
		ps, err := w.store().RunProgress(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !w.noteErr(err) {
				w.log.Warn("read run progress", "err", err)
			}
			continue
		}
		now := w.o.Now()
		next := make(map[string]report, len(ps))
		for _, p := range ps {
			prev, seen := last[p.RunID]
			if seen && prev.candles == p.Candles && prev.done == p.PairsDone {
				next[p.RunID] = prev
				continue
			}
			since, base := p.StartedAt, int64(0)
			if seen {
				since, base = prev.at, prev.candles
			}
			rate := 0.0
			if secs := now.Sub(since).Seconds(); secs > 0 {
				rate = math.Round(float64(p.Candles-base)/secs*10) / 10
			}
			percent, eta := runETA(p, now)
			w.log.Info("sync progress", "run_id", p.RunID, "pairs_done", p.PairsDone, "pairs_total", p.PairsTotal,
				"percent", percent, "eta", eta, "candles", p.Candles, "rate", rate, "wal_bytes", w.walBytes())
			next[p.RunID] = report{candles: p.Candles, done: p.PairsDone, at: now}
		}
		last = next
	}
}

// runETA is how far a run is, in percent of its pairs, and when it should
// end at the pace its pairs have been finishing: "unknown" until the first
// pair is done (a backfill's first pair may take most of the run).
func runETA(p store.Progress, now time.Time) (percent float64, eta string) {
	if p.PairsTotal <= 0 {
		return 0, "unknown"
	}
	percent = math.Round(float64(p.PairsDone)/float64(p.PairsTotal)*1000) / 10
	elapsed := now.Sub(p.StartedAt)
	if p.PairsDone == 0 || elapsed <= 0 {
		return percent, "unknown"
	}
	left := time.Duration(float64(elapsed) * float64(p.PairsTotal-p.PairsDone) / float64(p.PairsDone))
	return percent, left.Round(time.Second).String()
}
