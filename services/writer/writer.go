// Package writer is candlekeep's single writer: it consumes the CANDLES
// stream strictly in order and applies each batch to the database exactly
// once (recording the known gaps its covered span reveals), tracks sync runs
// from the EVENTS stream, announces pair.completed and sync.completed, closes
// runs past their deadline with sync.timeout, and answers
// candles.api.coverage and candles.api.replay.
//
// The database is the truth about what has been applied. Each batch is
// committed together with its stream sequence (the watermark) and acked only
// after the commit; at start-up the durable consumer is checked against the
// watermark and recreated at watermark+1 when they disagree, so a crash, a
// lost ack or a database restored from an older backup all converge on
// "every batch applied once, in order".
package writer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Names other tools see: `nats micro ls`, `nats consumer ls CANDLES`.
const (
	ServiceName    = "candlekeep-writer"
	ServiceVersion = "0.1.0"
	// ConsumerBatches is the durable consumer of CANDLES.
	ConsumerBatches = "writer"
	// ConsumerRuns is the durable consumer of the run events on EVENTS.
	ConsumerRuns = "writer-runs"
)

// Defaults of Options.
const (
	DefaultProgressEvery = 10 * time.Second
	DefaultAckWait       = 30 * time.Second
	// DefaultDeadlineEvery is how often open runs are checked against
	// their deadlines.
	DefaultDeadlineEvery = time.Second
	// batchMaxAckPending keeps enough batches in flight that the database,
	// not the network round trip, sets the pace: a page of 1000 candles
	// takes the database milliseconds, the next pull far less.
	batchMaxAckPending = 64
	// batchBufferBytes bounds the client-side buffer of batches, and so
	// what the server reads ahead from its store for the writer: a fixed
	// amount whatever the number of pairs (docs/architecture.md, "Memory").
	batchBufferBytes = 4 << 20
	// retryMin and retryMax bound the backoff of a failing database write
	// or a consumer that cannot be set up.
	retryMin = 50 * time.Millisecond
	retryMax = 5 * time.Second
	// sideEffectTimeout bounds one event publish or database write done on
	// the way out, after the run's context ended.
	sideEffectTimeout = 10 * time.Second
)

// Options configure a Writer.
type Options struct {
	// Conn is a connected NATS connection, owned by the caller.
	Conn *nats.Conn
	// Store is the database.
	Store Store
	// Logger receives operator logs.
	Logger *slog.Logger
	// Now is the clock for event times and progress rates.
	Now func() time.Time
	// Streams sizes the streams EnsureStreams creates.
	Streams candles.StreamOptions
	// ProgressEvery is how often unfinished runs are logged.
	ProgressEvery time.Duration
	// AckWait is how long JetStream waits for the ack of a batch before
	// delivering it again.
	AckWait time.Duration
	// DeadlineEvery is how often open runs are checked against their
	// deadlines (sync.timeout).
	DeadlineEvery time.Duration
	// Source is the exchange base URL the batches come from (--binance-url).
	// Run binds the database to it: an empty database records it, one
	// filled from another URL is refused (store.SourceMismatchError)
	// unless RebindSource. Empty: not checked.
	Source string
	// RebindSource binds a database filled from another URL to Source
	// instead of refusing it (--rebind-source).
	RebindSource bool
	// DatabasePath names the database file in disk.full and disk.recovered.
	DatabasePath string
	// Active, if set, is published once the streams exist: the writer.active
	// event of a writer that took the lease (see RunLeased).
	Active *candles.WriterActive
	// QuickCheckEvery and IntegrityCheckEvery are how often the running
	// writer checks its database (PRAGMA quick_check, integrity_check);
	// CheckpointEvery how often it checkpoints the WAL (integrity.go).
	QuickCheckEvery, IntegrityCheckEvery, CheckpointEvery time.Duration
	// FutureSkew is how far past Now a candle may close and still be
	// applied (default DefaultFutureSkew): a later one is refused,
	// "candle in the future".
	FutureSkew time.Duration
	// AllowUnplanned applies batches without checking that a planned job
	// produced them (trust.go). Only for tests of the applying itself;
	// no flag sets it.
	AllowUnplanned bool
	// Reopen opens the database file at DatabasePath again: the swap
	// endpoint (candles.api.writer.swap, swap.go) puts a restored copy
	// there and reopens it. Nil: swaps are refused.
	Reopen func(ctx context.Context, path string) (Store, error)
}

// DefaultOptions returns Options with every default set; Conn and Store
// must still be provided, and Logger discards until replaced.
func DefaultOptions() Options {
	return Options{
		Logger:        slog.New(slog.DiscardHandler),
		Now:           time.Now,
		ProgressEvery: DefaultProgressEvery,
		AckWait:       DefaultAckWait,
		DeadlineEvery: DefaultDeadlineEvery,
		FutureSkew:    DefaultFutureSkew,

		QuickCheckEvery:     DefaultQuickCheckEvery,
		IntegrityCheckEvery: DefaultIntegrityCheckEvery,
		CheckpointEvery:     DefaultCheckpointEvery,
	}
}

// Validate reports the first option that cannot work.
func (o Options) Validate() error {
	switch {
	case o.Conn == nil:
		return errors.New("writer: Conn is required (a connected *nats.Conn; see --nats-url)")
	case o.Store == nil:
		return errors.New("writer: Store is required (the database under --data-dir)")
	case o.Logger == nil:
		return errors.New("writer: Logger is required")
	case o.Now == nil:
		return errors.New("writer: Now is required (use time.Now)")
	case o.ProgressEvery <= 0:
		return fmt.Errorf("writer: ProgressEvery %s must be positive (default %s)", o.ProgressEvery, DefaultProgressEvery)
	case o.AckWait < time.Second:
		return fmt.Errorf("writer: AckWait %s must be at least 1s (default %s)", o.AckWait, DefaultAckWait)
	case o.DeadlineEvery <= 0:
		return fmt.Errorf("writer: DeadlineEvery %s must be positive (default %s)", o.DeadlineEvery, DefaultDeadlineEvery)
	case o.QuickCheckEvery <= 0 || o.IntegrityCheckEvery <= 0 || o.CheckpointEvery <= 0:
		return fmt.Errorf("writer: QuickCheckEvery %s, IntegrityCheckEvery %s and CheckpointEvery %s must be positive (defaults %s, %s, %s)",
			o.QuickCheckEvery, o.IntegrityCheckEvery, o.CheckpointEvery, DefaultQuickCheckEvery, DefaultIntegrityCheckEvery, DefaultCheckpointEvery)
	case o.FutureSkew < 0:
		return fmt.Errorf("writer: FutureSkew %s must not be negative (default %s)", o.FutureSkew, DefaultFutureSkew)
	case o.Source != "" && !validSource(o.Source):
		return fmt.Errorf("writer: --binance-url %q is not an http(s) URL", o.Source)
	case o.Streams.Replicas < 0 || o.Streams.Replicas > 5:
		return fmt.Errorf("writer: stream replicas %d must be between 1 and 5 (0 for the default)", o.Streams.Replicas)
	}
	return nil
}

// Writer is the writer service. Create it with New and start it with Run.
type Writer struct {
	o   Options
	js  jetstream.JetStream
	log *slog.Logger

	// announceMu serialises announcing, which both consumers trigger, so an
	// event is not published twice at once.
	announceMu sync.Mutex
	// replays lets Run wait for a replay in progress before it returns.
	replays gate
	// runCtx is Run's context: once its cause is ErrLeaseLost another
	// writer owns the consumers and nothing more is acked.
	runCtx context.Context
	// p holds the database in use and lets Pause swap it (pause.go).
	p pauser
	// dmg is set once the database is found damaged (integrity.go).
	dmg damage
	// disk reports the database's disk running full (disk.go).
	disk diskState
	// consumers are the durable consumers this writer has had, so one
	// that disappears is reported as recreated (resource.recreated).
	consumers consumerSet
	// holder names this writer in candles.api.database (database.go).
	holder string
	// count is the last candle count candles.api.database made.
	count candleCount
	// swaps serialises swaps and keeps the stores they opened (swap.go).
	swaps swapper
}

// New checks o and returns a Writer.
func New(o Options) (*Writer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("writer: jetstream: %w", err)
	}
	w := &Writer{o: o, js: js, log: o.Logger, holder: holderID(o.Active)}
	w.p.st = o.Store
	w.dmg.done = make(chan struct{})
	return w, nil
}

// Run ensures the streams, announces what a previous run committed but did
// not publish, then consumes batches and run events, watches run deadlines
// and serves the coverage and replay endpoints until ctx ends. On
// cancellation it finishes the batch in hand, stops consuming, waits for a
// replay in progress to stop and returns nil; nothing is left half-applied
// because each batch is one transaction acked after its commit. A Writer
// runs once.
func (w *Writer) Run(ctx context.Context) error {
	w.runCtx = ctx
	// The database is checked before it is trusted with any write.
	w.checkAtStart(ctx)
	if w.damaged() == nil {
		if err := w.bindSource(ctx); err != nil {
			return err
		}
	}
	if err := candles.EnsureStreams(ctx, w.js, w.o.Streams); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("writer: %w", err)
	}
	if w.o.Active != nil {
		if err := candles.PublishEvent(ctx, w.js, w.o.Active, "writer.active:"+w.o.Active.Holder, w.o.Now()); err != nil {
			w.log.Warn("publish writer.active", "err", err)
		}
	}
	svc, err := micro.AddService(w.o.Conn, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "applies candle batches to SQLite; reports what it holds; replays CANDLES",
	})
	if err != nil {
		return fmt.Errorf("writer: add micro service: %w", err)
	}
	defer w.closeSwapped() // after the sessions and handlers are done
	defer func() {
		if err := svc.Stop(); err != nil {
			w.log.Warn("stop micro service", "err", err)
		}
	}()
	// Handlers get their own context, cancelled before Run returns for any
	// reason; the deferred function runs before svc.Stop, so no replay
	// outlives Run and its database.
	hctx, hcancel := context.WithCancel(ctx)
	defer func() {
		hcancel()
		w.replays.close()
	}()
	if err := svc.AddEndpoint("coverage", micro.ContextHandler(hctx, w.handleCoverage),
		micro.WithEndpointSubject(candles.SubjectAPICoverage)); err != nil {
		return fmt.Errorf("writer: add coverage endpoint: %w", err)
	}
	if err := svc.AddEndpoint("replay", micro.ContextHandler(hctx, w.handleReplay),
		micro.WithEndpointSubject(candles.SubjectAPIReplay)); err != nil {
		return fmt.Errorf("writer: add replay endpoint: %w", err)
	}
	// Only the lease holder runs this service, so exactly one writer
	// answers for the database.
	if err := svc.AddEndpoint("database", micro.ContextHandler(hctx, w.handleDatabase),
		micro.WithEndpointSubject(candles.SubjectAPIDatabase)); err != nil {
		return fmt.Errorf("writer: add database endpoint: %w", err)
	}

	// A restore swaps a verified copy in under the running writer.
	if err := svc.AddEndpoint("swap", micro.ContextHandler(hctx, w.handleSwap),
		micro.WithEndpointSubject(candles.SubjectAPIWriterSwap)); err != nil {
		return fmt.Errorf("writer: add swap endpoint: %w", err)
	}

	w.announce(ctx) // does nothing on a damaged database

	// A session is everything that uses the database on its own; Pause
	// ends one and its resume starts the next. On a damaged database a
	// session only waits, so Pause can still swap in a restored file.
	resumed := false
	err = w.sessions(ctx, func(ctx context.Context) error {
		if resumed {
			w.checkAtStart(ctx) // a new file is checked before it is trusted too
		}
		resumed = true
		if w.damaged() == nil {
			wctx, release := w.workContext(ctx)
			g, gctx := errgroup.WithContext(wctx)
			g.Go(func() error { return w.watchIntegrity(gctx) })
			g.Go(func() error { return w.consumeBatches(gctx) })
			g.Go(func() error { return w.consumeRuns(gctx) })
			g.Go(func() error { return w.reportProgress(gctx) })
			g.Go(func() error { return w.watchDeadlines(gctx) })
			err := g.Wait()
			release()
			if w.damaged() == nil || errors.Is(context.Cause(ctx), ErrLeaseLost) {
				return err
			}
		}
		return w.refuseDamaged(ctx)
	})
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, errDamaged)) {
		w.log.Info("writer stopped")
		return nil
	}
	return err
}

// refuseDamaged is a session on a damaged database: it publishes
// integrity.failed and writes nothing until ctx ends (a stop, or a Pause
// that brings another file), so the other services and the monitor keep
// working and the endpoints answer with the damage rather than go silent.
func (w *Writer) refuseDamaged(ctx context.Context) error {
	for backoff := retryMin; !w.publishDamage(ctx); backoff = nextBackoff(backoff, retryMax) {
		if !sleep(ctx, backoff) {
			break
		}
	}
	<-ctx.Done()
	w.log.Info("no longer using the damaged database; it was left as it was", "database", w.dbPath())
	return nil
}

// sleep waits d or until ctx ends, reporting whether the full d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// nextBackoff doubles d within [retryMin, limit].
func nextBackoff(d, limit time.Duration) time.Duration {
	d *= 2
	if d < retryMin {
		d = retryMin
	}
	return min(d, limit)
}

// gate tracks work that Run must wait for before it returns, and refuses new
// work once Run is returning.
type gate struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter reports whether work may start; if so, leave must follow.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *gate) leave() { g.wg.Done() }

// close refuses new work and waits for the work in progress.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// fenced reports whether the writer lost its lease: its consumers belong
// to another writer now, so it must not ack anything more.
func (w *Writer) fenced() bool {
	return w.runCtx != nil && errors.Is(context.Cause(w.runCtx), ErrLeaseLost)
}
