package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// handleSyncAPI serves candles.api.sync: it validates the request, queues it
// on the SYNC stream with a fresh run_id and answers {run_id, pairs}.
func (f *Fetcher) handleSyncAPI(req micro.Request) {
	r, err := candles.DecodeSyncRequest(req.Data())
	if err != nil {
		_ = req.Error("400", "invalid sync request: "+err.Error(), nil)
		return
	}
	runID := newRunID(f.o.Now())
	msg := nats.NewMsg(candles.SubjectSyncRequest)
	msg.Header.Set(candles.HeaderRunID, runID)
	msg.Data = req.Data()
	ctx, cancel := context.WithTimeout(f.runCtx, 5*time.Second)
	defer cancel()
	if _, err := f.js.PublishMsg(ctx, msg, jetstream.WithMsgID("sync.request:"+runID)); err != nil {
		f.log.Error("cannot queue sync request", "run_id", runID, "err", err)
		_ = req.Error("503", "cannot queue the request on the SYNC stream: "+err.Error(), nil)
		return
	}
	symbols, intervals := f.pairSet(r)
	_ = req.RespondJSON(candles.SyncAccepted{RunID: runID, Pairs: len(symbols) * len(intervals)})
}

// pairSet applies the configured defaults to a request.
func (f *Fetcher) pairSet(r candles.SyncRequest) (symbols, intervals []string) {
	symbols, intervals = r.Symbols, r.Intervals
	if symbols == nil {
		symbols = f.o.Symbols
	}
	if intervals == nil {
		intervals = f.o.Intervals
	}
	return symbols, intervals
}

// handleRequest turns one sync request from the SYNC stream into a run: a
// sync.started event and one job per pair. Its ids are derived from the
// run_id, so a redelivered request republishes nothing new.
func (f *Fetcher) handleRequest(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		f.log.Error("sync request without metadata; dropped", "err", err)
		_ = msg.Term()
		return
	}
	runID := msg.Headers().Get(candles.HeaderRunID)
	if runID == "" {
		runID = streamRunID(meta)
	}
	log := f.log.With("run_id", runID, "stream_seq", meta.Sequence.Stream)
	req, err := candles.DecodeSyncRequest(msg.Data())
	if err != nil {
		log.Warn("sync request refused", "err", err)
		f.event(ctx, log, &candles.SyncFailed{EventHeader: candles.NewHeader(candles.KindSyncFailed, runID),
			Reason: "invalid sync request: " + err.Error()}, "sync.failed:"+runID)
		_ = msg.TermWithReason("invalid sync request")
		return
	}
	jobs, err := f.plan(ctx, runID, req)
	if err != nil {
		if ctx.Err() != nil {
			_ = msg.Nak()
			return
		}
		if int(meta.NumDelivered) >= requestMaxDeliver {
			log.Error("sync request failed", "err", err, "attempts", meta.NumDelivered)
			f.event(ctx, log, &candles.SyncFailed{EventHeader: candles.NewHeader(candles.KindSyncFailed, runID),
				Reason: err.Error()}, "sync.failed:"+runID)
			_ = msg.TermWithReason("planning failed")
			return
		}
		delay := backoff(f.o.RetryBase, meta.NumDelivered)
		log.Warn("cannot plan the sync yet; retrying", "err", err, "retry_in", delay)
		_ = msg.NakWithDelay(delay)
		return
	}
	pairs := make([]candles.Pair, len(jobs))
	for i, j := range jobs {
		pairs[i] = candles.Pair{Symbol: j.Symbol, Interval: j.Interval}
	}
	started := &candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, runID),
		Pairs: pairs, PairsTotal: len(pairs), Reason: req.Reason}
	if err := candles.PublishEvent(ctx, f.js, started, "sync.started:"+runID, f.o.Now()); err != nil {
		log.Warn("cannot start the run; retrying", "err", err)
		_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
		return
	}
	for _, j := range jobs {
		data, _ := json.Marshal(j)
		if _, err := f.js.Publish(ctx, candles.JobSubject(j.Interval, j.Symbol), data,
			jetstream.WithMsgID("job:"+runID+":"+j.Symbol+":"+j.Interval)); err != nil {
			log.Warn("cannot queue jobs; retrying", "err", err)
			_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
			return
		}
	}
	_ = msg.Ack()
	log.Info("sync started", "pairs", len(jobs), "reason", req.Reason)
}

// plan resolves a request into jobs: the configured pairs where it names
// none, and per pair the range [from, until) to fetch: from Start, else from
// the last stored candle (fetched again, so a candle rewritten by the
// exchange is corrected), else Lookback bars back.
func (f *Fetcher) plan(ctx context.Context, runID string, req candles.SyncRequest) ([]candles.Job, error) {
	symbols, intervals := f.pairSet(req)
	start, end, err := req.Range()
	if err != nil {
		return nil, err
	}
	until := f.o.Now().UnixMilli()
	if end != nil {
		until = end.UnixMilli()
	}
	lookback := req.Lookback
	if lookback == 0 {
		lookback = f.o.Lookback
	}
	pairs := make([]candles.Pair, 0, len(symbols)*len(intervals))
	for _, s := range symbols {
		for _, iv := range intervals {
			pairs = append(pairs, candles.Pair{Symbol: s, Interval: iv})
		}
	}
	var stored map[candles.Pair]candles.PairCoverage
	if start == nil {
		if stored, err = f.coverage(ctx, pairs); err != nil {
			return nil, err
		}
	}
	jobs := make([]candles.Job, 0, len(pairs))
	for _, p := range pairs {
		iv, err := candles.ParseInterval(p.Interval)
		if err != nil {
			return nil, err
		}
		var from int64
		switch c, ok := stored[p]; {
		case start != nil:
			from = iv.Align(start.UnixMilli())
			if from < start.UnixMilli() {
				from = iv.Next(from)
			}
		case ok && c.Count > 0:
			from = c.Last
		default:
			from = iv.Add(iv.Align(until-1), -lookback)
		}
		jobs = append(jobs, candles.Job{V: candles.Version, RunID: runID, Symbol: p.Symbol, Interval: p.Interval, From: from, Until: until})
	}
	return jobs, nil
}

// coverage asks the writer what it stores for pairs.
func (f *Fetcher) coverage(ctx context.Context, pairs []candles.Pair) (map[candles.Pair]candles.PairCoverage, error) {
	data, _ := json.Marshal(candles.CoverageRequest{Pairs: pairs})
	ctx, cancel := context.WithTimeout(ctx, DefaultCoverageTimeout)
	defer cancel()
	resp, err := f.o.Conn.RequestWithContext(ctx, candles.SubjectAPICoverage, data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("ask the writer for stored ranges: no writer is running (%s)", candles.SubjectAPICoverage)
		}
		return nil, fmt.Errorf("ask the writer for stored ranges: %w", err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, fmt.Errorf("ask the writer for stored ranges: %s %s", code, resp.Header.Get(micro.ErrorHeader))
	}
	var cr candles.CoverageResponse
	if err := json.Unmarshal(resp.Data, &cr); err != nil {
		return nil, fmt.Errorf("ask the writer for stored ranges: bad reply: %w", err)
	}
	out := make(map[candles.Pair]candles.PairCoverage, len(cr.Pairs))
	for _, c := range cr.Pairs {
		out[candles.Pair{Symbol: c.Symbol, Interval: c.Interval}] = c
	}
	return out, nil
}
