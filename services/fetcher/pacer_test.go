package fetcher

import (
	"context"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestPacer(t *testing.T) {
	window := time.Minute
	start := time.Date(2026, 11, 27, 14, 30, 1, 0, time.UTC) // a second into a window
	tests := []struct {
		name string
		// steps run against a pacer with limit 100 and reserve 10, at start.
		steps func(p *pacer, c *fakeClock) time.Duration
		want  time.Duration
	}{
		{"under the budget: go now", func(p *pacer, c *fakeClock) time.Duration {
			return p.delay(2)
		}, 0},
		{"the reserve is kept for requests in flight", func(p *pacer, c *fakeClock) time.Duration {
			for range 44 { // 88 of 100 spent
				if d := p.delay(2); d != 0 {
					t.Fatalf("request held with budget left: %v", d)
				}
			}
			c.t = c.t.Add(10 * time.Second)
			return p.delay(2) // 88+2+10 = 100 still fits
		}, 0},
		{"over the budget: wait for the next window", func(p *pacer, c *fakeClock) time.Duration {
			p.observe(95) // other fetchers behind the same IP spent it
			c.t = c.t.Add(20 * time.Second)
			return p.delay(2)
		}, 39*time.Second + maxGuard},
		{"a lower reported weight does not undo our own count", func(p *pacer, c *fakeClock) time.Duration {
			p.observe(95)
			p.observe(3)
			return p.delay(2)
		}, 59*time.Second + maxGuard},
		{"a new window starts afresh", func(p *pacer, c *fakeClock) time.Duration {
			p.observe(100)
			c.t = c.t.Add(window)
			return p.delay(2)
		}, 0},
		{"a 429 holds every request for Retry-After", func(p *pacer, c *fakeClock) time.Duration {
			p.hold(c.t.Add(3 * time.Second))
			return p.delay(2)
		}, 3 * time.Second},
		{"a ban holds every request until it ends", func(p *pacer, c *fakeClock) time.Duration {
			p.ban(c.t.Add(2 * time.Minute))
			p.ban(c.t.Add(time.Minute)) // an older report does not shorten it
			return p.delay(1)
		}, 2*time.Minute + banMargin},
		{"a lifted ban lets requests go, a 429 hold stays", func(p *pacer, c *fakeClock) time.Duration {
			p.ban(c.t.Add(2 * time.Minute))
			p.hold(c.t.Add(time.Second))
			p.lift()
			return p.delay(1)
		}, time.Second},
		{"after the ban and a margin, requests go", func(p *pacer, c *fakeClock) time.Duration {
			p.ban(c.t.Add(2 * time.Second))
			c.t = c.t.Add(2*time.Second + banMargin)
			return p.delay(1)
		}, 0},
		{"the limit from exchangeInfo applies", func(p *pacer, c *fakeClock) time.Duration {
			p.setLimit(20, 10*time.Second)
			p.observe(9)
			return p.delay(2) // 9+2+10 > 20: wait for the 10s window to end
		}, 9*time.Second + maxGuard},
		{"no request in the guard at a window's start", func(p *pacer, c *fakeClock) time.Duration {
			c.t = start.Truncate(window).Add(30 * time.Millisecond)
			return p.delay(2)
		}, maxGuard - 30*time.Millisecond},
		{"windows follow the exchange's clock", func(p *pacer, c *fakeClock) time.Duration {
			p.offset = func() time.Duration { return 30 * time.Second } // the exchange is at 14:30:31
			p.observe(95)
			return p.delay(2)
		}, 29*time.Second + maxGuard},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeClock{t: start}
			p := newPacer(100, window, 10, c.now)
			if got := tt.steps(p, c); got != tt.want {
				t.Fatalf("delay %v, want %v", got, tt.want)
			}
		})
	}
}

// A ban that arrives while a request waits for the budget holds it too, and
// a waiting request gives up when its context ends.
func TestPacerWaitSeesALaterBan(t *testing.T) {
	p := newPacer(100, time.Minute, 0, time.Now)
	p.hold(time.Now().Add(100 * time.Millisecond))
	banEnd := time.Now().Add(600 * time.Millisecond)
	go func() {
		time.Sleep(50 * time.Millisecond)
		p.ban(banEnd)
	}()
	if err := p.wait(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(banEnd) {
		t.Fatalf("request went %v before the ban ended", banEnd.Sub(now))
	}

	p.ban(time.Now().Add(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.wait(ctx, 1); err == nil {
		t.Fatal("wait returned during a ban")
	}
}
