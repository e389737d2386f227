// Package fetcher is candlekeep's fetcher service: it takes sync requests
// (from the SYNC stream and the candles.api.sync endpoint), splits them into
// one job per (symbol, interval) on a work queue that every fetcher process
// shares, pages /api/v3/klines for each job, drops the still-open candle,
// validates every page and publishes it to candles.batch.<interval>.<SYMBOL>
// with a Nats-Msg-Id, so a retried job never stores a page twice.
//
// Fetchers coordinate through JetStream alone: a KV lock per pair
// (LockBucket) keeps one sync per pair at a time, a checkpoint per job
// (ProgressBucket) lets a redelivered job resume at the page that failed,
// and a shared board (FetchersBucket) carries the exchange's 418 ban to
// every fetcher and holds the request-weight budget they all reserve from.
// Retries are JetStream redeliveries (NakWithDelay); a job whose deliveries
// run out without a decision still ends as pair.failed, from the server's
// max-deliveries advisory.
package fetcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/services/fetcher/binance"
)

// Defaults of Options.
const (
	DefaultBinanceURL      = binance.DefaultURL
	DefaultInterval        = "4h"
	DefaultLookback        = 1000
	DefaultConcurrency     = 8
	DefaultPageLimit       = 1000
	DefaultMaxDeliver      = 4 // the first try and three retries
	DefaultRetryBase       = 2 * time.Second
	DefaultRequestTimeout  = 15 * time.Second
	DefaultWeightLimit     = 6000
	DefaultCoverageTimeout = 10 * time.Second
	DefaultSyncTimeout     = 30 * time.Minute

	// Consumer names, shared by every fetcher process.
	RequestConsumer = "fetcher-requests"
	JobConsumer     = "fetcher-jobs"

	// ServiceName is the NATS micro service name (`nats micro ls`).
	ServiceName = "candlekeep-fetcher"
	// ServiceVersion is reported by `nats micro info`.
	ServiceVersion = "0.1.0"

	requestMaxDeliver = 10
	jobAckWait        = time.Minute
	closeMargin       = time.Second // a candle counts as closed only this long after its close time
	// jobMaxDeliveries is the server's bound on a job's deliveries, a
	// backstop only: the fetcher itself gives a pair up after MaxDeliver
	// attempts in a row without a page published, a count that progress
	// resets, so a long backfill through a flaky exchange may take many
	// deliveries (and 418 pauses, shutdowns and lost locks take some too).
	// A job whose deliveries still run out (say it kills every fetcher that
	// takes it) ends with pair.failed from the max-deliveries advisory.
	jobMaxDeliveries = 200
)

// Options configures a Fetcher.
type Options struct {
	Conn        *nats.Conn
	BinanceURL  string
	HTTPClient  *http.Client // nil: a client with RequestTimeout
	Symbols     []string     // the configured set, used when a request names none
	Intervals   []string
	Lookback    int // bars fetched for a pair with no stored candles
	Concurrency int // jobs fetched at once by this process
	PageLimit   int // klines per request (Binance max 1000)
	MaxDeliver  int // attempts per job before the pair fails
	RetryBase   time.Duration
	// RequestTimeout bounds each HTTP request when HTTPClient is nil.
	RequestTimeout time.Duration
	// WeightLimit is used until /api/v3/exchangeInfo tells the real one.
	WeightLimit int
	// SyncSchedule is --sync-schedule, installed as a JetStream message
	// schedule (see ParseSchedule); "" leaves the installed one alone.
	SyncSchedule string
	// SyncTimeout is the run deadline (sync.timeout); 0 means none.
	SyncTimeout time.Duration
	// CatchUp starts a sync at start-up when stored data is older than one
	// interval (the server does not replay ticks missed while it was down).
	CatchUp bool
	Streams candles.StreamOptions
	// Cluster, when set, is the live cluster configuration: the pair set,
	// the lookback, the run deadline and the schedule follow it while the
	// fetcher runs, and the fields above only seed it. Without it (tests,
	// embedding) the fields above are used as they are.
	Cluster *cluster.Config
	Logger  *slog.Logger
	Now     func() time.Time
}

// DefaultOptions returns the production defaults (Conn and Logger unset).
func DefaultOptions() Options {
	return Options{
		BinanceURL:     DefaultBinanceURL,
		Symbols:        candles.DefaultSymbols(),
		Intervals:      []string{DefaultInterval},
		Lookback:       DefaultLookback,
		Concurrency:    DefaultConcurrency,
		PageLimit:      DefaultPageLimit,
		MaxDeliver:     DefaultMaxDeliver,
		RetryBase:      DefaultRetryBase,
		RequestTimeout: DefaultRequestTimeout,
		WeightLimit:    DefaultWeightLimit,
		SyncSchedule:   DefaultSyncSchedule,
		SyncTimeout:    DefaultSyncTimeout,
		CatchUp:        true,
		Now:            time.Now,
	}
}

// Validate names the flag at fault and what it allows.
func (o Options) Validate() error {
	if o.Conn == nil {
		return errors.New("fetcher: no NATS connection")
	}
	if o.Logger == nil {
		return errors.New("fetcher: no logger")
	}
	return o.ValidateConfig()
}

// ValidateConfig checks what comes from flags, so a command can refuse bad
// flags before it starts anything.
func (o Options) ValidateConfig() error {
	if u, err := url.Parse(o.BinanceURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--binance-url %q: want an http(s) URL such as %s", o.BinanceURL, DefaultBinanceURL)
	}
	if err := (candles.SyncRequest{Symbols: o.Symbols, Intervals: o.Intervals}).Validate(); err != nil {
		return fmt.Errorf("--%w", err)
	}
	if len(o.Symbols) == 0 || len(o.Intervals) == 0 {
		return errors.New("--symbols and --intervals must each name at least one")
	}
	switch {
	case o.Lookback < 1 || o.Lookback > candles.MaxLookback:
		return fmt.Errorf("--lookback %d: want 1 to %d bars", o.Lookback, candles.MaxLookback)
	case o.Concurrency < 1 || o.Concurrency > 256:
		return fmt.Errorf("--fetch-concurrency %d: want 1 to 256", o.Concurrency)
	case o.PageLimit < 1 || o.PageLimit > 1000:
		return fmt.Errorf("page limit %d: want 1 to 1000", o.PageLimit)
	case o.MaxDeliver < 1:
		return fmt.Errorf("--max-attempts %d: want at least 1", o.MaxDeliver)
	case o.RetryBase <= 0:
		return fmt.Errorf("--retry-base %v: want a positive duration", o.RetryBase)
	case o.WeightLimit < 10:
		return fmt.Errorf("--weight-limit %d: want at least 10", o.WeightLimit)
	case o.SyncTimeout < 0:
		return fmt.Errorf("--sync-timeout %v: want a positive duration, or 0 for none", o.SyncTimeout)
	}
	if o.SyncSchedule != "" {
		if _, _, err := ParseSchedule(o.SyncSchedule, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// Fetcher is one fetcher process's worth of workers.
type Fetcher struct {
	o     Options
	log   *slog.Logger
	js    jetstream.JetStream
	api   *binance.Client
	pacer *pacer
	clock exchangeClock
	// latency is the measured klines round trip, for dry-run estimates.
	latency latencyEWMA
	// id names this process in the shared weight budget and its STATS.
	id string
	// stats counts the requests to the exchange (stats.go).
	stats exchangeStats
	// Opened by Run: the shared JetStream KV state.
	board    *board
	locks    *pairLocks
	progress *progressStore
	runCtx   context.Context
	// stateOpen is closed once openState set board, locks and progress:
	// a sync request that arrives before (the endpoint is served from the
	// start) waits for it rather than racing it.
	stateOpen chan struct{}
	// heal keeps the streams, consumers and buckets above in place.
	heal *healer
	// banRewatch restarts the board's watch of the ban after the healer
	// created FetchersBucket again.
	banRewatch chan struct{}
}

// New checks o and builds a Fetcher; Run starts it.
func New(o Options) (*Fetcher, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: o.RequestTimeout}
	}
	f := &Fetcher{
		o:          o,
		log:        o.Logger,
		js:         js,
		api:        binance.New(o.BinanceURL, hc),
		pacer:      newPacer(o.WeightLimit, time.Minute, klinesWeight*o.Concurrency, o.Now),
		banRewatch: make(chan struct{}, 1),
		stateOpen:  make(chan struct{}),
		id:         fetcherID(),
	}
	f.clock.now = o.Now
	f.pacer.offset = f.clock.offsetEstimate // weight windows follow the exchange's clock
	return f, nil
}

// Run serves until ctx ends, then stops taking work, hands unfinished jobs
// back to the queue and returns nil.
func (f *Fetcher) Run(ctx context.Context) (err error) {
	defer func() {
		if ctx.Err() != nil {
			err = nil // stopped during start-up: nothing was taken
		}
	}()
	f.runCtx = ctx
	if err := candles.EnsureStreams(ctx, f.js, f.o.Streams); err != nil {
		return err
	}
	if err := f.startSchedule(ctx); err != nil {
		return err
	}
	reqCfg, jobCfg := f.requestConsumerConfig(), f.jobConsumerConfig()
	if _, err := f.js.CreateOrUpdateConsumer(ctx, candles.StreamSync, reqCfg); err != nil {
		return fmt.Errorf("consumer %s: %w", RequestConsumer, err)
	}
	if _, err := f.js.CreateOrUpdateConsumer(ctx, candles.StreamJobs, jobCfg); err != nil {
		return fmt.Errorf("consumer %s: %w", JobConsumer, err)
	}
	f.heal = f.newHealer()
	svc, err := micro.AddService(f.o.Conn, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "takes candle sync requests and fetches klines from Binance",
		// The monitor reads the requests to the exchange from STATS.
		StatsHandler: f.statsHandler,
	})
	if err != nil {
		return fmt.Errorf("register micro service: %w", err)
	}
	defer svc.Stop()
	if err := svc.AddEndpoint("sync", micro.HandlerFunc(f.handleSyncAPI),
		micro.WithEndpointSubject(candles.SubjectAPISync),
		micro.WithEndpointMetadata(map[string]string{"description": "validate and queue a sync request; replies {run_id, pairs}"})); err != nil {
		return fmt.Errorf("register sync endpoint: %w", err)
	}
	if err := f.openState(ctx); err != nil {
		return err
	}
	close(f.stateOpen)
	f.readWeightLimit(ctx)
	cfg := f.settings()
	f.log.Info("fetcher started", "binance_url", candles.RedactURL(f.o.BinanceURL), "symbols", len(cfg.Symbols),
		"intervals", cfg.Intervals, "concurrency", f.o.Concurrency)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return f.consume(gctx, candles.StreamSync, RequestConsumer, 1, f.handleRequest) })
	g.Go(func() error { return f.consume(gctx, candles.StreamJobs, JobConsumer, f.o.Concurrency, f.handleJob) })
	g.Go(func() error { return f.heal.run(gctx, f.o.Conn) })
	g.Go(func() error { return f.board.watchBan(gctx) })
	g.Go(func() error { return f.watchMaxDeliveries(gctx) })
	if f.o.CatchUp {
		g.Go(func() error { f.catchUp(gctx); return nil })
	}
	err = g.Wait()
	f.log.Info("fetcher stopped")
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// requestConsumerConfig is the durable consumer of sync requests on SYNC.
func (f *Fetcher) requestConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       RequestConsumer,
		Description:   "fetchers take sync requests",
		FilterSubject: candles.SubjectSyncRequest,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    requestMaxDeliver,
		MaxAckPending: 64,
	}
}

// jobConsumerConfig is the durable consumer of jobs on JOBS.
func (f *Fetcher) jobConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       JobConsumer,
		Description:   "fetchers share per-pair fetch jobs",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       jobAckWait,
		MaxDeliver:    max(jobMaxDeliveries, f.o.MaxDeliver+1),
		MaxAckPending: 1024,
	}
}

// readWeightLimit asks the exchange for its weight limit; the default stands
// if it cannot be read.
func (f *Fetcher) readWeightLimit(ctx context.Context) {
	sym := f.settings().Symbols[0]
	ctx, cancel := context.WithTimeout(ctx, f.o.RequestTimeout)
	defer cancel()
	if err := f.pacer.wait(ctx, exchangeInfoWeight); err != nil {
		f.log.Warn("cannot read the weight limit now (an exchange ban is in force); pacing with the default", "limit", f.o.WeightLimit)
		return
	}
	began := time.Now()
	limit, window, r, err := f.api.WeightLimit(ctx, sym)
	f.stats.sent(time.Since(began), err)
	f.pacer.observe(r.UsedWeight)
	if err != nil {
		f.noteLimits(ctx, f.log, candles.Job{}, err)
		f.log.Warn("cannot read the weight limit from exchangeInfo; pacing with the default", "limit", f.o.WeightLimit, "err", err)
		return
	}
	f.pacer.setLimit(limit, window)
	f.log.Info("exchange weight limit", "limit", limit, "window", window)
}

// consume hands each message of the durable consumer name on stream to
// handle, at most workers at a time, until ctx ends; then it waits for the
// handlers in flight. When the consumer disappears (deleted, or its stream
// with it) the healer is asked to create it again and consuming resumes on
// the new one.
//
// At shutdown no message is left to wait out the consumer's AckWait: the
// iterator is drained (its buffered messages stay readable) and every
// message read but not handed to a handler, buffered or held while waiting
// for a free worker, is Nak'd with no delay, so another fetcher, or this
// one restarted, takes it at once. The handlers in flight settle their own
// messages (a job saves its checkpoint first). A Nak is sent only once the
// server has dropped this process's pull subscription: before that, the
// server would redeliver the message straight into the closing
// subscription, where it would sit out the AckWait after all.
func (f *Fetcher) consume(ctx context.Context, stream, name string, workers int, handle func(context.Context, jetstream.Msg)) error {
	gone := make(chan struct{}) // closed once the server has no pull request of ours
	var leftover []jetstream.Msg
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, workers)
	for ctx.Err() == nil {
		cons, err := f.js.Consumer(ctx, stream, name)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			f.log.Warn("consumer not available; waiting for it", "consumer", name, "err", err)
			f.heal.poke()
			sleepCtx(ctx, time.Second)
			continue
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(workers))
		if err != nil {
			return fmt.Errorf("consume %s: %w", name, err)
		}
		stop := context.AfterFunc(ctx, it.Drain)
		for {
			msg, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				if errors.Is(err, jetstream.ErrConsumerDeleted) || missing(err) {
					f.log.Warn("consumer deleted; recreating it", "consumer", name, "err", err)
					f.heal.poke()
					break
				}
				f.log.Warn("consumer interrupted; retrying", "consumer", name, "err", err)
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			acquired := false
			if ctx.Err() == nil {
				select {
				case sem <- struct{}{}:
					acquired = true
				case <-ctx.Done():
				}
			}
			if ctx.Err() != nil {
				if acquired {
					<-sem
				}
				leftover = append(leftover, msg)
				continue
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				handle(ctx, heldMsg{Msg: msg, stopping: ctx, gone: gone})
			}()
		}
		stop()
		it.Stop()
		if ctx.Err() == nil {
			sleepCtx(ctx, 200*time.Millisecond) // the healer recreates the consumer meanwhile
		}
	}
	// The drained iterator has unsubscribed; a flush makes sure the server
	// has seen that before any Nak.
	if err := f.o.Conn.FlushTimeout(settleTimeout); err != nil {
		f.log.Warn("cannot confirm the consumer's subscription is gone; handing messages back anyway", "consumer", name, "err", err)
	}
	close(gone)
	for _, msg := range leftover {
		if err := msg.Nak(); err != nil {
			f.log.Warn("message not handed back at shutdown; it is redelivered after the ack wait",
				"consumer", name, "subject", msg.Subject(), "err", err)
			continue
		}
		f.log.Debug("message handed back at shutdown", "consumer", name, "subject", msg.Subject())
	}
	return nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// heldMsg is a message handed to a handler. Its Nak at shutdown waits until
// the consumer's pull subscription is gone at the server (see consume).
type heldMsg struct {
	jetstream.Msg
	stopping context.Context
	gone     <-chan struct{}
}

// Nak hands the message back with no delay.
func (m heldMsg) Nak() error {
	if m.stopping.Err() != nil {
		select {
		case <-m.gone:
		case <-time.After(settleTimeout):
		}
	}
	return m.Msg.Nak()
}

// newRunID returns a sortable, unique run id such as 20261127T142600Z-3f9a0c1d.
func newRunID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// streamRunID derives a run id for a request published without one (by the
// schedule or `nats pub`) from its stream position, so a redelivered request
// keeps its id.
func streamRunID(meta *jetstream.MsgMetadata) string {
	return fmt.Sprintf("%s-s%d", meta.Timestamp.UTC().Format("20060102T150405Z"), meta.Sequence.Stream)
}

// settings returns the settings in force: the cluster's when the fetcher
// follows one, else its own options.
func (f *Fetcher) settings() cluster.Settings {
	if f.o.Cluster != nil {
		return f.o.Cluster.Current()
	}
	return cluster.Settings{Symbols: f.o.Symbols, Intervals: f.o.Intervals, Lookback: f.o.Lookback,
		SyncSchedule: f.o.SyncSchedule, SyncTimeout: f.o.SyncTimeout, CatchUp: f.o.CatchUp}
}
