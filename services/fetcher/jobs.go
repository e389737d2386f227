package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/services/fetcher/binance"
)

// klinesWeight is the request weight Binance charges for one klines call.
const klinesWeight = 2

// pageRetries is how many times a page that failed for a reason that
// passes (a timeout, a 5xx, a dropped connection, a truncated, malformed or
// invalid body) is asked again in place, after a short backoff, before the
// job goes back to JetStream: a flaky exchange costs a moment per page, not
// a redelivery and its longer backoff. 429 and 418 are never retried here;
// they pause the pacer, and the job waits out Retry-After or the ban.
const pageRetries = 3

// settleTimeout bounds the acks, checkpoint and lock writes that end a job,
// which still run when the fetcher is shutting down.
const settleTimeout = 5 * time.Second

var (
	// errBadJob marks a job that can never run.
	errBadJob = errors.New("bad job")
	// errDeadline: the run's deadline passed; the writer reports it as sync.timeout.
	errDeadline = errors.New("run deadline passed")
	// errDone: another delivery of the same job completed it.
	errDone = errors.New("job already completed by another delivery")
)

// decodeJob parses a job strictly.
func decodeJob(data []byte) (candles.Job, error) {
	var job candles.Job
	if err := candles.DecodeStrict(data, &job, "v, run_id, symbol, interval, from, until, repair, incremental, deadline",
		func(string) string { return "the type docs/messages.md gives" }); err != nil {
		return job, err
	}
	if job.V != candles.Version || !candles.ValidSymbol(job.Symbol) || job.RunID == "" {
		return job, fmt.Errorf("job v%d for %q in run %q is not a version %d job", job.V, job.Symbol, job.RunID, candles.Version)
	}
	if _, err := candles.ParseInterval(job.Interval); err != nil {
		return job, err
	}
	return job, nil
}

// handleJob fetches one pair and decides, in this one place, what happens to
// the job message:
//
//   - every page published: ack;
//   - a timeout, a 5xx, a bad page, a 429 or a failed publish: (a page that
//     failed for a passing reason was already asked again pageRetries times
//     in place) the attempt is counted in the job's checkpoint and the job
//     is redelivered by JetStream (NakWithDelay) after an exponential
//     backoff with jitter, or after the 429's Retry-After, resuming at the
//     page that failed. Attempts count per page: a page published resets
//     the count, so a long backfill through a flaky exchange finishes, only
//     slower. The pair fails after MaxDeliver attempts in a row with no
//     page published in between;
//   - a 418: every fetcher pauses until the ban ends and the job is
//     redelivered then, without counting an attempt;
//   - a 4xx business error (-1121 Invalid symbol, -1120 bad interval) or a
//     bad job: the pair fails at once;
//   - the run's deadline: the job ends and the writer reports sync.timeout;
//   - shutdown: the job goes back to the queue at once.
//
// A failed pair ends with a pair.failed event naming the cause.
func (f *Fetcher) handleJob(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		f.log.Error("job without metadata; dropped", "err", err)
		_ = msg.Term()
		return
	}
	job, err := decodeJob(msg.Data())
	if err != nil {
		f.log.Error("malformed job; dropped", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("malformed job")
		return
	}
	j := &jobRun{
		f:        f,
		msg:      msg,
		job:      job,
		pair:     candles.Pair{Symbol: job.Symbol, Interval: job.Interval},
		iv:       candles.MustInterval(job.Interval),
		queued:   meta.Timestamp,
		delivery: int(meta.NumDelivered),
		log:      f.log.With("run_id", job.RunID, "symbol", job.Symbol, "interval", job.Interval),
	}
	began := time.Now()
	err = j.run(ctx)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	j.settle(sctx, ctx.Err() != nil, err, time.Since(began))
}

// jobRun is one delivery of a job.
type jobRun struct {
	f        *Fetcher
	msg      jetstream.Msg
	job      candles.Job
	pair     candles.Pair
	iv       candles.Interval
	queued   time.Time // when the job was published (server clock)
	delivery int       // JetStream's delivery count, from 1
	log      *slog.Logger

	cp      checkpoint
	cpFound bool
	cpErr   error // the checkpoint could not be read
	lock    *pairLock
	holder  string          // the run this job waited for, if any
	fetched []candles.Range // what this job fetched completely, per span

	pages   int // published in this delivery
	candles int64
	retries int // pages asked again in place in this delivery
	// saved is when the checkpoint was last saved and the lock refreshed.
	saved time.Time
	// pending is the page sent whose ack is awaited before the next is sent.
	pending *pendingPage
}

// progressEvery spaces checkpoint saves and lock refreshes during a job: a
// crash then costs at most this much re-fetching (whose pages the stream
// drops as duplicates), and a fast backfill does not pay two KV writes per
// page. The heartbeat keeps the lock and the message alive in between.
const progressEvery = time.Second

// span is one range of a job: a hole to repair or the main range.
type span struct {
	candles.Range
	repair bool
}

// run does the work of one delivery: take the pair's lock (waiting for
// another run of the pair if need be), skip what another run fetched
// meanwhile, then fetch from the checkpoint on.
func (j *jobRun) run(ctx context.Context) error {
	f := j.f
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !j.job.Deadline.IsZero() {
		if !f.o.Now().Before(j.job.Deadline) {
			return errDeadline
		}
		var cancelDeadline context.CancelFunc
		jctx, cancelDeadline = context.WithDeadlineCause(jctx, j.job.Deadline, errDeadline)
		defer cancelDeadline()
	}
	err := j.work(jctx, cancel)
	if err != nil && jctx.Err() != nil && ctx.Err() == nil {
		err = context.Cause(jctx) // errDeadline or errLockLost, not a bare "context canceled"
	}
	return err
}

func (j *jobRun) work(ctx context.Context, cancel context.CancelCauseFunc) error {
	f := j.f
	j.cp, j.cpFound, j.cpErr = f.progress.load(ctx, j.job)
	if j.cpErr != nil {
		j.log.Warn("checkpoint unreadable; the job starts over", "err", j.cpErr)
	}
	lock, holder, err := f.locks.acquire(ctx, j.pair, j.job.RunID, func() { _ = j.msg.InProgress() })
	if err != nil {
		return err
	}
	j.lock, j.holder = lock, holder
	if holder != "" {
		j.log.Info("pair was busy with another job; continuing after it", "waited_for", holder)
	}
	stop := j.heartbeat(ctx, cancel)
	defer stop()
	rec, at, recorded := f.board.fetched(ctx, j.pair)
	if recorded && rec.RunID == j.job.RunID {
		return errDone
	}
	if !recorded || !at.After(j.queued) {
		rec = fetchedRecord{}
	}
	spans, err := j.spans(ctx, rec)
	if err != nil {
		return err
	}
	return j.fetch(ctx, spans)
}

// heartbeat keeps the job message and the lock alive while the job waits
// for the pacer or a slow exchange; a lost lock cancels the job.
func (j *jobRun) heartbeat(ctx context.Context, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = j.msg.InProgress()
				if err := j.lock.refresh(ctx); errors.Is(err, errLockLost) {
					cancel(errLockLost)
					return
				} else if err != nil {
					j.log.Debug("lock not refreshed; trying again at the next heartbeat", "err", err)
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// spans returns the job's ranges, repairs first, each moved past what
// another run fetched after this job was queued (other; so a second request
// for a pair in flight does not fetch it twice), and for an incremental job
// that waited for another run, past what the writer now stores.
func (j *jobRun) spans(ctx context.Context, other fetchedRecord) ([]span, error) {
	spans := make([]span, 0, len(j.job.Repair)+1)
	for _, r := range j.job.Repair {
		spans = append(spans, span{r, true})
	}
	spans = append(spans, span{candles.Range{From: j.job.From, Until: j.job.Until}, false})
	main := &spans[len(spans)-1]
	if j.holder != "" && j.job.Incremental {
		stored, err := j.f.coverage(ctx, []candles.Pair{j.pair}, false)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			j.log.Warn("cannot ask the writer what the other run stored; fetching the planned range", "err", err)
		} else if c := stored[j.pair]; c.Count > 0 && c.Last > main.From {
			main.From = c.Last // fetched again: the last stored candle may have changed
		}
	}
	for i := range spans {
		if from := skipCovered(spans[i].From, other.Spans); from > spans[i].From {
			j.log.Debug("skipping what another run fetched", "other_run", other.RunID, "from", spans[i].From, "to", from)
			spans[i].From = min(from, max(spans[i].Until, spans[i].From))
		}
	}
	return spans, nil
}

// skipCovered moves from past every range of covered that contains it.
func skipCovered(from int64, covered []candles.Range) int64 {
	for moved := true; moved; {
		moved = false
		for _, c := range covered {
			if c.From <= from && from < c.Until {
				from, moved = c.Until, true
			}
		}
	}
	return from
}

// fetch fetches the spans from the checkpoint on and publishes each page of
// closed candles, saving the checkpoint and refreshing the lock after each.
// The last page published is marked final (empty when nothing was new),
// which tells the writer the pair is done. Each page says which span of open
// times the exchange answered completely, so the writer can tell an
// exchange outage from a hole.
func (j *jobRun) fetch(ctx context.Context, spans []span) error {
	f, iv := j.f, j.iv
	if j.cp.Span >= len(spans) { // not a checkpoint of this job's spans: start over
		j.cp = checkpoint{V: candles.Version, Failures: j.cp.Failures, LastError: j.cp.LastError}
	}
	for si := j.cp.Span; si < len(spans); si++ {
		sp := spans[si]
		lastSpan := si == len(spans)-1
		from := sp.From
		// Claim coverage from the first candle only on the main range's first
		// page (it may start before the listing); a resumed span goes on.
		first := !sp.repair
		if si == j.cp.Span && j.cp.From != 0 && j.cp.From > from { // 0: the span's start
			from, first = j.cp.From, false
		}
		start := from
		for {
			b := candles.Batch{V: candles.Version, RunID: j.job.RunID, Symbol: j.job.Symbol, Interval: j.job.Interval,
				Page: j.cp.Page + j.inflightPages(), Repair: sp.repair, Token: j.job.Token}
			done, reached, err := j.page(ctx, &b, sp, from, first)
			if err != nil {
				if perr := j.await(ctx); perr != nil {
					return perr
				}
				return err
			}
			b.Final = done && lastSpan
			next := from
			if !done {
				if len(b.Candles) == 0 {
					// A full page with nothing closed cannot happen unless the
					// exchange misbehaves; refuse to loop on it.
					if perr := j.await(ctx); perr != nil {
						return perr
					}
					return &binance.Error{Kind: binance.ErrBadPage, Msg: fmt.Sprintf("full page without a closed candle at %d", from)}
				}
				next = iv.Next(b.Candles[len(b.Candles)-1].OpenTime)
			}
			// The page before this one must be stored before this one is
			// sent: pages of a pair reach the stream in order, and the
			// checkpoint never runs ahead of what the stream holds.
			if err := j.await(ctx); err != nil {
				return err
			}
			commit := func() {
				if done {
					if reached > start {
						j.fetched = append(j.fetched, candles.Range{From: start, Until: reached})
					}
					j.cp.Span, j.cp.From = si+1, 0
				} else {
					j.cp.From = next
				}
			}
			if len(b.Candles) > 0 || b.Final || b.From != 0 {
				fut, resend, err := f.publishAsync(b, from)
				if err != nil {
					return err
				}
				n := int64(len(b.Candles))
				j.pending = &pendingPage{fut: fut, resend: resend, page: b.Page, what: candles.BatchSubject(b.Interval, b.Symbol), commit: func() {
					j.pages++
					j.cp.Page++
					// Progress: the attempts count starts again at this page.
					j.cp.Failures, j.cp.LastError = 0, ""
					j.candles += n
					j.cp.Candles += n
					commit()
				}}
				j.log.Debug("page published", "page", b.Page, "candles", len(b.Candles), "final", b.Final, "repair", b.Repair)
			} else {
				commit()
			}
			if b.Final {
				return j.await(ctx)
			}
			from, first = next, false
			if err := j.progressed(ctx); err != nil {
				if perr := j.await(ctx); perr != nil {
					return perr
				}
				return err
			}
			if done {
				break
			}
		}
	}
	return j.await(ctx)
}

// pendingPage is a page sent to CANDLES whose ack has not been seen; commit
// records it in the job's progress once it has.
type pendingPage struct {
	fut jetstream.PubAckFuture
	// resend publishes the page again, with the same message id.
	resend func() (jetstream.PubAckFuture, error)
	page   int
	what   string
	commit func()
}

func (j *jobRun) inflightPages() int {
	if j.pending != nil {
		return 1
	}
	return 0
}

// await waits for the ack of the page in flight, if any, and commits it.
// It waits even when ctx has ended (shutdown, deadline, lost lock), bounded
// by publishAckTimeout: the ack is normally a moment away, and a page whose
// ack is seen is one the checkpoint saved at shutdown need not repeat.
//
// A page the stream does not store (no ack: the server's disk is full, its
// JetStream is being restarted, CANDLES is being recreated) is not the
// pair's failure: the job holds on to it and publishes it again, with the
// same message id, until the stream takes it or ctx ends. The heartbeat
// keeps the job and its lock alive meanwhile.
func (j *jobRun) await(ctx context.Context) error {
	p := j.pending
	if p == nil {
		return nil
	}
	j.pending = nil
	var since time.Time
	wait := time.Second
	for {
		err := p.wait()
		if err == nil {
			if !since.IsZero() {
				j.log.Info("the stream stores pages again; the job goes on", "page", p.page,
					"held_for", time.Since(since).Round(time.Millisecond))
			}
			p.commit()
			return nil
		}
		if ctx.Err() != nil || p.resend == nil {
			return err
		}
		if since.IsZero() {
			since = time.Now()
			j.log.Warn("the stream does not store pages; holding the job and publishing the page again until it does",
				"page", p.page, "err", err)
		} else {
			j.log.Debug("page still not stored; publishing it again", "page", p.page, "err", err)
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, 10*time.Second)
		if ctx.Err() != nil {
			return err
		}
		fut, rerr := p.resend()
		if rerr != nil {
			p.fut = failedFuture{err: rerr}
			continue
		}
		p.fut = fut
	}
}

// wait waits for the stream's answer to the page, up to publishAckTimeout.
func (p *pendingPage) wait() error {
	timer := time.NewTimer(publishAckTimeout)
	defer timer.Stop()
	select {
	case <-p.fut.Ok():
		return nil
	case err := <-p.fut.Err():
		return fmt.Errorf("publish %s page %d: %w", p.what, p.page, err)
	case <-timer.C:
		return fmt.Errorf("publish %s page %d: no ack from the stream within %v", p.what, p.page, publishAckTimeout)
	}
}

// failedFuture is a publish that could not even be sent.
type failedFuture struct {
	jetstream.PubAckFuture
	err error
}

func (f failedFuture) Ok() <-chan *jetstream.PubAck { return nil }

func (f failedFuture) Err() <-chan error {
	ch := make(chan error, 1)
	ch <- f.err
	return ch
}

// publishAckTimeout bounds the wait for the stream's ack of a page.
const publishAckTimeout = 10 * time.Second

// progressed saves the checkpoint, refreshes the lock and tells JetStream
// the job is alive. A checkpoint that cannot be saved costs a re-fetch on
// redelivery, not correctness; a lock lost to another job stops this one.
func (j *jobRun) progressed(ctx context.Context) error {
	now := j.f.o.Now()
	if now.Sub(j.saved) < progressEvery {
		return nil
	}
	j.saved = now
	if err := j.f.progress.save(ctx, j.job, j.cp, now); err != nil && ctx.Err() == nil {
		j.log.Warn("checkpoint not saved", "err", err)
	}
	if err := j.lock.refresh(ctx); errors.Is(err, errLockLost) {
		return err
	} else if err != nil && ctx.Err() == nil {
		j.log.Debug("lock not refreshed after a page", "err", err)
	}
	_ = j.msg.InProgress()
	return nil
}

// page fetches the page of sp starting at from into b and reports whether
// the span is done and up to where (exclusive) the exchange has answered it
// completely. Candles not closed yet (by the exchange's clock) are left out;
// when nothing in the rest of the span can be closed, no request is made.
func (j *jobRun) page(ctx context.Context, b *candles.Batch, sp span, from int64, first bool) (done bool, reached int64, err error) {
	f, iv := j.f, j.iv
	if from >= sp.Until {
		return true, from, nil
	}
	exchangeNow, err := f.clock.exchangeNow(ctx, f)
	if err != nil {
		f.noteLimits(ctx, j.log, j.job, err)
		return false, 0, err
	}
	// Slots from the one still open (or closing within the margin) on are
	// not settled yet.
	if settled := min(sp.Until, iv.Align(exchangeNow.Add(-closeMargin).UnixMilli())); from >= settled {
		return true, from, nil
	}
	raw, settled, err := j.fetchPage(ctx, from, sp.Until)
	if err != nil {
		return false, 0, err
	}
	done = len(raw) < f.o.PageLimit
	// The page's settled prefix is the batch: no copy, no growing slice.
	n := 0
	for n < len(raw) && raw[n].OpenTime < settled {
		n++
	}
	if n < len(raw) {
		done = true
	}
	b.Candles = raw[:n:n]
	coverUntil := settled
	if !done {
		coverUntil = min(settled, iv.Next(raw[len(raw)-1].OpenTime))
	}
	if n := len(b.Candles); n > 0 && iv.Next(b.Candles[n-1].OpenTime) >= sp.Until {
		done = true
	}
	// The first page of the main range may start before the listing: slots
	// before the first candle are not gaps.
	coverFrom := from
	if first {
		coverFrom = -1
		if len(b.Candles) > 0 {
			coverFrom = b.Candles[0].OpenTime
		}
	}
	if coverFrom >= 0 && coverUntil > coverFrom {
		b.From, b.Until = coverFrom, coverUntil
	}
	return done, max(coverUntil, from), nil
}

// fetchPage fetches the page at from (klines), asking again in place up to
// pageRetries times, after a short backoff, when it failed for a reason
// that passes (retryInPlace). What is left goes back to the job's handler.
func (j *jobRun) fetchPage(ctx context.Context, from, until int64) (raw []candles.Candle, settled int64, err error) {
	for attempt := 1; ; attempt++ {
		raw, settled, err = j.f.klines(ctx, j.log, j.job, from, until)
		if err == nil || attempt > pageRetries || !retryInPlace(err) || ctx.Err() != nil {
			return raw, settled, err
		}
		delay := backoff(max(j.f.o.RetryBase/8, 10*time.Millisecond), uint64(attempt))
		j.retries++
		j.log.Info("page failed; asking again", "from", from, "attempt", attempt+1, "of", pageRetries+1,
			"kind", failureKind(err), "reason", err.Error(), "retry_in", delay.Round(time.Millisecond))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, 0, err
		case <-t.C:
		}
	}
}

// retryInPlace tells whether a failed page is worth asking again at once:
// the exchange or the path to it stumbled (timeout, 5xx, dropped
// connection) or the body came back broken. Rate limits, bans and business
// errors are not.
func retryInPlace(err error) bool {
	return errors.Is(err, binance.ErrTemporary) || errors.Is(err, binance.ErrBadPage)
}

// klines fetches one page in one request and validates what the job may
// store of it: the candles closed by the exchange's clock (open time before
// settled, which is at most until). The still-open candle, and any after
// it, are left out before the check, so a forming candle that breaks a rule
// does not fail the closed ones; they are never stored anyway. A 429 or 418
// pauses the pacer at once, before other jobs send more requests.
func (f *Fetcher) klines(ctx context.Context, log *slog.Logger, job candles.Job, from, until int64) (raw []candles.Candle, settled int64, err error) {
	if err := f.pacer.wait(ctx, klinesWeight); err != nil {
		return nil, 0, err
	}
	iv := candles.MustInterval(job.Interval)
	began := time.Now()
	raw, r, err := f.api.Klines(ctx, job.Symbol, job.Interval, from, until-1, f.o.PageLimit)
	f.stats.sent(time.Since(began), err)
	if err == nil {
		f.latency.observe(time.Since(began))
	}
	f.pacer.observe(r.UsedWeight)
	if err == nil {
		var exchangeNow time.Time
		if exchangeNow, err = f.clock.exchangeNow(ctx, f); err == nil {
			// Slots from the one still open (or closing within the margin)
			// on are not settled yet.
			settled = min(until, iv.Align(exchangeNow.Add(-closeMargin).UnixMilli()))
			n := 0
			for n < len(raw) && raw[n].OpenTime < settled {
				n++
			}
			err = checkPage(iv, from, raw[:n])
		}
	}
	if err == nil {
		return raw, settled, nil
	}
	if errors.Is(err, binance.ErrBadPage) {
		log.Warn("page rejected", "from", from, "err", err)
		f.event(ctx, log, &candles.BatchRejected{EventHeader: candles.NewHeader(candles.KindBatchRejected, job.RunID),
			Symbol: job.Symbol, Interval: job.Interval, Reason: err.Error(), Source: "exchange"}, "")
	}
	f.noteLimits(ctx, log, job, err)
	return nil, 0, err
}

// noteLimits acts on a rate-limit answer at once: a 429 holds this
// fetcher's requests for Retry-After (ratelimit.hit), a 418 puts the ban on
// the board so every fetcher pauses until it ends (ratelimit.banned, once
// per ban).
func (f *Fetcher) noteLimits(ctx context.Context, log *slog.Logger, job candles.Job, err error) {
	var apiErr *binance.Error
	if !errors.As(err, &apiErr) {
		return
	}
	switch {
	case errors.Is(err, binance.ErrRateLimited):
		wait := retryAfter(apiErr)
		f.pacer.hold(f.o.Now().Add(wait))
		f.event(ctx, log, &candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, job.RunID),
			Symbol: job.Symbol, Interval: job.Interval, RetryAfter: wait.Seconds(), UsedWeight: apiErr.Response.UsedWeight}, "")
	case errors.Is(err, binance.ErrBanned):
		f.reportBan(ctx, log, job.RunID, apiErr)
	}
}

// reportBan puts a 418 on the board and announces a new ban.
func (f *Fetcher) reportBan(ctx context.Context, log *slog.Logger, runID string, apiErr *binance.Error) time.Time {
	until := apiErr.BannedUntil
	if until.IsZero() {
		until = f.o.Now().Add(retryAfter(apiErr))
	}
	isNew, err := f.board.reportBan(ctx, until, runID, apiErr.Error())
	if err != nil {
		log.Warn("ban not shared with the other fetchers", "until", until, "err", err)
		isNew = true
	}
	if isNew {
		log.Error("exchange banned this IP; every fetcher pauses until the ban ends", "until", until, "err", apiErr)
		f.event(ctx, log, &candles.RateLimitBanned{EventHeader: candles.NewHeader(candles.KindRateLimitBanned, runID),
			Until: until.UTC(), RetryAfter: until.Sub(f.o.Now()).Seconds()},
			"ratelimit.banned:"+strconv.FormatInt(until.UnixMilli(), 10))
	}
	return until
}

// retryAfter is a 429's or 418's Retry-After, at least a second.
func retryAfter(e *binance.Error) time.Duration {
	return max(e.Response.RetryAfter, time.Second)
}

// settle decides what happens to the job message after run returned err;
// ctx is good for a few seconds even at shutdown.
func (j *jobRun) settle(ctx context.Context, shutdown bool, err error, took time.Duration) {
	f, log := j.f, j.log
	defer j.release(ctx)
	var apiErr *binance.Error
	errors.As(err, &apiErr)
	switch {
	case err == nil:
		// Recorded even when empty: it also tells a duplicate delivery of
		// this job that there is nothing left to do.
		if err := f.board.recordFetched(ctx, j.pair, j.job.RunID, j.fetched); err != nil {
			log.Warn("what this run fetched is not recorded; a concurrent run may fetch it again", "err", err)
		}
		if err := j.msg.DoubleAck(ctx); err != nil {
			log.Warn("job ack not confirmed; a redelivery finds the job recorded as done", "err", err)
			return
		}
		j.removeCheckpoint(ctx)
		if j.cp.Candles == 0 && !j.job.Incremental {
			// Said plainly: an explicit range that ends before the pair's
			// listing (or holds only the open candle) is done, not broken.
			log.Info("nothing to fetch: the exchange has no closed candle of the pair in the range (it may end before the pair's listing)",
				"from", time.UnixMilli(j.job.From).UTC(), "until", time.UnixMilli(j.job.Until).UTC())
		}
		log.Info("pair fetched", "pages", j.pages, "candles", j.candles, "took", took.Round(time.Millisecond), "retried_in_place", j.retries,
			"resumed_at_page", j.cp.Page-j.pages, "delivery", j.delivery)
	case errors.Is(err, errDone):
		_ = j.msg.DoubleAck(ctx)
		j.removeCheckpoint(ctx)
		log.Info("job was completed by another delivery; acked", "delivery", j.delivery)
	case shutdown:
		// Save how far this delivery got (checkpoints are otherwise saved at
		// most every progressEvery), then hand the job back with no delay:
		// another fetcher, or this one restarted, resumes at once from here
		// instead of waiting out the ack wait.
		if j.pages > 0 || j.cpFound {
			if err := f.progress.save(ctx, j.job, j.cp, f.o.Now()); err != nil {
				log.Warn("checkpoint not saved at shutdown; the next delivery re-fetches from the last one saved", "err", err)
			}
		}
		if err := j.msg.Nak(); err != nil {
			log.Warn("job not handed back at shutdown; it is redelivered after the ack wait", "err", err)
		} else {
			log.Info("job handed back at shutdown", "resume_page", j.cp.Page, "pages", j.pages)
		}
	case errors.Is(err, errDeadline):
		log.Warn("run deadline passed; pair left open", "pages", j.pages, "candles", j.candles)
		_ = j.msg.TermWithReason("run deadline passed")
		j.removeCheckpoint(ctx)
	case errors.Is(err, errBadJob), errors.Is(err, binance.ErrRejected):
		j.fail(ctx, err.Error())
	case errors.Is(err, binance.ErrBanned):
		until := f.pacer.banned() // zero if the ban was lifted meanwhile
		if until.IsZero() {
			until = f.o.Now()
		}
		delay := until.Add(banMargin).Sub(f.o.Now()) + time.Duration(rand.Int64N(int64(500*time.Millisecond)))
		log.Warn("exchange ban; job retried when it ends", "attempt", j.cp.Failures+1, "reason", err.Error(),
			"retry_in", delay.Round(time.Millisecond))
		_ = j.msg.NakWithDelay(delay)
	case errors.Is(err, errLockLost):
		delay := backoff(f.o.RetryBase, 1)
		log.Warn("pair lock lost; job retried", "attempt", j.cp.Failures+1, "reason", err.Error(), "retry_in", delay)
		_ = j.msg.NakWithDelay(delay)
	case natsutil.Unavailable(err):
		// NATS itself did not answer (a node gone or paused, a stream or
		// bucket electing its leader): not the pair's fault, so no attempt
		// is counted; the job comes back when the cluster answers again
		// (the server's jobMaxDeliveries and the run's deadline bound it).
		delay := backoff(f.o.RetryBase, uint64(min(j.delivery, 6)))
		log.Warn("NATS did not answer; job retried without counting an attempt", "reason", err.Error(),
			"retry_in", delay.Round(time.Millisecond), "delivery", j.delivery, "pages", j.pages)
		_ = j.msg.NakWithDelay(delay)
	default:
		j.retry(ctx, err, apiErr)
	}
}

// retry counts a failed attempt and has JetStream redeliver the job after a
// backoff (or the 429's Retry-After), or fails the pair after MaxDeliver
// attempts.
func (j *jobRun) retry(ctx context.Context, err error, apiErr *binance.Error) {
	f, log := j.f, j.log
	failures := j.cp.Failures + 1 // reset whenever a page was published
	if j.cpErr != nil && j.pages == 0 {
		failures = max(failures, j.delivery) // no count to trust: assume every delivery failed
	}
	if failures >= f.o.MaxDeliver {
		asked := ""
		if retryInPlace(err) {
			asked = fmt.Sprintf("%d requests ", failures*(pageRetries+1))
		}
		j.fail(ctx, fmt.Sprintf("gave up after %d attempts with no page stored in between (%sfor the page at %s): %v",
			failures, asked, j.resumeAt(), err))
		return
	}
	delay := backoff(f.o.RetryBase, uint64(failures))
	if errors.Is(err, binance.ErrRateLimited) && apiErr != nil {
		wait := retryAfter(apiErr)
		delay = wait + time.Duration(rand.Int64N(int64(wait/10)+1))
	}
	j.cp.Failures, j.cp.LastError = failures, err.Error()
	if serr := f.progress.save(ctx, j.job, j.cp, f.o.Now()); serr != nil {
		log.Warn("checkpoint not saved; the attempt may not be counted", "err", serr)
	}
	log.Warn("pair fetch failed; job retried", "attempt", failures, "of", f.o.MaxDeliver, "kind", failureKind(err),
		"reason", err.Error(), "retry_in", delay.Round(time.Millisecond), "pages", j.pages, "retried_in_place", j.retries,
		"resume_page", j.cp.Page)
	_ = j.msg.NakWithDelay(delay)
}

// resumeAt names the open time where the job resumes, for a reason an
// operator reads.
func (j *jobRun) resumeAt() string {
	from := j.cp.From
	if from == 0 { // the start of the span: a repair range, then the main one
		from = j.job.From
		if j.cp.Span < len(j.job.Repair) {
			from = j.job.Repair[j.cp.Span].From
		}
	}
	return time.UnixMilli(from).UTC().Format(time.RFC3339)
}

// fail ends the pair in its run with pair.failed naming reason.
func (j *jobRun) fail(ctx context.Context, reason string) {
	j.log.Error("pair failed", "reason", reason)
	j.f.event(ctx, j.log, &candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, j.job.RunID),
		Symbol: j.job.Symbol, Interval: j.job.Interval, Reason: reason}, pairFailedID(j.job))
	_ = j.msg.TermWithReason("pair failed")
	j.removeCheckpoint(ctx)
}

func (j *jobRun) removeCheckpoint(ctx context.Context) {
	if !j.cpFound && j.cp.Failures == 0 && j.pages == 0 {
		return // never written
	}
	if err := j.f.progress.remove(ctx, j.job); err != nil {
		j.log.Warn("checkpoint left to expire", "err", err)
	}
}

func (j *jobRun) release(ctx context.Context) {
	if j.lock == nil {
		return
	}
	if err := j.lock.release(ctx); err != nil {
		j.log.Warn("pair lock left to expire", "err", err)
	}
}

// failureKind names the class of a retried failure for the logs.
func failureKind(err error) string {
	var apiErr *binance.Error
	switch {
	case errors.As(err, &apiErr) && apiErr.Timeout:
		return "timeout"
	case errors.As(err, &apiErr) && errors.Is(err, binance.ErrTemporary) && apiErr.Response.Status >= 500:
		return "http_5xx"
	case errors.Is(err, binance.ErrTemporary):
		return "network"
	case errors.Is(err, binance.ErrRateLimited):
		return "rate_limited"
	case errors.Is(err, binance.ErrBadPage):
		return "bad_page"
	default:
		return "internal"
	}
}

// checkPage applies the candle rules to a page as the exchange sent it.
func checkPage(iv candles.Interval, from int64, raw []candles.Candle) error {
	if len(raw) > 0 && raw[0].OpenTime < from {
		return &binance.Error{Kind: binance.ErrBadPage, Msg: fmt.Sprintf("page starts at %d, before the requested %d", raw[0].OpenTime, from)}
	}
	if err := candles.Validate(iv, raw); err != nil {
		return &binance.Error{Kind: binance.ErrBadPage, Msg: err.Error()}
	}
	return nil
}

// publishAsync sends a page to CANDLES; the caller awaits the stream's ack
// (jobRun.await) while it fetches the next page. The Nats-Msg-Id is fixed by
// run, pair and page start, so a retried job's pages are dropped as
// duplicates.
func (f *Fetcher) publishAsync(b candles.Batch, from int64) (fut jetstream.PubAckFuture, resend func() (jetstream.PubAckFuture, error), err error) {
	data, err := b.Encode()
	if err != nil {
		return nil, nil, fmt.Errorf("encode batch: %w", err)
	}
	id := b.RunID + ":" + b.Symbol + ":" + b.Interval + ":" + strconv.FormatInt(from, 10)
	if b.Final {
		id += ":final"
	}
	subject := candles.BatchSubject(b.Interval, b.Symbol)
	resend = func() (jetstream.PubAckFuture, error) {
		fut, err := f.js.PublishAsync(subject, data, jetstream.WithMsgID(id))
		if err != nil {
			return nil, fmt.Errorf("publish %s page %d: %w", subject, b.Page, err)
		}
		return fut, nil
	}
	fut, err = resend()
	if err != nil {
		return nil, nil, err
	}
	return fut, resend, nil
}

// event publishes an event; a failure is logged, never fatal to the work.
func (f *Fetcher) event(ctx context.Context, log *slog.Logger, ev candles.Event, msgID string) {
	if err := candles.PublishEvent(ctx, f.js, ev, msgID, f.o.Now()); err != nil {
		log.Warn("cannot publish event", "kind", ev.Head().Kind, "err", err)
	}
}

// backoff is base * 2^(attempt-1) with ±20% jitter, capped at 5 minutes.
func backoff(base time.Duration, attempt uint64) time.Duration {
	d := base
	for i := uint64(1); i < attempt && d < 5*time.Minute; i++ {
		d *= 2
	}
	d = min(d, 5*time.Minute)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// exchangeClock estimates the exchange's clock from /api/v3/time, refreshed
// every minute, so the still-open candle is judged by the exchange's time.
type exchangeClock struct {
	mu      sync.Mutex
	now     func() time.Time
	offset  time.Duration
	checked time.Time
	// estimate is offset for the pacer, readable while mu is held by a
	// refresh (which itself waits on the pacer).
	estimate atomic.Int64
}

// offsetEstimate is the exchange's clock minus ours; 0 until first read.
func (c *exchangeClock) offsetEstimate() time.Duration { return time.Duration(c.estimate.Load()) }

func (c *exchangeClock) exchangeNow(ctx context.Context, f *Fetcher) (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	local := c.now()
	if !c.checked.IsZero() && local.Sub(c.checked) < time.Minute {
		return local.Add(c.offset), nil
	}
	if err := f.pacer.wait(ctx, 1); err != nil {
		return time.Time{}, err
	}
	began := time.Now()
	t, r, err := f.api.ServerTime(ctx)
	f.stats.sent(time.Since(began), err)
	f.pacer.observe(r.UsedWeight)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the exchange's clock: %w", err)
	}
	after := c.now()
	c.offset = t.Sub(local.Add(after.Sub(local) / 2))
	c.estimate.Store(int64(c.offset))
	c.checked = after
	return after.Add(c.offset), nil
}
