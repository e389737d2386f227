package fetcher

import (
	"context"
	"sync"
	"time"
)

// pacer keeps a fetcher under the exchange's request-weight limit. The
// exchange counts weight per IP in fixed windows and reports the total in
// X-MBX-USED-WEIGHT-1M on every response, so that figure already includes
// other fetchers behind the same address: the pacer trusts it over its own
// count and holds new requests once the window is nearly spent.
//
// Two pauses stop every request of the process besides the budget: a hold
// after a 429 (for its Retry-After; local, since the weight header already
// warns the other fetchers) and a ban after a 418, shared by every fetcher
// through the ban board.
type pacer struct {
	mu      sync.Mutex
	limit   int           // weight per window
	window  time.Duration // window length
	reserve int           // weight kept free for requests already in flight
	now     func() time.Time

	windowStart time.Time
	used        int       // highest used weight seen in this window
	heldUntil   time.Time // set by a 429's Retry-After
	bannedUntil time.Time // set by a 418, here or at another fetcher
}

func newPacer(limit int, window time.Duration, reserve int, now func() time.Time) *pacer {
	return &pacer{limit: limit, window: window, reserve: reserve, now: now}
}

// banMargin is added to a ban's end, read from the exchange's message in
// whole ms by the exchange's clock, so the first request after it does not
// arrive a moment early and extend the ban.
const banMargin = 500 * time.Millisecond

// pauseCheck bounds how long wait sleeps before it looks again, so a ban
// or a lift that arrives while it sleeps takes effect promptly.
const pauseCheck = 250 * time.Millisecond

// wait blocks until a request of the given weight may be sent.
func (p *pacer) wait(ctx context.Context, weight int) error {
	for {
		d := p.delay(weight)
		if d <= 0 {
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

// delay is how long a request of weight must wait; zero means it may go now
// and its weight is counted.
func (p *pacer) delay(weight int) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	pause := p.heldUntil
	if !p.bannedUntil.IsZero() && p.bannedUntil.Add(banMargin).After(pause) {
		pause = p.bannedUntil.Add(banMargin)
	}
	if now.Before(pause) {
		return pause.Sub(now)
	}
	start := now.Truncate(p.window)
	if !start.Equal(p.windowStart) {
		p.windowStart, p.used = start, 0
	}
	if p.used+weight+p.reserve <= p.limit {
		p.used += weight // count it now; the response header corrects it
		return 0
	}
	return start.Add(p.window).Sub(now) + 5*time.Millisecond
}

// observe records the used weight the exchange reported.
func (p *pacer) observe(used int) {
	if used < 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.now().Truncate(p.window)
	if !start.Equal(p.windowStart) {
		p.windowStart, p.used = start, 0
	}
	if used > p.used {
		p.used = used
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
