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
type pacer struct {
	mu      sync.Mutex
	limit   int           // weight per window
	window  time.Duration // window length
	reserve int           // weight kept free for requests already in flight
	now     func() time.Time

	windowStart time.Time
	used        int       // highest used weight seen in this window
	bannedUntil time.Time // set by a 418; every request waits
}

func newPacer(limit int, window time.Duration, reserve int, now func() time.Time) *pacer {
	return &pacer{limit: limit, window: window, reserve: reserve, now: now}
}

// wait blocks until a request of the given weight may be sent.
func (p *pacer) wait(ctx context.Context, weight int) error {
	for {
		d := p.delay(weight)
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (p *pacer) delay(weight int) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Before(p.bannedUntil) {
		return p.bannedUntil.Sub(now)
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

// ban holds every request until t.
func (p *pacer) ban(until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until.After(p.bannedUntil) {
		p.bannedUntil = until
	}
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
