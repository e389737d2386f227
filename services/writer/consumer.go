package writer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// errResync asks the consumer loop to rebuild its consumer at watermark+1.
var errResync = errors.New("consumer out of step with the database")

// consumerConfig is the durable consumer name on stream, positioned to
// deliver everything after the watermark w.
func consumerConfig(base jetstream.ConsumerConfig, w uint64) jetstream.ConsumerConfig {
	cfg := base
	if w == 0 {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
		cfg.OptStartSeq = 0
	} else {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = w + 1
	}
	return cfg
}

// ensureConsumer returns the durable consumer cfg.Durable on stream, ready to
// deliver the messages after watermark w. An existing consumer is kept only
// if its state agrees with the database: everything up to w acked, nothing
// beyond it, nothing in flight, and the same settings. Otherwise it is
// deleted and created again at w+1, which is always right because the
// database is the truth: this covers a crash between commit and ack (the ack
// floor is behind), a database restored from an older backup (ahead) and
// messages left unacked by a previous process (they come again at once
// instead of after AckWait).
func (w *Writer) ensureConsumer(ctx context.Context, stream string, base jetstream.ConsumerConfig, wm uint64) (jetstream.Consumer, error) {
	cfg := consumerConfig(base, wm)
	lost := false
	cons, err := w.js.Consumer(ctx, stream, cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		lost = w.consumers.had(stream, cfg.Durable)
		w.log.Info("creating consumer", "stream", stream, "consumer", cfg.Durable, "start_seq", wm+1, "lost", lost)
	case err != nil:
		return nil, fmt.Errorf("look up consumer %s on %s: %w", cfg.Durable, stream, err)
	default:
		info := cons.CachedInfo()
		why := consumerMismatch(info, cfg, wm)
		if why == "" {
			w.consumers.add(stream, cfg.Durable)
			return cons, nil
		}
		w.log.Info("recreating consumer at the database watermark", "stream", stream, "consumer", cfg.Durable,
			"why", why, "watermark", wm, "ack_floor", info.AckFloor.Stream, "ack_pending", info.NumAckPending)
		if err := w.js.DeleteConsumer(ctx, stream, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("delete consumer %s on %s: %w", cfg.Durable, stream, err)
		}
	}
	cons, err = w.js.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s at %d: %w", cfg.Durable, stream, wm+1, err)
	}
	w.consumers.add(stream, cfg.Durable)
	if lost {
		w.recreated(ctx, "consumer", cfg.Durable, stream, cons.CachedInfo().Created.UTC().Format(time.RFC3339Nano))
	}
	return cons, nil
}

// consumerSet remembers which consumers this writer has created or used,
// so one that is gone later was lost (deleted by hand, or with its
// stream), not merely never made.
type consumerSet struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (c *consumerSet) add(stream, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	c.seen[stream+"/"+name] = true
}

func (c *consumerSet) had(stream, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[stream+"/"+name]
}

// consumerMismatch says why an existing consumer cannot be trusted to
// continue from watermark wm, or "" when it can.
func consumerMismatch(info *jetstream.ConsumerInfo, want jetstream.ConsumerConfig, wm uint64) string {
	have := info.Config
	switch {
	case info.NumAckPending > 0:
		return "messages in flight from a previous process"
	case info.AckFloor.Stream < wm:
		return "ack floor behind the database (crash between commit and ack)"
	case info.AckFloor.Stream > wm:
		return "ack floor ahead of the database (database restored from an older copy)"
	case have.AckPolicy != want.AckPolicy, have.AckWait != want.AckWait,
		have.MaxAckPending != want.MaxAckPending, have.FilterSubject != want.FilterSubject,
		!slices.Equal(have.FilterSubjects, want.FilterSubjects):
		return "settings changed"
	}
	return ""
}
