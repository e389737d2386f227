package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// healEvery is how often the fetcher checks that its streams, consumers and
// buckets exist. Deletions announced by the server's advisories (`nats
// stream rm`, `nats kv rm`, `nats consumer rm`) are acted on at once; the
// poll covers what no advisory announces, such as a store wiped while the
// server was down.
const healEvery = 2 * time.Second

// afterDeletion is how long a pass waits after a deletion was announced.
const afterDeletion = 500 * time.Millisecond

// errUnavailable marks a problem the fetcher cannot fix by itself: the
// sync endpoint refuses requests (503) while it lasts.
var errUnavailable = errors.New("fetcher unavailable")

// resource is one JetStream resource the fetcher owns: check tells whether
// it exists (an error wrapping a not-found error means missing), create
// makes it again, and after, if set, restores what lived in it.
type resource struct {
	name   string // "stream JOBS", "consumer JOBS > fetcher-jobs", "kv candlekeep_fetchers"
	check  func(ctx context.Context) error
	create func(ctx context.Context) error
	after  func(ctx context.Context)
}

// healer keeps the fetcher's resources in place: one pass checks each in
// order (streams before their consumers) and creates the missing ones again,
// with a resource.recreated event. It is the one place that decides whether
// the fetcher can work, which the sync endpoint asks before it accepts a
// request.
type healer struct {
	js        jetstream.JetStream
	log       *slog.Logger
	resources []resource
	event     func(ctx context.Context, ev candles.Event)
	kick      chan struct{}

	mu      sync.Mutex // one pass at a time
	problem error      // the last pass's unfixable problem, nil when all is well
}

// missing reports whether err says a stream, consumer or bucket does not exist.
func missing(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrConsumerDoesNotExist)
}

// pass checks every resource once and recreates the missing ones. It returns
// an error wrapping errUnavailable naming the first problem it cannot fix.
func (h *healer) pass(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.passLocked(ctx)
	h.problem = err
	return err
}

func (h *healer) passLocked(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	actx, acancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := h.js.AccountInfo(actx)
	acancel()
	if err != nil {
		return fmt.Errorf("%w: JetStream is unavailable: %v", errUnavailable, err)
	}
	for _, r := range h.resources {
		err := r.check(ctx)
		if err == nil {
			continue
		}
		if !missing(err) {
			return fmt.Errorf("%w: cannot check the %s: %v", errUnavailable, r.name, err)
		}
		cerr := r.create(ctx)
		for try := 1; cerr != nil && try < 3 && ctx.Err() == nil; try++ {
			// Just after a deletion the server may still be removing the
			// old store ("error creating store for stream").
			sleepCtx(ctx, 100*time.Millisecond)
			cerr = r.create(ctx)
		}
		if cerr != nil {
			h.log.Error("a resource the fetcher needs is missing and cannot be recreated; retrying",
				"resource", r.name, "err", cerr, "retry_in", healEvery)
			return fmt.Errorf("%w: the %s is missing and cannot be recreated: %v", errUnavailable, r.name, cerr)
		}
		h.log.Warn("resource was missing; recreated", "resource", r.name, "reason", err.Error())
		h.event(ctx, &candles.ResourceRecreated{EventHeader: candles.NewHeader(candles.KindResourceRecreated, ""),
			Resource: r.name, Service: "fetcher", Reason: err.Error()})
		if r.after != nil {
			r.after(ctx)
		}
	}
	return nil
}

// run passes every healEvery, and at once when the server announces a
// deleted stream or consumer, until ctx ends.
func (h *healer) run(ctx context.Context, nc *nats.Conn) error {
	for _, subj := range []string{"$JS.EVENT.ADVISORY.STREAM.DELETED.>", "$JS.EVENT.ADVISORY.CONSUMER.DELETED.>"} {
		sub, err := nc.Subscribe(subj, func(*nats.Msg) { h.poke() })
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	t := time.NewTicker(healEvery)
	defer t.Stop()
	var was error
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-h.kick:
			// The server announces a deletion before it has removed the
			// deleted stream's files; a stream created again at once
			// would lose its new files to that removal.
			sleepCtx(ctx, afterDeletion)
		}
		err := h.pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil && (was == nil || err.Error() != was.Error()):
			h.log.Error("the fetcher cannot work; sync requests are refused until this is fixed", "err", err)
		case err == nil && was != nil:
			h.log.Info("the fetcher can work again", "was", was.Error())
		}
		was = err
	}
}

// poke asks for a pass soon.
func (h *healer) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// ready is what the sync endpoint asks: a fresh pass, so a request is not
// accepted for a run that cannot start.
func (h *healer) ready(ctx context.Context) error {
	return h.pass(ctx)
}

// newHealer lists the fetcher's resources in dependency order.
func (f *Fetcher) newHealer() *healer {
	h := &healer{js: f.js, log: f.log, kick: make(chan struct{}, 1),
		event: func(ctx context.Context, ev candles.Event) { f.event(ctx, f.log, ev, "") }}
	for _, cfg := range candles.StreamConfigs(f.o.Streams) {
		if cfg.Name != candles.StreamSync && cfg.Name != candles.StreamJobs {
			continue // CANDLES and EVENTS are the writer's
		}
		r := resource{
			name:  "stream " + cfg.Name,
			check: func(ctx context.Context) error { _, err := f.js.Stream(ctx, cfg.Name); return err },
			create: func(ctx context.Context) error {
				_, err := f.js.CreateStream(ctx, cfg)
				if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
					return nil // another fetcher was quicker
				}
				return err
			},
		}
		if cfg.Name == candles.StreamSync {
			r.after = f.reinstallSchedule
		}
		h.resources = append(h.resources, r)
	}
	for _, c := range []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{{candles.StreamSync, f.requestConsumerConfig()}, {candles.StreamJobs, f.jobConsumerConfig()}} {
		h.resources = append(h.resources, resource{
			name:  "consumer " + c.stream + " > " + c.cfg.Durable,
			check: func(ctx context.Context) error { _, err := f.js.Consumer(ctx, c.stream, c.cfg.Durable); return err },
			create: func(ctx context.Context) error {
				_, err := f.js.CreateOrUpdateConsumer(ctx, c.stream, c.cfg)
				return err
			},
		})
	}
	replicas := f.o.Streams.Replicas
	for _, cfg := range []jetstream.KeyValueConfig{boardConfig(replicas), lockConfig(lockTTL, replicas), progressConfig(replicas)} {
		var after func(context.Context)
		if cfg.Bucket == FetchersBucket {
			after = func(context.Context) { restartWatch(f.banRewatch) }
		}
		h.resources = append(h.resources, resource{
			after: after,
			name:  "kv " + cfg.Bucket,
			check: func(ctx context.Context) error { _, err := f.js.KeyValue(ctx, cfg.Bucket); return err },
			create: func(ctx context.Context) error {
				_, err := f.js.CreateKeyValue(ctx, cfg)
				if errors.Is(err, jetstream.ErrBucketExists) {
					return nil
				}
				return err
			},
		})
	}
	return h
}

// reinstallSchedule puts the sync schedule back into a recreated SYNC
// stream, from the cluster setting when the fetcher follows one.
func (f *Fetcher) reinstallSchedule(ctx context.Context) {
	var err error
	switch {
	case f.o.Cluster != nil:
		pattern, _, perr := ParseSchedule(f.settings().SyncSchedule, f.o.Now())
		if perr != nil {
			return
		}
		err = installScheduleRev(ctx, f.js, pattern, f.o.Cluster.Revision("sync-schedule"), f.log)
	case f.o.SyncSchedule != "":
		pattern, _, _ := ParseSchedule(f.o.SyncSchedule, f.o.Now())
		err = installSchedule(ctx, f.js, pattern, f.log)
	}
	if err != nil {
		f.log.Error("sync schedule not reinstalled in the recreated SYNC stream; it is tried again at the next change or start", "err", err)
	}
}
