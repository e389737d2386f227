package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// StillStarting is the 503 message of a sync request that came while the
// fetcher was still opening its buckets.
const StillStarting = "still starting (opening its buckets); ask again"

// handleSyncAPI serves candles.api.sync: it validates the request, queues it
// on the SYNC stream with a fresh run_id and answers {run_id, pairs}.
func (f *Fetcher) handleSyncAPI(req micro.Request) {
	r, err := candles.DecodeSyncRequest(req.Data())
	if err != nil {
		_ = req.Error("400", "invalid sync request: "+err.Error(), nil)
		return
	}
	if err := f.checkServable(r); err != nil {
		_ = req.Error("400", "invalid sync request: "+err.Error(), nil)
		return
	}
	// A request is accepted only for a run that can start: every stream,
	// consumer and bucket is in place (or was just recreated).
	rctx, rcancel := context.WithTimeout(f.runCtx, 10*time.Second)
	select {
	case <-f.stateOpen:
		err = f.heal.ready(rctx)
	case <-rctx.Done():
		// On a busy R3 cluster opening the buckets can take seconds.
		err = fmt.Errorf("%w: %s", errUnavailable, StillStarting)
	}
	rcancel()
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), errUnavailable.Error()+": ")
		f.log.Warn("sync request refused: the fetcher cannot work", "err", msg)
		_ = req.Error("503", msg, nil)
		return
	}
	if r.DryRun {
		ctx, cancel := context.WithTimeout(f.runCtx, time.Minute)
		defer cancel()
		plan, err := f.dryRun(ctx, r)
		if err != nil {
			_ = req.Error("503", "cannot plan the sync: "+err.Error(), nil)
			return
		}
		_ = req.RespondJSON(plan)
		return
	}
	if sizeChecked(r) {
		// Answer a plan too big to start unconfirmed here, where the
		// operator waits for the answer. Planning an explicit range asks
		// nothing of the writer, so this is cheap; if it fails anyway the
		// request is queued and the same check refuses it when planned.
		ctx, cancel := context.WithTimeout(f.runCtx, 10*time.Second)
		jobs, _, err := f.plan(ctx, "size-check", r)
		cancel()
		if err == nil {
			if err := f.checkSize(r, jobs); err != nil {
				_ = req.Error("400", "sync request refused: "+err.Error(), nil)
				return
			}
		}
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
	cfg := f.settings()
	if symbols == nil {
		symbols = cfg.Symbols
	}
	if intervals == nil {
		intervals = cfg.Intervals
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
	if req.DryRun {
		log.Warn("dry run on the SYNC stream refused; use candles.api.sync")
		f.event(ctx, log, &candles.SyncFailed{EventHeader: candles.NewHeader(candles.KindSyncFailed, runID),
			Reason: "dry_run: only candles.api.sync answers dry runs (nats req candles.api.sync ...)"}, "sync.failed:"+runID)
		_ = msg.TermWithReason("dry run on the stream")
		return
	}
	if err := f.checkServable(req); err != nil {
		log.Warn("sync request refused", "err", err)
		f.event(ctx, log, &candles.SyncFailed{EventHeader: candles.NewHeader(candles.KindSyncFailed, runID),
			Reason: "invalid sync request: " + err.Error()}, "sync.failed:"+runID)
		_ = msg.TermWithReason("invalid sync request")
		return
	}
	jobs, notes, err := f.plan(ctx, runID, req)
	if err == nil && sizeChecked(req) {
		if err := f.checkSize(req, jobs); err != nil {
			log.Warn("sync request refused", "err", err)
			f.event(ctx, log, &candles.SyncFailed{EventHeader: candles.NewHeader(candles.KindSyncFailed, runID),
				Reason: "sync request refused: " + err.Error()}, "sync.failed:"+runID)
			_ = msg.TermWithReason("plan too big without confirm")
			return
		}
	}
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
		log.Warn("cannot plan the sync yet; retrying", "err", err, "attempt", meta.NumDelivered,
			"of", requestMaxDeliver, "retry_in", delay.Round(time.Millisecond))
		f.event(ctx, log, &candles.SyncWaiting{EventHeader: candles.NewHeader(candles.KindSyncWaiting, runID),
			Reason: err.Error(), Attempt: int(meta.NumDelivered), MaxAttempts: requestMaxDeliver, RetryIn: delay.Seconds()},
			"sync.waiting:"+runID+":"+strconv.FormatUint(meta.NumDelivered, 10))
		_ = msg.NakWithDelay(delay)
		return
	}
	if coalesce(req) {
		var skipped []candles.Pair
		var syncing []string
		if jobs, skipped, syncing, err = f.leaveOutBusy(ctx, runID, jobs); err != nil {
			if ctx.Err() != nil {
				_ = msg.Nak()
				return
			}
			log.Warn("cannot tell which pairs are being synced; retrying", "err", err)
			_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
			return
		}
		if len(skipped) > 0 {
			names := make([]string, len(skipped))
			for i, p := range skipped {
				names[i] = p.String()
			}
			reason := "already being synced by an unfinished run"
			log.Info("pairs skipped: a run already syncing them has not finished", "skipped", names,
				"syncing_runs", syncing, "pairs_started", len(jobs), "reason", req.Reason)
			f.event(ctx, log, &candles.SyncSkipped{EventHeader: candles.NewHeader(candles.KindSyncSkipped, runID),
				Pairs: skipped, SyncingRuns: syncing, PairsStarted: len(jobs), Reason: reason}, "sync.skipped:"+runID)
		}
		if len(jobs) == 0 {
			// Nothing to start: no sync.started, so the writer tracks no run.
			_ = msg.Ack()
			return
		}
	}
	// Each job gets its secret token: its batches carry it, sync.started
	// only its hash, so the writer applies only what this plan asked for.
	grants := make([]candles.JobGrant, len(jobs))
	for i := range jobs {
		token, err := candles.NewJobToken()
		if err != nil {
			log.Error("cannot make job tokens; retrying", "err", err)
			_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
			return
		}
		j := &jobs[i]
		j.Token = token
		grants[i] = candles.JobGrant{Symbol: j.Symbol, Interval: j.Interval, From: j.From, Until: j.Until,
			Repair: j.Repair, TokenSHA256: candles.TokenSHA256(token)}
	}
	pairs := make([]candles.Pair, len(jobs))
	var listing []candles.Pair
	for i, j := range jobs {
		pairs[i] = candles.Pair{Symbol: j.Symbol, Interval: j.Interval}
		if j.From == candles.MustInterval(j.Interval).Align(listingFloor) && len(j.Repair) == 0 {
			listing = append(listing, pairs[i])
		}
	}
	started := &candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, runID),
		Pairs: pairs, PairsTotal: len(pairs), Reason: req.Reason, Notes: notes, Listing: listing, Jobs: grants}
	if len(jobs) > 0 {
		started.Deadline = jobs[0].Deadline
	}
	started.V, started.Time = candles.Version, f.o.Now().UTC()
	startedData, err := json.Marshal(started)
	if err != nil {
		log.Error("encode sync.started", "err", err)
		_ = msg.TermWithReason("cannot encode sync.started")
		return
	}
	startedAck, err := f.js.Publish(ctx, candles.EventSubject(candles.KindSyncStarted), startedData, jetstream.WithMsgID("sync.started:"+runID))
	if err != nil {
		log.Warn("cannot start the run; retrying", "err", err)
		_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
		return
	}
	var queued map[candles.Pair]bool
	if startedAck.Duplicate {
		// An earlier delivery of this request stored sync.started with
		// its own job tokens, and queued some of its jobs. Those stand;
		// a job it did not queue would carry a token the writer does not
		// know, so its pair fails instead (the next sync fetches it).
		if queued, err = f.queuedJobs(ctx, runID, jobs); err != nil {
			log.Warn("cannot tell which jobs an earlier attempt queued; retrying", "err", err)
			_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
			return
		}
	}
	for _, j := range jobs {
		if startedAck.Duplicate {
			if !queued[candles.Pair{Symbol: j.Symbol, Interval: j.Interval}] {
				f.event(ctx, log, &candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, runID),
					Symbol: j.Symbol, Interval: j.Interval,
					Reason: "its job was not queued before the sync request was retried; the next sync fetches it"},
					pairFailedID(j))
			}
			continue
		}
		data, _ := json.Marshal(j)
		if _, err := f.js.Publish(ctx, candles.JobSubject(j.Interval, j.Symbol), data,
			jetstream.WithMsgID("job:"+runID+":"+j.Symbol+":"+j.Interval)); err != nil {
			log.Warn("cannot queue jobs; retrying", "err", err)
			_ = msg.NakWithDelay(backoff(f.o.RetryBase, meta.NumDelivered))
			return
		}
	}
	_ = msg.Ack()
	log.Info("sync started", "pairs", len(jobs), "reason", req.Reason, "notes", notes)
}

// queuedJobs reports which of jobs' pairs have a job of runID in JOBS: an
// earlier attempt queued it and no fetcher has finished it yet. A job that
// finished is gone from JOBS; the pair.failed its pair then gets changes
// nothing, since the writer keeps a pair's first resolution.
func (f *Fetcher) queuedJobs(ctx context.Context, runID string, jobs []candles.Job) (map[candles.Pair]bool, error) {
	stream, err := f.js.Stream(ctx, candles.StreamJobs)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", candles.StreamJobs, err)
	}
	out := map[candles.Pair]bool{}
	for _, j := range jobs {
		m, err := stream.GetLastMsgForSubject(ctx, candles.JobSubject(j.Interval, j.Symbol))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up the job of %s/%s: %w", j.Symbol, j.Interval, err)
		}
		if other, derr := decodeJob(m.Data); derr == nil && other.RunID == runID {
			out[candles.Pair{Symbol: j.Symbol, Interval: j.Interval}] = true
		}
	}
	return out, nil
}

// coalesce tells whether a request leaves out the pairs a run is already
// syncing. Requests "from the last stored candle" (the schedule, catch-up,
// a plain `nats pub`) do: the run in flight brings the pair up to date, and
// one more run queued behind it would only fetch the same pages again, so
// ticks during a long backfill no longer pile up. An explicit range
// ("start", or "listing") is an operator's deliberate backfill and always
// runs; it does not double-fetch either: its job waits for the pair's lock
// and then skips what the run before it fetched (jobRun.spans).
func coalesce(req candles.SyncRequest) bool {
	return req.Start == "" && !req.Listing()
}

// leaveOutBusy splits planned jobs into those to queue and the pairs left
// out because an unfinished job of another run is in JOBS for them. JOBS is
// a work queue: a job message stays there until it is acked or terminated,
// so the last message on a pair's job subject says exactly whether a run is
// still syncing the pair, with no state of our own to keep right. A job of
// runID itself (a redelivered request) is not another run. Two fetcher
// processes planning at the same moment may both find a pair free; their
// jobs still fetch one after the other (the pair lock), the second skipping
// what the first fetched.
func (f *Fetcher) leaveOutBusy(ctx context.Context, runID string, jobs []candles.Job) (keep []candles.Job, skipped []candles.Pair, syncing []string, err error) {
	stream, err := f.js.Stream(ctx, candles.StreamJobs)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("stream %s: %w", candles.StreamJobs, err)
	}
	keep = jobs[:0:0]
	for _, j := range jobs {
		m, err := stream.GetLastMsgForSubject(ctx, candles.JobSubject(j.Interval, j.Symbol))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			keep = append(keep, j)
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("look up the job of %s/%s: %w", j.Symbol, j.Interval, err)
		}
		other, derr := decodeJob(m.Data)
		// A malformed job, or one past its run's deadline, is terminated
		// when it is next delivered: no run is syncing the pair. (The
		// deadline also bounds how long a job whose deliveries ran out
		// while no fetcher saw the advisory can hold its pair.)
		dead := derr != nil || (!other.Deadline.IsZero() && !f.o.Now().Before(other.Deadline))
		if dead || other.RunID == runID {
			keep = append(keep, j)
			continue
		}
		skipped = append(skipped, candles.Pair{Symbol: j.Symbol, Interval: j.Interval})
		if !slices.Contains(syncing, other.RunID) {
			syncing = append(syncing, other.RunID)
		}
	}
	return keep, skipped, syncing, nil
}

// listingFloor is where a full-history request starts looking: before
// Binance's first candles, so the first page begins at each pair's listing.
// No range starts earlier: a start (or a lookback that reaches) before it
// is moved to it, with a note in sync.started, and the first page then
// begins at each pair's listing, which costs no extra request.
var listingFloor = time.Date(2017, 7, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

// Limits of a run that starts without "confirm": a plan past either is
// refused, the error quoting its dry-run estimate. A million klines
// requests is two million weight, over five hours of Binance's default
// 6000 weight a minute; a day outlasts the daily schedule, so the run would
// overlap the next ones. Plans that big are more often a slip (a start
// year, a long interval list, 1s candles) than an intent.
const (
	maxPlanRequests = 1_000_000
	maxPlanSeconds  = 24 * 60 * 60
)

// sizeChecked tells whether a request's plan is checked against the size
// limits: an explicit range ("start", or "listing") is. A request from the
// last stored candle is bounded by the configured pair set and lookback,
// and the schedule and the start-up catch-up must never be refused.
func sizeChecked(r candles.SyncRequest) bool { return r.Start != "" }

// checkServable refuses what the exchange can never serve: a start in the
// future (by the exchange's clock as last read; no request is made) or an
// end before Binance's first candles.
func (f *Fetcher) checkServable(r candles.SyncRequest) error {
	start, end, err := r.Range()
	if err != nil {
		return err
	}
	now := f.o.Now().Add(f.clock.offsetEstimate()).UTC()
	if start != nil && start.After(now) {
		return &candles.FieldError{Field: "start", Msg: fmt.Sprintf(
			"%s is in the future (the exchange's clock says %s): no candle has opened there yet; give a past time, or omit start to sync from the last stored candle",
			start.Format(time.RFC3339), now.Format(time.RFC3339))}
	}
	if end != nil && end.UnixMilli() <= listingFloor {
		return &candles.FieldError{Field: "end", Msg: fmt.Sprintf(
			"%s is before Binance's first candles (%s): there is nothing to fetch",
			end.Format(time.RFC3339), time.UnixMilli(listingFloor).UTC().Format(time.DateOnly))}
	}
	return nil
}

// checkSize refuses a plan past the size limits unless the request says
// "confirm":true; the error quotes the estimate a dry run gives (each pair
// from the listing floor for "listing": an upper bound, no lookups).
func (f *Fetcher) checkSize(r candles.SyncRequest, jobs []candles.Job) error {
	if r.Confirm {
		return nil
	}
	p := f.estimate(jobs, nil)
	if p.Requests <= maxPlanRequests && p.EstimatedSecond <= maxPlanSeconds {
		return nil
	}
	return &candles.FieldError{Field: "confirm", Msg: fmt.Sprintf(
		`the plan is too big to start unconfirmed: %d pairs, "requests":%d, "weight":%d, "estimated_seconds":%.0f (about %s at %d weight per %s); the limit is %d requests or %s. Check it with "dry_run":true, narrow it, or send it again with "confirm":true`,
		len(p.Pairs), p.Requests, p.Weight, p.EstimatedSecond, roughDuration(p.EstimatedSecond), p.WeightLimit, p.WeightWindow,
		maxPlanRequests, roughDuration(maxPlanSeconds))}
}

// roughDuration writes seconds for a person: "3d 4h", "5h 12m", "40s".
func roughDuration(seconds float64) string {
	d := time.Duration(seconds) * time.Second
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd %dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh %dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return d.Round(time.Second).String()
	}
}

// plan resolves a request into jobs: the configured pairs where it names
// none, and per pair the range [from, until) to fetch: from Start ("listing":
// from the pair's first candle), else from the last stored candle (fetched
// again, so a candle rewritten by the exchange is corrected) with the holes
// the gap audit found to repair (measured from where the pair's history
// should start, PairCoverage.ExpectedFrom, so missing early history is
// repaired too), else Lookback bars back. Until is End or the
// exchange's now.
//
// No range starts before listingFloor: an earlier start or lookback is
// moved there, and notes say so (for sync.started).
func (f *Fetcher) plan(ctx context.Context, runID string, req candles.SyncRequest) (jobs []candles.Job, notes []string, err error) {
	symbols, intervals := f.pairSet(req)
	start, end, err := req.Range()
	if err != nil {
		return nil, nil, err
	}
	var until int64
	if end != nil {
		until = end.UnixMilli()
	} else {
		now, err := f.clock.exchangeNow(ctx, f)
		if err != nil {
			return nil, nil, err
		}
		until = now.UnixMilli()
	}
	lookback := req.Lookback
	if lookback == 0 {
		lookback = f.settings().Lookback
	}
	pairs := make([]candles.Pair, 0, len(symbols)*len(intervals))
	for _, s := range symbols {
		for _, iv := range intervals {
			pairs = append(pairs, candles.Pair{Symbol: s, Interval: iv})
		}
	}
	incremental := start == nil && !req.Listing()
	var stored map[candles.Pair]candles.PairCoverage
	if incremental {
		if stored, err = f.coverage(ctx, pairs, true); err != nil {
			return nil, nil, err
		}
	}
	var deadline time.Time
	if timeout := f.settings().SyncTimeout; timeout > 0 {
		deadline = f.o.Now().Add(timeout).UTC()
	}
	jobs = make([]candles.Job, 0, len(pairs))
	note := func(n string) {
		if !slices.Contains(notes, n) {
			notes = append(notes, n)
		}
	}
	floorDay := time.UnixMilli(listingFloor).UTC().Format(time.DateOnly)
	for _, p := range pairs {
		iv, err := candles.ParseInterval(p.Interval)
		if err != nil {
			return nil, nil, err
		}
		j := candles.Job{V: candles.Version, RunID: runID, Symbol: p.Symbol, Interval: p.Interval, Until: until, Deadline: deadline}
		c, ok := stored[p]
		switch {
		case req.Listing():
			j.From = iv.Align(listingFloor)
		case start != nil:
			j.From = iv.Align(start.UnixMilli())
			if j.From < start.UnixMilli() {
				j.From = iv.Next(j.From)
			}
		case ok && c.ListingPending:
			// A run asked for the pair from its listing and its first page
			// never reached the database (lost with a replaced stream):
			// fetch from the listing again, which also covers every hole.
			j.From = iv.Align(listingFloor)
		case ok && c.Count > 0:
			j.From, j.Incremental = c.Last, true
			var holes []candles.Range
			for _, m := range c.Missing {
				if m.From < c.Last {
					holes = append(holes, candles.Range{From: m.From, Until: min(m.Until, c.Last)})
				}
			}
			j.Repair = mergeHoles(iv, holes, f.o.PageLimit)
		case ok && c.ExpectedFrom > 0:
			// Nothing stored, yet a request asked for history from
			// ExpectedFrom: fetch it all, not only Lookback bars.
			j.From, j.Incremental = c.ExpectedFrom, true
		default:
			j.From, j.Incremental = iv.Add(iv.Align(until-1), -lookback), true
		}
		if floor := iv.Align(listingFloor); j.From < floor {
			// Nothing is listed earlier; a range from before 1970 would not
			// even have a place in the writer's coverage. The first page
			// begins at the pair's listing.
			j.From = floor
			switch {
			case start != nil:
				note(fmt.Sprintf("start %s is before Binance's first candles: each pair is fetched from its listing (none before %s)",
					start.Format(time.RFC3339), floorDay))
			case !req.Listing():
				note(fmt.Sprintf("lookback of %d %s bars reaches before Binance's first candles: those pairs are fetched from their listing",
					lookback, p.Interval))
			}
		}
		jobs = append(jobs, j)
	}
	return jobs, notes, nil
}

// mergeHoles joins holes (sorted, disjoint) into repair spans priced by
// pages, not by holes: a hole joins the span before it whenever fetching
// both as one span takes no more klines requests than fetching them apart,
// as it does for short holes less than a page apart. Repairing a set of
// holes then costs no more than fetching them one by one, nor than
// re-fetching the range from the first to the last in one go
// (TestMergeHolesNeverCostsMore). The stored candles between holes come back
// with the pages; the writer counts them as re-fetched, not repaired, and
// records as known gaps only slots that stay empty (store.recordGaps).
func mergeHoles(iv candles.Interval, holes []candles.Range, pageLimit int) []candles.Range {
	var out []candles.Range
	for _, h := range holes {
		if h.Until <= h.From {
			continue
		}
		if n := len(out); n > 0 {
			last := out[n-1]
			joined := candles.Range{From: last.From, Until: max(last.Until, h.Until)}
			if pagesFor(iv, joined, pageLimit) <= pagesFor(iv, last, pageLimit)+pagesFor(iv, h, pageLimit) {
				out[n-1] = joined
				continue
			}
		}
		out = append(out, h)
	}
	return out
}

// pagesFor is the number of klines requests that fetch r.
func pagesFor(iv candles.Interval, r candles.Range, pageLimit int) int {
	if r.Until <= r.From {
		return 0
	}
	n := iv.Count(r.From, iv.Align(r.Until-1))
	return int((n + int64(pageLimit) - 1) / int64(pageLimit))
}

// dryRun answers a dry run with the plan: per pair the ranges, candle slots
// and klines requests, and in total the request weight and an estimate of
// the time the run takes. For "listing" the first candle of each pair is
// looked up (one small request per pair).
func (f *Fetcher) dryRun(ctx context.Context, req candles.SyncRequest) (candles.SyncPlan, error) {
	jobs, notes, err := f.plan(ctx, "dry-run", req)
	if err != nil {
		return candles.SyncPlan{}, err
	}
	var firsts []int64
	if req.Listing() {
		firsts = make([]int64, len(jobs))
		for i, j := range jobs {
			if firsts[i], err = f.firstCandle(ctx, j.Symbol, j.Interval); err != nil {
				return candles.SyncPlan{}, err
			}
		}
	}
	plan := f.estimate(jobs, firsts)
	plan.Notes = notes
	return plan, nil
}

// estimate prices planned jobs as a dry run shows them; firsts, when given,
// are the pairs' first candles (a job starts at the later of its From and
// its listing).
func (f *Fetcher) estimate(jobs []candles.Job, firsts []int64) candles.SyncPlan {
	limit, window := f.pacer.budget()
	plan := candles.SyncPlan{DryRun: true, WeightLimit: limit, WeightWindow: window.String()}
	perPair := make([]int, 0, len(jobs))
	for i, j := range jobs {
		iv := candles.MustInterval(j.Interval)
		from := j.From
		if firsts != nil {
			from = max(from, firsts[i])
		}
		pp := candles.PairPlan{Symbol: j.Symbol, Interval: j.Interval, From: from, Until: j.Until, Repair: j.Repair}
		for _, r := range append(append([]candles.Range{}, j.Repair...), candles.Range{From: from, Until: j.Until}) {
			if r.Until > r.From {
				pp.Candles += iv.Count(r.From, iv.Align(r.Until-1))
			}
			pp.Requests += pagesFor(iv, r, f.o.PageLimit)
		}
		plan.Pairs = append(plan.Pairs, pp)
		plan.Requests += pp.Requests
		perPair = append(perPair, pp.Requests)
	}
	plan.Weight = plan.Requests * klinesWeight
	plan.RequestSeconds = f.latency.estimate().Seconds()
	plan.EstimatedSecond = estimateSeconds(perPair, plan.RequestSeconds, f.o.Concurrency, plan.Weight, limit, window)
	return plan
}

// estimateSeconds models how long a run takes, as the slowest of three
// bounds: a pair's pages are fetched one after another (each page starts
// where the last one ended), so a pair takes its requests times the request
// latency; pairs run in parallel, at most concurrency at a time (the pairs
// dealt to free workers longest first, as the work queue roughly does); and
// the weight budget lets limit weight through per window, the first window's
// worth at once.
func estimateSeconds(perPair []int, latency float64, concurrency, weight, limit int, window time.Duration) float64 {
	sorted := slices.Clone(perPair)
	slices.SortFunc(sorted, func(a, b int) int { return b - a })
	workers := make([]float64, max(1, min(concurrency, len(sorted))))
	for _, n := range sorted {
		i := slices.Index(workers, slices.Min(workers))
		workers[i] += float64(n) * latency
	}
	byLatency := slices.Max(workers)
	byWeight := 0.0
	if limit > 0 && weight > limit {
		byWeight = float64(weight-limit) / float64(limit) * window.Seconds()
	}
	return max(byLatency, byWeight)
}

// firstCandle returns the open time of a pair's first candle on the exchange.
func (f *Fetcher) firstCandle(ctx context.Context, symbol, interval string) (int64, error) {
	if err := f.pacer.wait(ctx, klinesWeight); err != nil {
		return 0, err
	}
	iv := candles.MustInterval(interval)
	began := time.Now()
	cs, r, err := f.api.Klines(ctx, symbol, interval, iv.Align(listingFloor), f.o.Now().UnixMilli(), 1)
	f.stats.sent(time.Since(began), err)
	if err == nil {
		f.latency.observe(time.Since(began))
	}
	f.pacer.observe(r.UsedWeight)
	if err != nil {
		return 0, fmt.Errorf("find the listing of %s/%s: %w", symbol, interval, err)
	}
	if len(cs) == 0 {
		return f.o.Now().UnixMilli(), nil
	}
	return cs[0].OpenTime, nil
}

// coverage asks the writer what it stores for pairs.
func (f *Fetcher) coverage(ctx context.Context, pairs []candles.Pair, gaps bool) (map[candles.Pair]candles.PairCoverage, error) {
	data, _ := json.Marshal(candles.CoverageRequest{Pairs: pairs, Gaps: gaps})
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
