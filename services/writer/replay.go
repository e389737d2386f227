package writer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// replayIdleTimeout bounds the wait for the next message of a replay: the
// messages exist already, so a long silence means the server is in trouble.
const replayIdleTimeout = 30 * time.Second

// handleReplay answers candles.api.replay: it re-applies CANDLES from the
// requested time or sequence up to the stream's last message at the time of
// the request, and replies with a ReplayResponse. A bad request gets error
// 400 naming the field; a replay cut short gets 500 (or 503 when the writer
// is stopping) with the sequence to resume from.
//
// The replay upserts each batch in its own transaction and never touches the
// watermark or the run tracking, so the main consumer goes on between its
// batches and a replay over batches already applied changes nothing (unless
// a later batch revised the same candles: then the replayed, older values
// win until those later batches are replayed too). Replays run one at a
// time.
func (w *Writer) handleReplay(ctx context.Context, req micro.Request) {
	r, err := DecodeReplayRequest(req.Data())
	if err != nil {
		w.respondError(req, "400", err.Error())
		return
	}
	if !w.replays.enter() {
		w.respondError(req, "503", "replay: the writer is stopping; ask again when it is back")
		return
	}
	defer w.replays.leave()
	st, release, err := w.useStore()
	if err != nil {
		w.respondError(req, "503", "replay: "+err.Error())
		return
	}
	resp, err := w.replay(ctx, st, r)
	release()
	if w.noteErr(err) {
		w.respondError(req, "500", "replay: "+w.damagedErr().Error())
		return
	}
	if err != nil {
		resume := r.FromSeq
		if resp.ToSeq > 0 {
			resume = resp.ToSeq + 1
		}
		attrs := []any{"since", r.Since, "from_seq", r.FromSeq, "symbols", r.Symbols, "batches", resp.Batches, "err", err}
		if ctx.Err() != nil {
			w.log.Warn("replay interrupted by shutdown", attrs...)
			w.respondError(req, "503", fmt.Sprintf("replay: the writer stopped after %d batches; resume with from_seq %d", resp.Batches, resume))
			return
		}
		w.log.Error("replay", attrs...)
		w.respondError(req, "500", fmt.Sprintf("replay: %v (after %d batches; resume with from_seq %d)", err, resp.Batches, resume))
		return
	}
	if err := req.RespondJSON(resp); err != nil {
		w.log.Warn("respond to replay request", "err", err)
	}
}

// replay re-applies the batches of r. It stops at the stream's last
// sequence as of its start, so batches published meanwhile are left to the
// main consumer.
func (w *Writer) replay(ctx context.Context, st Store, r candles.ReplayRequest) (candles.ReplayResponse, error) {
	var resp candles.ReplayResponse
	began := time.Now()
	stream, err := w.js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		return resp, fmt.Errorf("stream %s: %w", candles.StreamCandles, err)
	}
	state := stream.CachedInfo().State
	w.log.Info("replay started", "since", r.Since, "from_seq", r.FromSeq, "symbols", r.Symbols, "stream_last_seq", state.LastSeq)
	if state.Msgs == 0 || r.FromSeq > state.LastSeq {
		w.log.Info("replay done: nothing to replay", "stream_first_seq", state.FirstSeq, "stream_last_seq", state.LastSeq)
		return resp, nil
	}
	legacy, err := st.LegacyCutoff(ctx, candles.StreamCandles, streamIdentity(stream.CachedInfo()), state.LastSeq)
	if err != nil {
		return resp, err
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if r.FromSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.FromSeq
	} else {
		since, err := time.Parse(time.RFC3339, r.Since)
		if err != nil {
			return resp, fmt.Errorf("since: %w", err) // DecodeReplayRequest checked it
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	for _, s := range r.Symbols {
		cfg.FilterSubjects = append(cfg.FilterSubjects, candles.SubjectBatchPrefix+"*."+s)
	}
	cons, err := w.js.OrderedConsumer(ctx, candles.StreamCandles, cfg)
	if err != nil {
		return resp, fmt.Errorf("replay consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(batchMaxAckPending, batchBufferBytes))
	if err != nil {
		return resp, fmt.Errorf("replay consumer: %w", err)
	}
	defer it.Stop()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		w.log.Info("replay done: nothing at or after the start", "since", r.Since, "from_seq", r.FromSeq)
		return resp, nil
	}
	for {
		mctx, cancel := context.WithTimeout(ctx, replayIdleTimeout)
		msg, err := it.Next(jetstream.NextContext(mctx))
		cancel()
		if err != nil {
			return resp, fmt.Errorf("next batch: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return resp, fmt.Errorf("batch metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq > state.LastSeq {
			break // published after the request
		}
		if resp.FromSeq == 0 {
			resp.FromSeq = seq
		}
		b, err := candles.DecodeBatch(msg.Subject(), msg.Data())
		if err == nil && !w.o.AllowUnplanned && (b.Token != "" || seq > legacy) {
			// Only the pipeline's batches are replayed: a forgery the
			// consumer refused stays refused. Runs that finished since
			// are fine: their grants are in the database.
			var g store.Grant
			if g, err = st.RunGrant(ctx, b.RunID, b.Symbol, b.Interval); err != nil {
				return resp, fmt.Errorf("stream_seq %d: %w", seq, err)
			}
			err = w.judge(b, g, seq)
		}
		if err != nil {
			resp.Skipped++
			resp.ToSeq = seq
			w.log.Debug("replay skipped a batch that cannot be applied", "stream_seq", seq, "reason", err)
		} else {
			a, err := st.Upsert(ctx, b)
			if err != nil {
				return resp, fmt.Errorf("stream_seq %d: %w", seq, err)
			}
			resp.ToSeq = seq
			resp.Batches++
			resp.Candles += int64(len(b.Candles))
			resp.Inserted += int64(a.Inserted)
			resp.Updated += int64(a.Updated)
		}
		if seq >= state.LastSeq || meta.NumPending == 0 {
			break
		}
	}
	w.log.Info("replay done", "from_seq", resp.FromSeq, "to_seq", resp.ToSeq, "batches", resp.Batches,
		"candles", resp.Candles, "inserted", resp.Inserted, "updated", resp.Updated, "skipped", resp.Skipped,
		"duration", time.Since(began).Round(time.Millisecond))
	return resp, nil
}

// DecodeReplayRequest parses a replay request strictly: unknown fields,
// trailing data, neither or both of since and from_seq, a since that is not
// an RFC 3339 time, a from_seq of 0 and invalid symbols are errors that name
// the field. Symbols are deduplicated.
func DecodeReplayRequest(data []byte) (candles.ReplayRequest, error) {
	var raw struct {
		Since   *string  `json:"since"`
		FromSeq *uint64  `json:"from_seq"`
		Symbols []string `json:"symbols"`
	}
	if len(bytes.TrimSpace(data)) > 0 {
		if err := candles.DecodeStrict(data, &raw, "since, from_seq, symbols", replayFieldType); err != nil {
			return candles.ReplayRequest{}, err
		}
	}
	var r candles.ReplayRequest
	switch {
	case raw.Since != nil && raw.FromSeq != nil:
		return r, errors.New("from_seq: give either since or from_seq, not both")
	case raw.Since == nil && raw.FromSeq == nil:
		return r, errors.New(`since: missing; give since (an RFC 3339 time such as "2024-01-01T00:00:00Z") or from_seq (a CANDLES stream sequence, 1 or more)`)
	case raw.FromSeq != nil:
		if *raw.FromSeq == 0 {
			return r, errors.New("from_seq: 0 is not a stream sequence (they start at 1)")
		}
		r.FromSeq = *raw.FromSeq
	default:
		if _, err := time.Parse(time.RFC3339, *raw.Since); err != nil {
			return r, fmt.Errorf("since: %q is not an RFC 3339 time such as 2024-01-01T00:00:00Z", *raw.Since)
		}
		r.Since = *raw.Since
	}
	if len(raw.Symbols) > candles.MaxSymbols {
		return candles.ReplayRequest{}, fmt.Errorf("symbols: %d symbols, at most %d per request", len(raw.Symbols), candles.MaxSymbols)
	}
	seen := make(map[string]bool, len(raw.Symbols))
	for i, s := range raw.Symbols {
		if !candles.ValidSymbol(s) {
			return candles.ReplayRequest{}, fmt.Errorf("symbols[%d]: %q is not a symbol (2-20 upper-case letters and digits, e.g. BTCUSDT)", i, s)
		}
		if !seen[s] {
			seen[s] = true
			r.Symbols = append(r.Symbols, s)
		}
	}
	return r, nil
}

func replayFieldType(field string) string {
	switch {
	case field == "":
		return `{"since":"2024-01-01T00:00:00Z","symbols":["BTCUSDT"]} or {"from_seq":1}`
	case field == "since":
		return "an RFC 3339 time string"
	case field == "from_seq":
		return "a stream sequence, a whole number of 1 or more"
	default:
		return `symbols as a list of strings such as ["BTCUSDT"]`
	}
}
