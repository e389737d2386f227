package fetcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/fetcher/binance"
)

// klinesWeight is the request weight Binance charges for one klines call.
const klinesWeight = 2

var (
	// errBadJob marks a job that can never run.
	errBadJob = errors.New("bad job")
	// errDeadline: the run's deadline passed; the writer reports it as sync.timeout.
	errDeadline = errors.New("run deadline passed")
)

// handleJob fetches one pair and decides, in this one place, what happens to
// the job message: ack when every page is published, NAK with a delay for
// trouble that may pass, terminate with a pair.failed event otherwise.
func (f *Fetcher) handleJob(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		f.log.Error("job without metadata; dropped", "err", err)
		_ = msg.Term()
		return
	}
	var job candles.Job
	dec := json.NewDecoder(bytes.NewReader(msg.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&job); err != nil || job.V != candles.Version || !candles.ValidSymbol(job.Symbol) || job.RunID == "" {
		f.log.Error("malformed job; dropped", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("malformed job")
		return
	}
	log := f.log.With("run_id", job.RunID, "symbol", job.Symbol, "interval", job.Interval)
	began := time.Now()
	pages, n, err := f.fetchPair(ctx, msg, job, log)
	attempt := int(meta.NumDelivered)
	last := attempt >= f.o.MaxDeliver
	var apiErr *binance.Error
	errors.As(err, &apiErr)
	switch {
	case err == nil:
		_ = msg.Ack()
		log.Info("pair fetched", "pages", pages, "candles", n, "took", time.Since(began).Round(time.Millisecond))
		return
	case ctx.Err() != nil:
		_ = msg.Nak() // shutting down: another fetcher takes it now
		return
	case errors.Is(err, errDeadline):
		log.Warn("run deadline passed; pair left open", "pages", pages, "candles", n)
		_ = msg.TermWithReason("run deadline passed")
		return
	case errors.Is(err, errBadJob), errors.Is(err, binance.ErrRejected):
		f.failPair(ctx, msg, job, log, err.Error())
		return
	case errors.Is(err, binance.ErrRateLimited), errors.Is(err, binance.ErrBanned):
		wait := max(apiErr.Response.RetryAfter, time.Second)
		if errors.Is(err, binance.ErrBanned) {
			until := f.o.Now().Add(wait)
			f.pacer.ban(until)
			f.event(ctx, log, &candles.RateLimitBanned{EventHeader: candles.NewHeader(candles.KindRateLimitBanned, job.RunID),
				Until: until.UTC(), RetryAfter: wait.Seconds()}, "")
		} else {
			f.pacer.ban(f.o.Now().Add(wait))
			f.event(ctx, log, &candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, job.RunID),
				Symbol: job.Symbol, Interval: job.Interval, RetryAfter: wait.Seconds(), UsedWeight: apiErr.Response.UsedWeight}, "")
		}
		if last {
			f.failPair(ctx, msg, job, log, fmt.Sprintf("gave up after %d attempts: %v", attempt, err))
			return
		}
		log.Warn("rate limited; job retried after Retry-After", "err", err, "attempt", attempt, "retry_in", wait)
		_ = msg.NakWithDelay(wait)
	default:
		if last {
			f.failPair(ctx, msg, job, log, fmt.Sprintf("gave up after %d attempts: %v", attempt, err))
			return
		}
		delay := backoff(f.o.RetryBase, meta.NumDelivered)
		log.Warn("pair fetch failed; job retried", "err", err, "attempt", attempt, "of", f.o.MaxDeliver, "retry_in", delay)
		_ = msg.NakWithDelay(delay)
	}
}

func (f *Fetcher) failPair(ctx context.Context, msg jetstream.Msg, job candles.Job, log *slog.Logger, reason string) {
	log.Error("pair failed", "reason", reason)
	f.event(ctx, log, &candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, job.RunID),
		Symbol: job.Symbol, Interval: job.Interval, Reason: reason}, "pair.failed:"+job.RunID+":"+job.Symbol+":"+job.Interval)
	_ = msg.TermWithReason("pair failed")
}

// fetchPair fetches the job's repair ranges, then its main range, and
// publishes each page of closed candles. The last page published is marked
// final (empty when nothing was new), which tells the writer the pair is
// done. Each page says which span of open times the exchange answered
// completely, so the writer can tell an exchange outage from a hole.
func (f *Fetcher) fetchPair(ctx context.Context, msg jetstream.Msg, job candles.Job, log *slog.Logger) (pages int, total int64, err error) {
	iv, err := candles.ParseInterval(job.Interval)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", errBadJob, err)
	}
	if !job.Deadline.IsZero() {
		if !f.o.Now().Before(job.Deadline) {
			return 0, 0, errDeadline
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, job.Deadline)
		defer cancel()
	}
	type span struct {
		candles.Range
		repair bool
	}
	spans := make([]span, 0, len(job.Repair)+1)
	for _, r := range job.Repair {
		spans = append(spans, span{r, true})
	}
	spans = append(spans, span{candles.Range{From: job.From, Until: job.Until}, false})
	page := 0
	for si, sp := range spans {
		lastSpan := si == len(spans)-1
		from := sp.From
		for first := true; ; first = false {
			b := candles.Batch{V: candles.Version, RunID: job.RunID, Symbol: job.Symbol, Interval: job.Interval, Page: page, Repair: sp.repair}
			done := from >= sp.Until
			if !done {
				raw, err := f.page(ctx, job, iv, from, sp.Until, log)
				if err != nil {
					if ctx.Err() != nil && !job.Deadline.IsZero() && !f.o.Now().Before(job.Deadline) {
						return pages, total, errDeadline
					}
					return pages, total, err
				}
				exchangeNow, err := f.clock.exchangeNow(ctx, f)
				if err != nil {
					return pages, total, err
				}
				// Slots from the one still open (or closing within the margin)
				// on are not settled yet.
				settled := min(sp.Until, iv.Align(exchangeNow.Add(-closeMargin).UnixMilli()))
				done = len(raw) < f.o.PageLimit
				for _, c := range raw {
					if c.OpenTime >= settled {
						done = true
						break
					}
					b.Candles = append(b.Candles, c)
				}
				coverUntil := settled
				if !done {
					coverUntil = min(settled, iv.Next(raw[len(raw)-1].OpenTime))
				}
				if n := len(b.Candles); n > 0 && iv.Next(b.Candles[n-1].OpenTime) >= sp.Until {
					done = true
				}
				// The first page of the main range may start before the
				// listing: slots before the first candle are not gaps.
				coverFrom := from
				if first && !sp.repair {
					coverFrom = -1
					if len(b.Candles) > 0 {
						coverFrom = b.Candles[0].OpenTime
					}
				}
				if coverFrom >= 0 && coverUntil > coverFrom {
					b.From, b.Until = coverFrom, coverUntil
				}
			}
			b.Final = done && lastSpan
			if len(b.Candles) > 0 || b.Final || b.From != 0 {
				if err := f.publish(ctx, b, from); err != nil {
					return pages, total, err
				}
				pages++
				page++
				total += int64(len(b.Candles))
				log.Debug("page published", "page", b.Page, "candles", len(b.Candles), "final", b.Final, "repair", b.Repair)
			}
			if done {
				break
			}
			if len(b.Candles) == 0 {
				// A full page with nothing closed cannot happen unless the
				// exchange misbehaves; refuse to loop on it.
				return pages, total, fmt.Errorf("%w: full page without a closed candle at %d", binance.ErrBadPage, from)
			}
			from = iv.Next(b.Candles[len(b.Candles)-1].OpenTime)
			_ = msg.InProgress()
		}
	}
	return pages, total, nil
}

// page fetches and validates one page, retrying a bad or failed page a few
// times in place before the job as a whole is redelivered.
func (f *Fetcher) page(ctx context.Context, job candles.Job, iv candles.Interval, from, until int64, log *slog.Logger) ([]candles.Candle, error) {
	var lastErr error
	for try := 0; try <= pageRetries; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(try) * 250 * time.Millisecond):
			}
		}
		if err := f.pacer.wait(ctx, klinesWeight); err != nil {
			return nil, err
		}
		raw, r, err := f.api.Klines(ctx, job.Symbol, job.Interval, from, until-1, f.o.PageLimit)
		f.pacer.observe(r.UsedWeight)
		if err == nil {
			err = checkPage(iv, from, raw)
		}
		if err == nil {
			return raw, nil
		}
		lastErr = err
		if errors.Is(err, binance.ErrBadPage) {
			log.Warn("page rejected", "from", from, "err", err)
			f.event(ctx, log, &candles.BatchRejected{EventHeader: candles.NewHeader(candles.KindBatchRejected, job.RunID),
				Symbol: job.Symbol, Interval: job.Interval, Reason: err.Error(), Source: "exchange"}, "")
			continue
		}
		if errors.Is(err, binance.ErrTemporary) {
			continue
		}
		return nil, err // rate limits, bans and rejections are decided by the caller
	}
	return nil, lastErr
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

// publish sends a page to CANDLES and waits for the stream's ack. The
// Nats-Msg-Id is fixed by run, pair and page start, so a retried job's pages
// are dropped as duplicates.
func (f *Fetcher) publish(ctx context.Context, b candles.Batch, from int64) error {
	data, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("encode batch: %w", err)
	}
	id := b.RunID + ":" + b.Symbol + ":" + b.Interval + ":" + strconv.FormatInt(from, 10)
	if b.Final {
		id += ":final"
	}
	if _, err := f.js.Publish(ctx, candles.BatchSubject(b.Interval, b.Symbol), data, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("publish %s page %d: %w", candles.BatchSubject(b.Interval, b.Symbol), b.Page, err)
	}
	return nil
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
}

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
	t, r, err := f.api.ServerTime(ctx)
	f.pacer.observe(r.UsedWeight)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the exchange's clock: %w", err)
	}
	after := c.now()
	c.offset = t.Sub(local.Add(after.Sub(local) / 2))
	c.checked = after
	return after.Add(c.offset), nil
}
