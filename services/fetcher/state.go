package fetcher

import (
	"context"
)

// exchangeInfoWeight is the request weight of /api/v3/exchangeInfo.
const exchangeInfoWeight = 20

// openState creates or opens the JetStream KV buckets the fetchers share:
// FetchersBucket (the ban, what each pair's last run fetched), LockBucket
// (one sync per pair) and ProgressBucket (job checkpoints), applies a ban in
// force before the first request and has the pacer reserve every request's
// weight in the shared budget (WeightKey).
func (f *Fetcher) openState(ctx context.Context) error {
	replicas := f.o.Streams.Replicas
	b, err := openBoard(ctx, f.js, replicas, f.pacer, f.log, f.o.Now)
	if err != nil {
		return err
	}
	locks, err := openPairLocks(ctx, f.js, lockTTL, replicas)
	if err != nil {
		return err
	}
	progress, err := openProgress(ctx, f.js, replicas)
	if err != nil {
		return err
	}
	b.rewatch = f.banRewatch
	f.board, f.locks, f.progress = b, locks, progress
	// Every request's weight is reserved on the board from now on.
	f.pacer.share(&sharedBudget{kv: b.kv, id: f.id}, f.log)
	return nil
}
