package fetcher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

func TestPairLock(t *testing.T) {
	btc := candles.Pair{Symbol: "BTCUSDT", Interval: "1h"}
	ctx := context.Background()
	noBeat := func() {}

	// Each case gets its own server, so TTLs and keys do not meet.
	open := func(t *testing.T, ttl time.Duration) *pairLocks {
		_, js := natsServer(t)
		l, err := openPairLocks(ctx, js, ttl, 1)
		if err != nil {
			t.Fatal(err)
		}
		l.poll = 100 * time.Millisecond
		return l
	}

	t.Run("a second run waits until the first releases, then takes it", func(t *testing.T) {
		l := open(t, time.Minute)
		a, holder, err := l.acquire(ctx, btc, "run-a", noBeat)
		if err != nil || holder != "" {
			t.Fatalf("first acquire: holder %q, err %v", holder, err)
		}
		type result struct {
			lk     *pairLock
			holder string
			err    error
			at     time.Time
		}
		got := make(chan result, 1)
		go func() {
			lk, holder, err := l.acquire(ctx, btc, "run-b", noBeat)
			got <- result{lk, holder, err, time.Now()}
		}()
		// Barrier: the second run is waiting once it watches the key (it
		// found the lock held); the holder it reports below proves it.
		waitFor(t, 10*time.Second, "the second run to find the lock held", func() bool {
			select {
			case r := <-got:
				t.Fatalf("second run took a held lock: %+v", r)
			default:
			}
			return watchers(t, l) > 0
		})
		released := time.Now()
		if err := a.release(ctx); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil || r.holder != "run-a" {
			t.Fatalf("second acquire: holder %q, err %v; want it to have waited for run-a", r.holder, r.err)
		}
		// The lock's TTL is a minute: taking it sooner means the watch
		// handed it over on the release, not the expiry.
		if d := r.at.Sub(released); d >= time.Minute {
			t.Fatalf("the waiting run took the lock %v after the release, at the TTL; the watch should hand it over", d)
		}
		e, err := l.kv.Get(ctx, lockKey(btc))
		if err != nil || string(e.Value()) != "run-b" {
			t.Fatalf("lock value %v %v, want run-b", e, err)
		}
	})

	t.Run("a crashed holder's lock expires with the TTL", func(t *testing.T) {
		l := open(t, 2*time.Second)
		if _, _, err := l.acquire(ctx, btc, "run-crashed", noBeat); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		_, holder, err := l.acquire(ctx, btc, "run-b", noBeat)
		if err != nil || holder != "run-crashed" {
			t.Fatalf("holder %q, err %v", holder, err)
		}
		if d := time.Since(began); d < 1500*time.Millisecond {
			t.Fatalf("took the lock after %v, before its 2s TTL expired", d)
		}
	})

	t.Run("refreshing keeps the lock past its TTL", func(t *testing.T) {
		l := open(t, time.Second)
		a, _, err := l.acquire(ctx, btc, "run-a", noBeat)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(250 * time.Millisecond):
					if err := a.refresh(ctx); err != nil {
						t.Errorf("refresh: %v", err)
						return
					}
				}
			}
		}()
		wctx, cancel := context.WithTimeout(ctx, 2500*time.Millisecond)
		defer cancel()
		if lk, _, err := l.acquire(wctx, btc, "run-b", noBeat); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second run got %v, %v while the holder refreshed", lk, err)
		}
	})

	t.Run("a holder that lost its lock learns it and does not delete the new one", func(t *testing.T) {
		l := open(t, time.Second)
		a, _, err := l.acquire(ctx, btc, "run-a", noBeat)
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := l.acquire(ctx, btc, "run-b", noBeat) // after a's expiry
		if err != nil {
			t.Fatal(err)
		}
		if err := a.refresh(ctx); !errors.Is(err, errLockLost) {
			t.Fatalf("refresh of an expired lock: %v, want errLockLost", err)
		}
		if err := a.release(ctx); err != nil {
			t.Fatal(err)
		}
		e, err := l.kv.Get(ctx, lockKey(btc))
		if err != nil || string(e.Value()) != "run-b" {
			t.Fatalf("after the old holder's release the lock is %v %v, want run-b's", e, err)
		}
		if err := b.release(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := l.kv.Get(ctx, lockKey(btc)); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("released lock still there: %v", err)
		}
	})

	t.Run("different pairs do not wait for each other", func(t *testing.T) {
		l := open(t, time.Minute)
		if _, _, err := l.acquire(ctx, btc, "run-a", noBeat); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		for _, p := range []candles.Pair{{Symbol: "ETHUSDT", Interval: "1h"}, {Symbol: "BTCUSDT", Interval: "4h"}} {
			if _, holder, err := l.acquire(wctx, p, "run-a", noBeat); err != nil || holder != "" {
				t.Fatalf("%s: holder %q, err %v", p, holder, err)
			}
		}
	})
}

// watchers counts the consumers on the lock bucket's stream: a run waiting
// for a held lock watches its key through one.
func watchers(t *testing.T, l *pairLocks) int {
	t.Helper()
	st, err := l.kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	return info.State.Consumers
}
