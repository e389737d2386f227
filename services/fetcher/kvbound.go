package fetcher

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvOpTimeout bounds one operation on a fetcher bucket (locks, checkpoints,
// the board). A job's context carries the run's deadline, hours away, and
// jetstream applies its own default timeout only to a context without one:
// a put whose request reached a node that then went away would wait for an
// answer that never comes, holding the job while its heartbeat keeps it
// alive, and the run would never end.
const kvOpTimeout = 10 * time.Second

// boundedKV is a bucket whose reads and writes give up after kvOpTimeout,
// with an error natsutil.Unavailable recognises (nats.ErrTimeout), so the
// job is retried without counting an attempt against its pair.
type boundedKV struct{ jetstream.KeyValue }

func bounded(kv jetstream.KeyValue) jetstream.KeyValue { return boundedKV{kv} }

func boundedOp[T any](ctx context.Context, what, key string, op func(context.Context) (T, error)) (T, error) {
	octx, cancel := context.WithTimeout(ctx, kvOpTimeout)
	defer cancel()
	v, err := op(octx)
	if err != nil && ctx.Err() == nil && octx.Err() != nil {
		err = fmt.Errorf("%s %s: %w: no answer within %v (%w)", what, key, nats.ErrTimeout, kvOpTimeout, err)
	}
	return v, err
}

func (b boundedKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return boundedOp(ctx, "get", key, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return b.KeyValue.Get(ctx, key) })
}

func (b boundedKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return boundedOp(ctx, "put", key, func(ctx context.Context) (uint64, error) { return b.KeyValue.Put(ctx, key, value) })
}

func (b boundedKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return boundedOp(ctx, "create", key, func(ctx context.Context) (uint64, error) { return b.KeyValue.Create(ctx, key, value, opts...) })
}

func (b boundedKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return boundedOp(ctx, "update", key, func(ctx context.Context) (uint64, error) {
		return b.KeyValue.Update(ctx, key, value, revision)
	})
}

func (b boundedKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := boundedOp(ctx, "delete", key, func(ctx context.Context) (struct{}, error) { return struct{}{}, b.KeyValue.Delete(ctx, key, opts...) })
	return err
}

func (b boundedKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := boundedOp(ctx, "purge", key, func(ctx context.Context) (struct{}, error) { return struct{}{}, b.KeyValue.Purge(ctx, key, opts...) })
	return err
}
