package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/services/monitor/alerts"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/rules"
	"github.com/candlekeep/candlekeep/services/monitor/sla"
)

// Defaults of the options.
const (
	// DefaultHTTPListen is loopback on a port clear of Prometheus (9090),
	// Alertmanager (9093) and the exporters' usual 91xx.
	DefaultHTTPListen   = "127.0.0.1:9468"
	DefaultEvalInterval = 15 * time.Second
	DefaultVersion      = "0.1.0"
	// ServiceName is the monitor's micro service.
	ServiceName = serviceMonitor
	// historySlack is kept in the rules' History beyond the widest rule
	// window: the 5 minutes an instant query looks back.
	historySlack = 5 * time.Minute
	// shutdownGrace bounds the HTTP server's Shutdown.
	shutdownGrace = 3 * time.Second
	// DefaultOwnerGrace: see Options.OwnerGrace.
	DefaultOwnerGrace = 30 * time.Second
)

// Options configure a Monitor.
type Options struct {
	// Conn is the NATS connection everything goes through.
	Conn   *nats.Conn
	Logger *slog.Logger
	// Registry serves /metrics; alerts and notify register on it too. New
	// creates one if nil.
	Registry *prometheus.Registry
	Now      func() time.Time
	// HTTPListen is where /metrics, /healthz and /readyz are served; ""
	// serves no HTTP.
	HTTPListen string
	// EvalInterval is how often the monitor polls, checks and evaluates the rules.
	EvalInterval time.Duration
	// MaxStaleness is the freshness SLA (a longer interval gets one
	// interval + 2h).
	MaxStaleness time.Duration
	// Receivers get the notifications, by name ("slack", "email", "pagerduty").
	Receivers map[string]notify.Notifier
	// RepeatInterval is how often a still-firing CRITICAL group is sent again.
	RepeatInterval time.Duration
	// RuleTimeScale multiplies the rules' "for" durations and increase()
	// windows (--rule-time-scale): 1, the rules' real time, in production;
	// 0.01 makes an hour 36 s, for demos and tests. 0 < scale ≤ 1.
	RuleTimeScale float64
	// Replicas of the KV buckets the alerting keeps its state in.
	Replicas int
	// Source names this system in notifications (default: the host name).
	Source string
	// Version is the micro service's version.
	Version string
	// Ready, if set, is called with the bound HTTP address once listening.
	Ready func(addr string)
	// SLASchedule is --sla-schedule: when the monthly SLA audit runs (a
	// cron installed as a JetStream message schedule, "off" removes it);
	// "" runs no audit and leaves the schedule alone.
	SLASchedule string
	// OwnerGrace is how long after start the alert rules wait for the
	// database owner's first coverage answer (real time). Without it the
	// data-derived series are absent, and a monitor restarted beside its
	// writer would resolve a firing CandlekeepDataStale, then fire it
	// again once the writer answers: two messages for one incident.
	OwnerGrace time.Duration
}

// DefaultOptions returns the production options (Conn and Logger unset).
func DefaultOptions() Options {
	host, _ := os.Hostname()
	return Options{
		HTTPListen:     DefaultHTTPListen,
		EvalInterval:   DefaultEvalInterval,
		MaxStaleness:   candles.DefaultMaxStaleness,
		RepeatInterval: alerts.DefaultRepeatInterval,
		RuleTimeScale:  1,
		Replicas:       1,
		Source:         host,
		Version:        DefaultVersion,
		Now:            time.Now,
		SLASchedule:    sla.DefaultSchedule,
		OwnerGrace:     DefaultOwnerGrace,
	}
}

// Validate checks the options; errors name the flag.
func (o Options) Validate() error {
	var errs []error
	if o.Conn == nil {
		errs = append(errs, errors.New("monitor: no NATS connection (--nats-url)"))
	}
	if o.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(o.HTTPListen); err != nil {
			errs = append(errs, fmt.Errorf("--http-listen %q: want host:port such as %s", o.HTTPListen, DefaultHTTPListen))
		}
	}
	if o.EvalInterval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--eval-interval %s: want at least 10ms (default %s)", o.EvalInterval, DefaultEvalInterval))
	}
	if o.MaxStaleness < time.Minute {
		errs = append(errs, fmt.Errorf("--max-staleness %s: want at least 1m (default %s)", o.MaxStaleness, candles.DefaultMaxStaleness))
	}
	if o.RepeatInterval < time.Second {
		errs = append(errs, fmt.Errorf("--repeat-interval %s: want at least 1s (default %s)", o.RepeatInterval, alerts.DefaultRepeatInterval))
	}
	if err := rules.ValidateTimeScale(o.RuleTimeScale); err != nil {
		errs = append(errs, fmt.Errorf("--rule-time-scale: %w", err))
	}
	if o.Replicas < 1 || o.Replicas > 5 {
		errs = append(errs, fmt.Errorf("--stream-replicas %d: want 1 to 5", o.Replicas))
	}
	if o.SLASchedule != "" {
		if _, _, err := sla.ParseSchedule(o.SLASchedule, time.Time{}); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Version == "" {
		errs = append(errs, errors.New("monitor: no service version"))
	}
	for name, n := range o.Receivers {
		if n == nil {
			errs = append(errs, fmt.Errorf("monitor: receiver %q has no notifier", name))
		}
	}
	return errors.Join(errs...)
}

// Monitor is the monitor service.
type Monitor struct {
	o    Options
	log  *slog.Logger
	js   jetstream.JetStream
	hist *rules.History
	// appendHistory records samples into the rules' History (a seam:
	// hist.Append, wrapped by tests to see the replay's backfill).
	appendHistory func(t time.Time, mfs []*dto.MetricFamily)

	mu sync.Mutex
	ev eventState
	// What the polls learned, last known values kept.
	db   *candles.DatabaseHealth
	dbAt time.Time
	// ownerDown: the owner answered once and then stopped answering;
	// ownerProblem: it answers, with an error (its check could not run).
	ownerDown    bool
	ownerProblem string
	// damage is the last integrity.failed read (damages counts them): it
	// stands until the owner answers a request sent after it was read (the
	// answer then says whether the file is damaged).
	damage       *candles.IntegrityFailed
	damages      uint64
	settingsDown bool
	coverage     map[candles.Pair]candles.PairCoverage
	coverageAt   time.Time
	everSeen     map[string]bool
	snap         *snapshot
	report       *candles.HealthReport
	replayed     bool
	// started is when Run began (real time), for OwnerGrace; graceOver
	// says the rules stopped waiting for the owner (logged once).
	started   time.Time
	graceOver bool
	// alerter is set once Run created it.
	alerter *alerts.Alerter
	// fresh records the freshness history (evaluation goroutine only).
	fresh *freshnessRecorder
}

// New validates o and builds a Monitor; Run starts it.
func New(o Options) (*Monitor, error) {
	def := DefaultOptions()
	if o.Now == nil {
		o.Now = def.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("monitor: jetstream: %w", err)
	}
	// The History keeps the widest rule window (1h, less when scaled: the
	// replayed hour covers it either way) and room for the lookback.
	retention := max(rules.MinRetention(rules.All(), o.RuleTimeScale), replayWindow+historySlack)
	m := &Monitor{o: o, log: o.Logger, js: js, hist: rules.NewHistory(retention),
		ev: newEventState(), everSeen: map[string]bool{}}
	m.appendHistory = m.hist.Append
	m.fresh = &freshnessRecorder{js: js, log: o.Logger.With("component", "freshness")}
	if err := o.Registry.Register(m.newCollector()); err != nil {
		return nil, fmt.Errorf("monitor: register metrics: %w", err)
	}
	for _, c := range natsMetrics(o.Conn) {
		if err := o.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("monitor: register metrics: %w", err)
		}
	}
	return m, nil
}

// Registry is the registry /metrics serves.
func (m *Monitor) Registry() *prometheus.Registry { return m.o.Registry }

func (m *Monitor) newCollector() *collector {
	return &collector{d: newDescs(), state: func() (*snapshot, counters) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.snap, m.ev.c.clone()
	}}
}

// Run runs the monitor until ctx ends: the events reader, the evaluation
// loop, the HTTP server, the micro service and the notification
// dispatcher. It returns nil on a clean stop.
func (m *Monitor) Run(ctx context.Context) error {
	disp, err := notify.NewDispatcher(ctx, notify.DispatcherOptions{JS: m.js, Receivers: m.o.Receivers,
		Replicas: m.o.Replicas, Logger: m.log.With("component", "notify"), Now: m.o.Now, Registerer: m.o.Registry})
	if err != nil {
		return fmt.Errorf("monitor: notifications: %w", err)
	}
	alerter, err := alerts.New(ctx, alerts.Options{JS: m.js, Rules: rules.All(), Sender: disp,
		RepeatInterval: m.o.RepeatInterval, Replicas: m.o.Replicas, Source: m.o.Source,
		Logger: m.log.With("component", "alerts"), Now: m.o.Now, Registerer: m.o.Registry, TimeScale: m.o.RuleTimeScale})
	if err != nil {
		return fmt.Errorf("monitor: alerts: %w", err)
	}
	m.mu.Lock()
	m.alerter, m.started = alerter, time.Now()
	m.mu.Unlock()
	checkEventsRetention(ctx, m.js, m.log)
	var auditor *sla.Auditor
	if m.o.SLASchedule != "" {
		auditor, err = sla.NewAuditor(sla.AuditorOptions{JS: m.js, Schedule: m.o.SLASchedule, Sender: disp,
			Targets: sla.DefaultTargets(), Source: m.o.Source, Logger: m.log.With("component", "sla"), Now: m.o.Now})
		if err != nil {
			return fmt.Errorf("monitor: --sla-schedule: %w", err)
		}
	}

	var ln net.Listener
	if m.o.HTTPListen != "" {
		if ln, err = net.Listen("tcp", m.o.HTTPListen); err != nil {
			return fmt.Errorf("monitor: --http-listen %s: %w", m.o.HTTPListen, err)
		}
	}
	svc, err := m.addService()
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	defer func() {
		if err := svc.Stop(); err != nil {
			m.log.Debug("stop micro service", "err", err)
		}
	}()
	adv, err := m.watchAdvisories()
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	defer func() {
		if err := adv.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			m.log.Debug("unsubscribe advisories", "err", err)
		}
	}()

	replayed, asked := make(chan struct{}), make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return m.readEvents(gctx, func(samples []sample) {
			m.backfill(samples)
			m.mu.Lock()
			m.replayed = true
			m.mu.Unlock()
			close(replayed)
		})
	})
	g.Go(func() error { return disp.Run(gctx) })
	if auditor != nil {
		g.Go(func() error { m.runAuditor(gctx, auditor); return nil })
	}
	g.Go(func() error { return m.pollDatabase(gctx, func() { close(asked) }) })
	g.Go(func() error {
		// The first evaluation waits for the replay, and a little for the
		// owner's first answer (or its failure), so it reports what is known.
		select {
		case <-gctx.Done():
			return nil
		case <-replayed:
		}
		t := time.NewTimer(maxPollTimeout)
		defer t.Stop()
		select {
		case <-gctx.Done():
			return nil
		case <-asked:
		case <-t.C:
		}
		return m.evalLoop(gctx)
	})
	if ln != nil {
		srv := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("monitor: http: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			return srv.Shutdown(sctx)
		})
		if m.o.Ready != nil {
			m.o.Ready(ln.Addr().String())
		}
	}
	listen := ""
	if ln != nil {
		listen = ln.Addr().String()
	}
	m.log.Info("monitor started", "http_listen", listen, "eval_interval", m.o.EvalInterval,
		"max_staleness", m.o.MaxStaleness, "receivers", len(m.o.Receivers))
	err = g.Wait()
	m.log.Info("monitor stopped")
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// auditRetry is how long the monitor waits before starting the SLA
// audit again after it stopped on an error (e.g. no SYNC stream yet).
const auditRetry = time.Minute

// runAuditor runs the monthly SLA audit until ctx ends; an error (the SYNC
// stream missing, NATS trouble) is logged and the audit started again, never
// stopping the monitor.
func (m *Monitor) runAuditor(ctx context.Context, a *sla.Auditor) {
	for {
		err := a.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		m.log.Warn("the monthly SLA audit stopped; starting it again", "err", err, "retry_in", auditRetry)
		if !sleep(ctx, auditRetry) {
			return
		}
	}
}

// backfill writes the replayed hour's counter samples into the rules'
// History, so increase(…[1h]) after a restart sees what happened before it.
func (m *Monitor) backfill(samples []sample) {
	for _, s := range samples {
		c := &collector{d: newDescs(), state: func() (*snapshot, counters) { return nil, s.c }}
		reg := prometheus.NewRegistry()
		if err := reg.Register(c); err != nil {
			m.log.Warn("backfill the rules' history", "err", err)
			return
		}
		mfs, err := reg.Gather()
		if err != nil {
			m.log.Warn("backfill the rules' history", "err", err)
			return
		}
		m.appendHistory(s.t, mfs)
	}
	if len(samples) > 0 {
		m.log.Info("replayed the last hour of events", "samples", len(samples))
	}
}

// evalLoop evaluates at once and then every EvalInterval until ctx ends.
func (m *Monitor) evalLoop(ctx context.Context) error {
	t := time.NewTicker(m.o.EvalInterval)
	defer t.Stop()
	for {
		m.evaluate(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// evaluate is one evaluation: poll → snapshot → checks → metrics →
// History → alert rules. Errors are logged, never fatal.
func (m *Monitor) evaluate(ctx context.Context) {
	p := m.pollAll(ctx)
	if ctx.Err() != nil {
		return
	}
	now := m.o.Now()
	m.mu.Lock()
	switch {
	case p.settingsErr != nil && !m.settingsDown:
		m.settingsDown = true
		m.log.Warn("cannot read the cluster configuration; using the defaults", "bucket", cluster.ConfigBucket, "err", p.settingsErr)
	case p.settingsErr == nil && m.settingsDown:
		m.settingsDown = false
		m.log.Info("the cluster configuration is readable again", "bucket", cluster.ConfigBucket)
	}
	if p.coverage != nil {
		cov := make(map[candles.Pair]candles.PairCoverage, len(p.coverage.Pairs))
		for _, pc := range p.coverage.Pairs {
			cov[candles.Pair{Symbol: pc.Symbol, Interval: pc.Interval}] = pc
		}
		m.coverage, m.coverageAt = cov, now
	}
	for name, n := range p.alive {
		if n > 0 {
			m.everSeen[name] = true
		}
	}
	s := &snapshot{
		Now: now, MaxStaleness: m.o.MaxStaleness,
		Pairs: p.settings.Pairs(), SchedulePeriod: schedulePeriod(p.settings.SyncSchedule, now), SyncTimeout: p.settings.SyncTimeout,
		DB: m.db, DBAt: m.dbAt, OwnerAnswering: !m.ownerDown, OwnerProblem: m.ownerProblem,
		Coverage: m.coverage, CoverageAt: m.coverageAt,
		Alive: p.alive, BackupSeen: m.everSeen[serviceBackup] || m.ev.backupSeen, BackupServiceSeen: m.everSeen[serviceBackup],
		LastSync: m.ev.lastSync, LastBackup: m.ev.lastBackup, FirstBackupAt: m.ev.firstBackupAt,
		LastDrill: m.ev.lastDrill, LastGoodDrill: m.ev.lastGoodDrill,
		Fetchers: p.fetchers, Consumers: p.consumers, BannedUntil: m.ev.bannedUntil,
	}
	s.Damage = m.damage
	s.Checks = runChecks(*s)
	rep := &candles.HealthReport{V: candles.Version, Status: overall(*s, s.Checks), Checks: s.Checks, At: now}
	m.snap, m.report = s, rep
	alerter := m.alerter
	if s.Coverage == nil && !m.graceOver {
		if time.Since(m.started) < m.o.OwnerGrace {
			alerter = nil // the owner may not have started yet: the rules wait for its data
		} else {
			m.graceOver = true
			m.log.Warn("the database's owner has not answered since the monitor started; evaluating the alert rules without its data",
				"subject", candles.SubjectAPICoverage, "waited", m.o.OwnerGrace)
		}
	}
	m.mu.Unlock()

	mfs, err := m.o.Registry.Gather()
	if err != nil {
		m.log.Warn("gather metrics", "err", err)
	}
	m.appendHistory(now, mfs)
	m.fresh.record(ctx, *s)
	if alerter != nil {
		if q := m.hist.At(now); q != nil {
			if err := alerter.Evaluate(ctx, q); err != nil && ctx.Err() == nil {
				m.log.Warn("evaluate the alert rules", "err", err)
			}
		}
	}
}

// Health returns the last health report, with the alerts firing now; a
// monitor that has not evaluated yet cannot tell.
func (m *Monitor) Health() candles.HealthReport {
	m.mu.Lock()
	rep, alerter := m.report, m.alerter
	m.mu.Unlock()
	var out candles.HealthReport
	if rep == nil {
		out = candles.HealthReport{V: candles.Version, Status: candles.CheckUnknown, At: m.o.Now()}
		for _, name := range checkNames {
			out.Checks = append(out.Checks, unknownCheck(name, "", "the monitor has not evaluated yet"))
		}
	} else {
		out = *rep
		out.Checks = append([]candles.Check(nil), rep.Checks...)
	}
	if alerter != nil {
		out.Firing = alerter.Firing()
	}
	out.NATS = natsState(m.o.Conn)
	return out
}

// ready says whether the replay is done and one evaluation ran, and if not why.
func (m *Monitor) ready() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case !m.replayed:
		return false, "replaying the last hour of events"
	case m.report == nil:
		return false, "first evaluation not done"
	}
	return true, "ready"
}

// isReady reports whether the replay is done.
func (m *Monitor) isReady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.replayed
}
