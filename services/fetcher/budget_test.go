package fetcher

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/fetcher/binance"
)

// sharedPacers returns n pacers with limit, window and reserve that share
// one budget on a real embedded NATS server, and the bucket they share.
func sharedPacers(t *testing.T, js jetstream.JetStream, n, limit, reserve int, window time.Duration, now func() time.Time) ([]*pacer, jetstream.KeyValue) {
	t.Helper()
	var kv jetstream.KeyValue
	var out []*pacer
	for i := range n {
		p := newPacer(limit, window, reserve, now)
		b, err := openBoard(context.Background(), js, 1, p, testLogger(), now)
		if err != nil {
			t.Fatal(err)
		}
		kv = b.kv
		p.share(&sharedBudget{kv: b.kv, id: fmt.Sprintf("fetcher-%d", i)}, testLogger())
		out = append(out, p)
	}
	return out, kv
}

// Three fetchers' pacers, four workers each, send real klines requests to a
// simulator enforcing 40 weight per 1 s window. Each pacer alone would let
// 32 weight through per window (96 together); sharing the budget they never
// go over 40 in any of the simulator's windows, and get no 429.
func TestPacersShareOneBudget(t *testing.T) {
	const limit, window, requests = 40, time.Second, 90
	s := sim.New(sim.Options{WeightLimit: limit, WeightWindow: window})
	api := binance.New(serveSim(t, s, nil), &http.Client{Timeout: 5 * time.Second})
	_, js := natsServer(t)
	pacers, kv := sharedPacers(t, js, 3, limit, klinesWeight*4, window, time.Now)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	left := requests
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		left--
		return left >= 0
	}
	from, until := klinesRange(candles.MustInterval("1h"), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 10)
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for _, p := range pacers {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for take() {
					if err := p.wait(ctx, klinesWeight); err != nil {
						errs <- err
						return
					}
					_, r, err := api.Klines(ctx, "BTCUSDT", "1h", from, until-1, 1000)
					p.observe(r.UsedWeight)
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.RateLimited != 0 || st.Banned != 0 {
		t.Fatalf("%d answers 429 and %d 418 with a shared budget; windows %+v", st.RateLimited, st.Banned, st.Windows)
	}
	if st.Paths["/api/v3/klines"] != requests {
		t.Fatalf("%d klines requests, want %d", st.Paths["/api/v3/klines"], requests)
	}
	for _, w := range st.Windows {
		if w.Weight > limit {
			t.Fatalf("window %s used %d weight, limit %d; windows %+v", w.Start.Format("15:04:05.000"), w.Weight, limit, st.Windows)
		}
	}
	if len(st.Windows) < requests*klinesWeight/limit {
		t.Fatalf("%d weight sent in %d windows of %d", requests*klinesWeight, len(st.Windows), limit)
	}
	var rec weightRecord
	e, err := kv.Get(ctx, WeightKey)
	if err != nil || json.Unmarshal(e.Value(), &rec) != nil {
		t.Fatalf("no readable %s key: %v", WeightKey, err)
	}
	if rec.Limit != limit || rec.WindowMS != window.Milliseconds() || rec.Used > limit-klinesWeight*4 || len(rec.By) == 0 {
		t.Fatalf("weight record %+v", rec)
	}
}

// A used weight reported by the exchange above what the fetchers reserved
// (another client on the same IP) raises the shared figure, so another
// fetcher holds back as well.
func TestExchangeFigureRaisesTheSharedBudget(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 27, 14, 30, 1, 0, time.UTC)}
	_, js := natsServer(t)
	ps, kv := sharedPacers(t, js, 2, 40, 2, time.Minute, c.now)
	a, b := ps[0], ps[1]
	ctx := context.Background()
	if err := a.wait(ctx, 2); err != nil { // reserves a block of 2
		t.Fatal(err)
	}
	a.observe(30)
	for i := range 4 { // 30 of 40 spent, 2 kept in reserve: four more blocks of 2
		if err := b.wait(ctx, 2); err != nil {
			t.Fatal(err)
		}
		if i < 3 && b.block != 0 {
			t.Fatalf("block of %d left; want blocks of 2", b.block)
		}
	}
	if d, refill := b.next(2); !refill || d != 0 {
		t.Fatalf("next = %v, %v; want a reservation", d, refill)
	}
	if err := b.refill(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if d := b.delay(2); d != 59*time.Second+maxGuard {
		t.Fatalf("delay %v with the window spent, want the next window", d)
	}
	e, err := kv.Get(ctx, WeightKey)
	if err != nil {
		t.Fatal(err)
	}
	var rec weightRecord
	_ = json.Unmarshal(e.Value(), &rec)
	if rec.Used != 38 || rec.By["fetcher-0"] != 2 || rec.By["fetcher-1"] != 8 || !rec.Start.Equal(c.t.Truncate(time.Minute)) {
		t.Fatalf("weight record %+v, want 38 used: 30 reported (with fetcher-0's 2), then 8 by fetcher-1", rec)
	}
}

// When the board cannot be reached, a pacer counts alone with a share of
// the limit for the fetchers it saw, instead of stopping or taking it all.
func TestPacerFallsBackToAShareWithoutTheBoard(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 27, 14, 30, 1, 0, time.UTC)}
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ps, _ := sharedPacers(t, js, 3, 40, 2, time.Minute, c.now)
	ctx := context.Background()
	for _, p := range append(ps, ps[0]) { // the last reservation sees all three
		if err := p.wait(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	ns.Shutdown()
	a := ps[0]
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.wait(wctx, 2); err != nil { // the board fails: 4+2+2 <= 40/3
		t.Fatal(err)
	}
	for range 2 { // 6+2+2, 8+2+2 <= 13
		if d := a.delay(2); d != 0 {
			t.Fatalf("held %v within its share", d)
		}
	}
	if d := a.delay(2); d != 59*time.Second+maxGuard {
		t.Fatalf("delay %v past a third of the limit, want the next window", d)
	}
}

// A record of the next window from a fetcher whose clock runs a little
// ahead is waited for; one far ahead (a clock that jumped, a hand edit) is
// replaced instead of stalling every fetcher.
func TestBoardAheadOfOurClock(t *testing.T) {
	tests := []struct {
		name   string
		start  time.Time // of the record on the board
		want   time.Duration
		on     time.Time // the board's window afterwards
		booked int
	}{
		{"the next window, half a second ahead: wait for it", time.Date(2026, 11, 27, 14, 31, 0, 0, time.UTC),
			500 * time.Millisecond, time.Date(2026, 11, 27, 14, 31, 0, 0, time.UTC), 10},
		{"ten minutes ahead: replaced", time.Date(2026, 11, 27, 14, 40, 0, 0, time.UTC),
			0, time.Date(2026, 11, 27, 14, 30, 0, 0, time.UTC), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeClock{t: time.Date(2026, 11, 27, 14, 30, 59, 500_000_000, time.UTC)}
			_, js := natsServer(t)
			ps, kv := sharedPacers(t, js, 1, 40, 2, time.Minute, c.now)
			data, _ := json.Marshal(weightRecord{V: candles.Version, Start: tt.start, WindowMS: 60000, Limit: 40, Used: 10, By: map[string]int{"other": 10}})
			if _, err := kv.Put(context.Background(), WeightKey, data); err != nil {
				t.Fatal(err)
			}
			p := ps[0]
			if _, refill := p.next(2); !refill {
				t.Fatal("no reservation asked for")
			}
			if err := p.refill(context.Background(), 2); err != nil {
				t.Fatal(err)
			}
			if d := p.delay(2); d != tt.want {
				t.Fatalf("delay %v, want %v", d, tt.want)
			}
			e, err := kv.Get(context.Background(), WeightKey)
			if err != nil {
				t.Fatal(err)
			}
			var rec weightRecord
			_ = json.Unmarshal(e.Value(), &rec)
			if !rec.Start.Equal(tt.on) || rec.Used != tt.booked {
				t.Fatalf("board %+v, want window %v with %d used", rec, tt.on, tt.booked)
			}
		})
	}
}

// BenchmarkSharedReserve measures one compare-and-set reservation on an
// embedded server, alone and with three processes' worth of contention: the
// cost a request would pay without blocks.
func BenchmarkSharedReserve(b *testing.B) {
	ns := natstest.RunServer(b)
	for _, contenders := range []int{1, 3} {
		b.Run(fmt.Sprintf("fetchers=%d", contenders), func(b *testing.B) {
			var budgets []*sharedBudget
			for i := range contenders {
				js, err := jetstream.New(natstest.Connect(b, ns))
				if err != nil {
					b.Fatal(err)
				}
				p := newPacer(1<<30, time.Hour, 0, time.Now)
				bd, err := openBoard(context.Background(), js, 1, p, testLogger(), time.Now)
				if err != nil {
					b.Fatal(err)
				}
				budgets = append(budgets, &sharedBudget{kv: bd.kv, id: fmt.Sprintf("fetcher-%d", i)})
			}
			start := time.Now().Truncate(time.Hour)
			b.ResetTimer()
			var wg sync.WaitGroup
			for _, s := range budgets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range b.N {
						if _, err := s.reserve(context.Background(), time.Now(), start, time.Hour, 1<<30, 1<<30, 2, 2); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*contenders), "µs/reservation")
		})
	}
}
