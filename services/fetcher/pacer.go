package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// pacer keeps a fetcher under the exchange's request-weight limit. The
// exchange counts weight per IP in fixed windows of its own clock and
// reports the total in X-MBX-USED-WEIGHT-1M on every response.
//
// With the shared budget attached (share), every fetcher reserves weight on
// the board (WeightKey in FetchersBucket) with compare-and-set before it
// sends a request, in small blocks, so N fetchers together stay under the
// limit instead of each believing the whole window is free. Windows follow
// the exchange's clock (the offset estimated from /api/v3/time), and a
// window opens a guard after its start, so a burst of requests at a window's
// start never lands in the previous window at the exchange. A higher used
// weight reported by the exchange (other clients on the same IP) raises the
// shared figure. When the board cannot be reached the pacer counts alone,
// with a 1/N share of the limit for the N fetchers it last saw, and tries
// the board again a little later.
//
// Two pauses stop every request of the process besides the budget: a hold
// after a 429 (for its Retry-After; local, since the weight header already
// warns the other fetchers) and a ban after a 418, shared by every fetcher
// through the ban board.
type pacer struct {
	mu      sync.Mutex
	limit   int           // weight per window
	window  time.Duration // window length
	reserve int           // weight kept free for requests in flight and at window edges
	now     func() time.Time
	// offset is the exchange's clock minus ours; nil means none known.
	offset func() time.Duration

	windowStart time.Time // exchange clock
	used        int       // weight this fetcher counts in the window (its own, or the header's if higher)
	heldUntil   time.Time // set by a 429's Retry-After
	bannedUntil time.Time // set by a 418, here or at another fetcher

	// The shared budget; nil paces with the local count alone.
	shared   *sharedBudget
	log      *slog.Logger
	refillMu sync.Mutex // one reservation on the board at a time per process
	// block is weight reserved on the board for the window at blockStart
	// and not spent yet.
	block      int
	blockStart time.Time
	// spentUntil (local clock): the shared window is spent, no reservation
	// is tried before then.
	spentUntil time.Time
	sharedUsed int // the shared figure last seen for blockStart
	// peers is the most fetchers seen reserving in this or the last window.
	peers, lastPeers int
	// fallbackUntil (local clock): the board was unreachable; until then
	// the pacer counts alone with a share of the limit.
	fallbackUntil time.Time
	fallback      bool

	// reserved is the weight wait let through since the start, lastUsed
	// the exchange's last X-MBX-USED-WEIGHT-1M: the fetcher's STATS
	// (stats.go) read them without the lock.
	reserved, lastUsed atomic.Int64
}

func newPacer(limit int, window time.Duration, reserve int, now func() time.Time) *pacer {
	return &pacer{limit: limit, window: window, reserve: reserve, now: now}
}

// share attaches the budget every fetcher shares.
func (p *pacer) share(s *sharedBudget, log *slog.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shared, p.log = s, log
}

// banMargin is added to a ban's end, read from the exchange's message in
// whole ms by the exchange's clock, so the first request after it does not
// arrive a moment early and extend the ban.
const banMargin = 500 * time.Millisecond

// pauseCheck bounds how long wait sleeps before it looks again, so a ban
// or a lift that arrives while it sleeps takes effect promptly.
const pauseCheck = 250 * time.Millisecond

// maxGuard bounds the guard at a window's start (see guard).
const maxGuard = 100 * time.Millisecond

// boardTimeout bounds one reservation on the board; longer means the board
// is unreachable for now.
const boardTimeout = 2 * time.Second

// fallbackFor is how long the pacer counts alone after the board failed
// before it tries the board again.
const fallbackFor = 10 * time.Second

// blockWindows: a reservation takes about 1/blockWindows of the limit,
// capped at the reserve (one request per worker), so one compare-and-set
// covers several requests and what a fetcher leaves unspent at a window's
// end stays small.
const blockWindows = 20

// wait blocks until a request of the given weight may be sent.
func (p *pacer) wait(ctx context.Context, weight int) error {
	for {
		d, refill := p.next(weight)
		if refill {
			if err := p.refill(ctx, weight); err != nil {
				return err
			}
			continue
		}
		if d <= 0 {
			p.reserved.Add(int64(weight))
			return nil
		}
		t := time.NewTimer(min(d, pauseCheck))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// delay is how long a request of weight must wait by the local count; zero
// means it may go now and its weight is counted.
func (p *pacer) delay(weight int) time.Duration {
	d, _ := p.next(weight)
	return d
}

// next decides a request of weight: zero and no refill means it may go now
// and its weight is counted; refill means the board must be asked first.
func (p *pacer) next(weight int) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	pause := p.heldUntil
	if !p.bannedUntil.IsZero() && p.bannedUntil.Add(banMargin).After(pause) {
		pause = p.bannedUntil.Add(banMargin)
	}
	if now.Before(pause) {
		return pause.Sub(now), false
	}
	xnow := p.exchangeTime(now)
	start := p.rollWindow(xnow)
	if into, g := xnow.Sub(start), p.guard(); into < g {
		return g - into, false
	}
	if p.shared != nil && !now.Before(p.fallbackUntil) {
		if p.blockStart.Equal(start) && p.block >= weight {
			p.block -= weight
			p.used += weight
			return 0, false
		}
		if now.Before(p.spentUntil) {
			return p.spentUntil.Sub(now), false
		}
		return 0, true
	}
	limit := p.limit
	if p.shared != nil { // the board is unreachable: keep to a share
		limit /= max(p.peers, p.lastPeers, 1)
	}
	if p.used+weight+p.reserve <= limit {
		p.used += weight // count it now; the response header corrects it
		return 0, false
	}
	return start.Add(p.window).Add(p.guard()).Sub(xnow), false
}

// exchangeTime is local time now on the exchange's clock. The caller holds p.mu.
func (p *pacer) exchangeTime(now time.Time) time.Time {
	if p.offset == nil {
		return now
	}
	return now.Add(p.offset())
}

// rollWindow returns the start of the window xnow is in, starting the
// local count afresh in a new window. The caller holds p.mu.
func (p *pacer) rollWindow(xnow time.Time) time.Time {
	start := xnow.Truncate(p.window)
	if !start.Equal(p.windowStart) {
		if start.After(p.windowStart) {
			p.lastPeers, p.peers = p.peers, 0
		}
		p.windowStart, p.used = start, 0
	}
	return start
}

// guard is the time after a window's start during which no request is sent:
// our estimate of the exchange's clock may be a little ahead, and a request
// sent at our window's start must not reach the exchange while its previous
// window, spent already, is still running. The caller holds p.mu.
func (p *pacer) guard() time.Duration {
	return min(maxGuard, p.window/blockWindows)
}

// refill reserves a block of weight on the board for the current window.
func (p *pacer) refill(ctx context.Context, weight int) error {
	p.refillMu.Lock()
	defer p.refillMu.Unlock()
	p.mu.Lock()
	now := p.now()
	xnow := p.exchangeTime(now)
	start := p.rollWindow(xnow)
	if (p.blockStart.Equal(start) && p.block >= weight) || now.Before(p.spentUntil) {
		p.mu.Unlock()
		return nil // another worker reserved meanwhile
	}
	limit, window, free := p.limit, p.window, p.limit-p.reserve
	want := max(weight, min(p.reserve, p.limit/blockWindows))
	shared, log := p.shared, p.log
	p.mu.Unlock()

	rctx, cancel := context.WithTimeout(ctx, boardTimeout)
	g, err := shared.reserve(rctx, xnow, start, window, limit, free, weight, want)
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	if errors.Is(err, errContended) {
		return nil // the board works, the others were quicker: ask again
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now = p.now()
	if err != nil {
		p.fallbackUntil = now.Add(fallbackFor)
		if !p.fallback {
			p.fallback = true
			log.Warn("shared weight budget unreachable; pacing this fetcher alone with a share of the limit",
				"share", fmt.Sprintf("1/%d", max(p.peers, p.lastPeers, 1)), "limit", p.limit, "retry_in", fallbackFor, "err", err)
		}
		return nil
	}
	if p.fallback {
		p.fallback = false
		log.Info("shared weight budget reachable again", "window_used", g.used, "limit", p.limit)
	}
	if g.peers > p.peers && start.Equal(p.windowStart) {
		p.peers = g.peers
	}
	xnow = p.exchangeTime(now)
	switch {
	case !g.ahead.IsZero():
		p.spentUntil = now.Add(g.ahead.Sub(xnow))
	case g.took == 0:
		p.spentUntil = now.Add(start.Add(window).Add(p.guard()).Sub(xnow))
	default:
		if !p.blockStart.Equal(start) {
			p.block, p.blockStart = 0, start
		}
		p.block += g.took
	}
	if p.blockStart.Equal(start) || g.took == 0 {
		p.sharedUsed = g.used
	}
	return nil
}

// observe records the used weight the exchange reported. With the shared
// budget, a figure above what the fetchers reserved (other clients on the
// same IP) raises the shared figure, so every fetcher holds back.
func (p *pacer) observe(used int) {
	if used < 0 {
		return
	}
	p.lastUsed.Store(int64(used))
	p.mu.Lock()
	now := p.now()
	xnow := p.exchangeTime(now)
	start := p.rollWindow(xnow)
	if used > p.used {
		p.used = used
	}
	// Every request of a window reserves first: without a block in this
	// window (or in its guard) the response answers a request of an earlier
	// window, and its figure is not this window's.
	raise := p.shared != nil && !p.fallback && xnow.Sub(start) >= p.guard() &&
		p.blockStart.Equal(start) && used > p.sharedUsed
	shared, window, limit := p.shared, p.window, p.limit
	p.mu.Unlock()
	if !raise {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), boardTimeout)
	defer cancel()
	figure, err := shared.raise(ctx, start, window, limit, used)
	if err != nil {
		return // the next reservation notices an unreachable board
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blockStart.Equal(start) {
		p.sharedUsed = max(p.sharedUsed, figure)
	}
}

// hold pauses every request until t (a 429's Retry-After).
func (p *pacer) hold(until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until.After(p.heldUntil) {
		p.heldUntil = until
	}
}

// ban pauses every request until the ban ends.
func (p *pacer) ban(until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until.After(p.bannedUntil) {
		p.bannedUntil = until
	}
}

// lift ends a ban early: an operator deleted it from the ban board.
func (p *pacer) lift() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bannedUntil = time.Time{}
}

// banned returns when the current ban ends; zero when there is none.
func (p *pacer) banned() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.now().Before(p.bannedUntil) {
		return time.Time{}
	}
	return p.bannedUntil
}

// setLimit applies the limit read from exchangeInfo.
func (p *pacer) setLimit(limit int, window time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if limit > 0 {
		p.limit = limit
	}
	if window > 0 {
		p.window = window
	}
}

// budget returns the weight limit and its window.
func (p *pacer) budget() (int, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limit, p.window
}
