package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// LockBucket is the JetStream KV bucket of per-pair locks: one sync per pair
// at a time across every fetcher. Key <interval>.<SYMBOL>, value the run_id
// of the job holding it. The holder refreshes it after every page and on a
// heartbeat; a crashed holder's lock expires with the bucket's TTL.
//
//	nats kv ls candlekeep_pair_locks
//	nats kv get candlekeep_pair_locks 4h.BTCUSDT
const LockBucket = "candlekeep_pair_locks"

const (
	// lockTTL is a bit above the job AckWait: a lock outlives its holder's
	// last heartbeat by about as long as the job takes to be redelivered.
	lockTTL = jobAckWait + 30*time.Second
	// heartbeat is how often a job in progress (or waiting for its pair)
	// tells JetStream it is alive and refreshes its lock.
	heartbeat = jobAckWait / 4
	// lockPoll is how often a waiting job retries the lock besides the
	// watch, which does not see a lock expire.
	lockPoll = time.Second
)

// errLockLost: the job's lock expired and another job took the pair.
var errLockLost = errors.New("pair lock lost: it expired and another job took the pair")

// pairLocks hands out the locks of LockBucket.
type pairLocks struct {
	kv   jetstream.KeyValue
	poll time.Duration
}

// openPairLocks creates or updates the lock bucket with a TTL.
func openPairLocks(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (*pairLocks, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, lockConfig(ttl, replicas))
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", LockBucket, err)
	}
	return &pairLocks{kv: bounded(kv), poll: lockPoll}, nil
}

// lockConfig is the configuration of LockBucket.
func lockConfig(ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      LockBucket,
		Description: "candlekeep: one sync per pair at a time; key <interval>.<SYMBOL>, value the holding run_id",
		TTL:         ttl,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// lockKey is the key of a pair's lock.
func lockKey(p candles.Pair) string { return p.Interval + "." + p.Symbol }

// pairLock is a held lock.
type pairLock struct {
	kv    jetstream.KeyValue
	key   string
	runID string

	mu  sync.Mutex
	rev uint64 // revision of our last write; 0 once released or lost
}

// acquire takes the lock of p for runID. While another job holds it, it
// waits (calling beat every heartbeat, so the job message stays alive
// without using up a delivery) until the holder releases it or its lock
// expires, or ctx ends. holder is the run_id it waited for, "" if none.
func (l *pairLocks) acquire(ctx context.Context, p candles.Pair, runID string, beat func()) (lk *pairLock, holder string, err error) {
	key := lockKey(p)
	try := func() (bool, error) {
		rev, err := l.kv.Create(ctx, key, []byte(runID))
		if err == nil {
			lk = &pairLock{kv: l.kv, key: key, runID: runID, rev: rev}
			return true, nil
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			if holder == "" {
				holder = "?"
				if e, gerr := l.kv.Get(ctx, key); gerr == nil {
					holder = string(e.Value())
				}
			}
			return false, nil
		}
		return false, fmt.Errorf("take the lock of %s: %w", p, err)
	}
	if ok, err := try(); ok || err != nil {
		return lk, "", err
	}
	// Watch for the holder's release; the poll covers an expiry, which the
	// watch does not report.
	w, err := l.kv.Watch(ctx, key, jetstream.UpdatesOnly())
	if err != nil {
		return nil, holder, fmt.Errorf("watch the lock of %s: %w", p, err)
	}
	defer func() { _ = w.Stop() }()
	updates := w.Updates()
	poll := time.NewTicker(l.poll)
	defer poll.Stop()
	beats := time.NewTicker(heartbeat)
	defer beats.Stop()
	for {
		if ok, err := try(); ok || err != nil {
			return lk, holder, err
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil, holder, ctx.Err()
			case e, ok := <-updates:
				if !ok {
					updates = nil // the watch ended; the poll goes on
					continue
				}
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					break wait // released
				}
			case <-poll.C:
				break wait
			case <-beats.C:
				beat()
			}
		}
	}
}

// refresh rewrites the lock, which restarts its TTL. errLockLost means it
// expired and another job holds the pair now.
func (lk *pairLock) refresh(ctx context.Context) error {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.rev == 0 {
		return errLockLost
	}
	rev, err := lk.kv.Update(ctx, lk.key, []byte(lk.runID), lk.rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			lk.rev = 0
			return errLockLost
		}
		return fmt.Errorf("refresh the lock %s: %w", lk.key, err)
	}
	lk.rev = rev
	return nil
}

// release deletes the lock unless another job holds it by now.
func (lk *pairLock) release(ctx context.Context) error {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.rev == 0 {
		return nil
	}
	rev := lk.rev
	lk.rev = 0
	if err := lk.kv.Delete(ctx, lk.key, jetstream.LastRevision(rev)); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return nil // it expired and is someone else's now
		}
		return fmt.Errorf("release the lock %s: %w", lk.key, err)
	}
	return nil
}
