package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// Names other tools see: `nats micro ls`, `nats consumer ls EVENTS`.
const (
	ServiceName    = "candlekeep-backup"
	ServiceVersion = "1.0.0"
	// consumerSync reads sync.completed from EVENTS; consumerSchedule the
	// schedule's ticks from SYNC.
	consumerSync     = "backup-sync-completed"
	consumerSchedule = "backup-schedule"

	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
)

// Triggers of a backup, as reports and logs name them.
const (
	TriggerSync     = "sync.completed"
	TriggerSchedule = "schedule"
	TriggerRequest  = "request"
)

type request struct {
	reply chan Report
}

// Run checks the start-up guarantees, installs the backup schedule, serves
// candlekeep-backup and takes backups when asked, on schedule and after
// sync.completed (debounced), until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	maxAge := s.o.Streams.CandlesMaxAge
	if maxAge == 0 {
		maxAge = candles.DefaultCandlesMaxAge
	}
	if err := CheckRetention(s.o.Schedule, s.o.MinInterval, maxAge, s.o.Now()); err != nil {
		return err
	}
	if s.o.Conn == nil {
		return errors.New("backup: no NATS connection")
	}
	if err := candles.EnsureStreams(ctx, s.js, s.o.Streams); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	s.loadLast(ctx)
	s.clearScratch()
	if err := s.installSchedule(ctx); err != nil {
		return err
	}
	// The consumers exist before the API answers, so whoever sees
	// candlekeep-backup knows that no sync.completed after it is missed.
	syncCons, err := s.consumer(ctx, candles.StreamEvents, consumerSync, candles.EventSubject(candles.KindSyncCompleted))
	if err != nil {
		return err
	}
	schedCons, err := s.consumer(ctx, candles.StreamSync, consumerSchedule, candles.SubjectBackupRequest)
	if err != nil {
		return err
	}
	drillCons, err := s.consumer(ctx, candles.StreamSync, consumerDrill, candles.SubjectDrillRequest)
	if err != nil {
		return err
	}
	// integrity.failed, for the automatic restore (auto.go).
	autoCons, err := s.autoConsumer(ctx)
	if err != nil {
		return err
	}
	svc, err := micro.AddService(s.o.Conn, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "verified backups of the candle database in hot, warm and cold tiers",
	})
	if err != nil {
		return fmt.Errorf("backup: add micro service: %w", err)
	}
	defer svc.Stop()
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	if err := svc.AddEndpoint("backup", micro.ContextHandler(hctx, s.handleBackup),
		micro.WithEndpointSubject(candles.SubjectAPIBackup)); err != nil {
		return fmt.Errorf("backup: add backup endpoint: %w", err)
	}
	if err := svc.AddEndpoint("ls", micro.ContextHandler(hctx, s.handleList),
		micro.WithEndpointSubject(candles.SubjectAPIBackupList)); err != nil {
		return fmt.Errorf("backup: add ls endpoint: %w", err)
	}
	if err := svc.AddEndpoint("drill", micro.ContextHandler(hctx, s.handleDrill),
		micro.WithEndpointSubject(candles.SubjectAPIDrill)); err != nil {
		return fmt.Errorf("backup: add drill endpoint: %w", err)
	}
	if err := svc.AddEndpoint("restore", micro.ContextHandler(hctx, s.handleRestore),
		micro.WithEndpointSubject(candles.SubjectAPIRestore)); err != nil {
		return fmt.Errorf("backup: add restore endpoint: %w", err)
	}
	var tiers []string
	for _, t := range s.o.Tiers {
		tiers = append(tiers, t.Tier.Name()+"="+t.Tier.Location())
	}
	s.log.Info("backup service ready", "tiers", tiers, "schedule", s.o.Schedule, "min_interval", s.o.MinInterval)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return s.consume(gctx, syncCons, candles.StreamEvents, consumerSync, candles.EventSubject(candles.KindSyncCompleted), s.onSync)
	})
	g.Go(func() error {
		return s.consume(gctx, schedCons, candles.StreamSync, consumerSchedule, candles.SubjectBackupRequest, s.onSchedule)
	})
	g.Go(func() error {
		return s.consume(gctx, drillCons, candles.StreamSync, consumerDrill, candles.SubjectDrillRequest, s.onDrill)
	})
	g.Go(func() error { return s.autoRestore(gctx, autoCons) })
	g.Go(func() error { return s.loop(gctx) })
	err = g.Wait()
	if ctx.Err() != nil {
		s.log.Info("backup service stopped")
		return nil
	}
	return err
}

// loadLast starts the debounce from the newest copy of the first tier, so a
// restart does not take a backup right after the last one.
func (s *Service) loadLast(ctx context.Context) {
	copies, err := List(ctx, s.o.Tiers[0].Tier)
	if err != nil {
		s.log.Warn("cannot list the first tier at start", "tier", s.o.Tiers[0].Tier.Name(), "err", err)
		return
	}
	for _, c := range copies {
		if c.Complete() && c.CreatedAt().After(s.lastAttempt) {
			s.lastAttempt = c.CreatedAt()
		}
	}
}

// installSchedule makes the SYNC stream's backup schedule message match
// the Schedule option: left alone when identical (its timer keeps
// running), replaced when different, removed for "off". The server then
// publishes one tick per period to SubjectBackupRequest, however many
// backup services run. The drill's schedule (DrillSchedule) lives in SYNC
// too and is installed with it, so a recreated SYNC gets both back.
func (s *Service) installSchedule(ctx context.Context) error {
	if err := s.installScheduleOf(ctx, "backup", s.o.Schedule, candles.SubjectBackupSchedule, candles.SubjectBackupRequest); err != nil {
		return err
	}
	drill := s.o.DrillSchedule
	if drill == "" {
		drill = ScheduleOff
	}
	return s.installScheduleOf(ctx, "drill", drill, candles.SubjectDrillSchedule, candles.SubjectDrillRequest)
}

// installScheduleOf installs schedule (or removes it for "off") as the
// message schedule on subject, ticking to target; what names it in logs
// and errors (--<what>-schedule).
func (s *Service) installScheduleOf(ctx context.Context, what, schedule, subject, target string) error {
	pattern, next, err := cluster.ParseSchedule(schedule, s.o.Now())
	if err != nil {
		return fmt.Errorf("--%s-schedule: %w", what, err)
	}
	stream, err := s.js.Stream(ctx, candles.StreamSync)
	if err != nil {
		return fmt.Errorf("stream %s: %w", candles.StreamSync, err)
	}
	current, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		current, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("read the %s schedule: %w", what, err)
	}
	if pattern == ScheduleOff {
		if current != nil {
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
				return fmt.Errorf("remove the %s schedule: %w", what, err)
			}
			s.log.Info(what + " schedule removed (--" + what + "-schedule off)")
		}
		return nil
	}
	if current != nil && current.Header.Get(headerSchedule) == pattern &&
		current.Header.Get(headerScheduleTarget) == target {
		s.log.Info(what+" schedule in place", "schedule", pattern, "next", next.Format(time.RFC3339))
		return nil
	}
	msg := nats.NewMsg(subject)
	msg.Header.Set(headerSchedule, pattern)
	msg.Header.Set(headerScheduleTarget, target)
	msg.Data = []byte(`{"reason":"schedule"}`)
	if _, err := s.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("install the %s schedule %q: %w", what, pattern, err)
	}
	s.log.Info(what+" schedule installed", "schedule", pattern, "subject", subject,
		"target", target, "next", next.Format(time.RFC3339))
	return nil
}

// consumer creates or updates the durable consumer of subject on stream.
func (s *Service) consumer(ctx context.Context, stream, durable, subject string) (jetstream.Consumer, error) {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "candlekeep-backup: backup triggers",
		FilterSubject: subject,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("backup: consumer %s on %s: %w", durable, stream, err)
	}
	return cons, nil
}

// consume takes cons's messages until ctx ends. They are acknowledged once
// taken in: the trigger is remembered and the backup loop acts on it (a
// trigger lost to a crash is made up by the next sync or tick). When the
// consumer disappears (deleted, or its stream with it) it is created again
// once the stream is back (its owner recreates it), and consuming resumes.
func (s *Service) consume(ctx context.Context, cons jetstream.Consumer, stream, durable, subject string, fn func()) error {
	for ctx.Err() == nil {
		if cons == nil {
			// The streams belong to the fetcher and the writer, which put
			// a lost one back with its schedule and say so
			// (resource.recreated); recreating it here first would hide
			// that, so the backup service only waits for it.
			var err error
			cons, err = s.consumer(ctx, stream, durable, subject)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("cannot recreate the backup trigger consumer; retrying", "consumer", durable, "err", err)
					sleep(ctx, time.Second)
				}
				continue
			}
			s.log.Warn("backup trigger consumer recreated", "consumer", durable, "stream", stream)
			// A recreated SYNC came back without the backup schedule.
			if stream == candles.StreamSync {
				if err := s.installSchedule(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("reinstall the backup schedule; the next recreation tries again", "err", err)
				}
			}
		}
		it, err := cons.Messages()
		if err != nil {
			return fmt.Errorf("backup: consume %s: %w", durable, err)
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			msg, err := it.Next()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					break
				}
				if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
					errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerDoesNotExist) {
					cons = nil
					break
				}
				// No heartbeat and the like: the consumer may be gone
				// without a word (its stream deleted and created again).
				if _, cerr := s.js.Consumer(ctx, stream, durable); errors.Is(cerr, jetstream.ErrConsumerNotFound) ||
					errors.Is(cerr, jetstream.ErrStreamNotFound) {
					cons = nil
					break
				}
				s.log.Debug("backup trigger consumer interrupted; retrying", "consumer", durable, "err", err)
				sleep(ctx, 200*time.Millisecond)
				continue
			}
			fn()
			if err := msg.Ack(); err != nil {
				s.log.Warn("ack backup trigger", "subject", msg.Subject(), "err", err)
			}
		}
		stop()
		it.Stop()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (s *Service) onSync() {
	s.mu.Lock()
	s.pendingSync = true
	s.syncSeen++
	s.mu.Unlock()
	s.poke()
}

func (s *Service) onSchedule() {
	s.mu.Lock()
	s.pendingSchedule = true
	s.mu.Unlock()
	s.poke()
}

func (s *Service) onDrill() {
	s.mu.Lock()
	s.pendingDrill = true
	s.mu.Unlock()
	s.poke()
}

func (s *Service) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// loop runs the backups, one at a time: requests and schedule ticks at
// once, a sync.completed once MinInterval has passed since the last backup
// began (the debounce).
func (s *Service) loop(ctx context.Context) error {
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.requests:
			r.reply <- s.Backup(ctx, TriggerRequest)
			continue
		case <-s.kick:
		case <-t.C:
		}
		s.mu.Lock()
		trigger := ""
		switch {
		case s.pendingSchedule:
			trigger = TriggerSchedule
		case s.pendingSync && (s.lastAttempt.IsZero() || s.o.Now().Sub(s.lastAttempt) >= s.o.MinInterval):
			trigger = TriggerSync
		}
		if trigger != "" {
			// One backup covers every trigger taken in before it.
			s.pendingSchedule, s.pendingSync = false, false
		}
		drill := s.pendingDrill
		s.pendingDrill = false
		s.mu.Unlock()
		if trigger != "" {
			s.Backup(ctx, trigger)
		}
		if drill {
			s.Drill(ctx, TriggerSchedule)
		}
	}
}

// Pending reports whether a sync.completed waits for the debounce, and how
// many sync.completed events the service has taken in.
func (s *Service) Pending() (pending bool, syncSeen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pendingSync, s.syncSeen
}

func (s *Service) handleBackup(ctx context.Context, req micro.Request) {
	reply := make(chan Report, 1)
	select {
	case s.requests <- request{reply: reply}:
	case <-ctx.Done():
		req.Error("503", "backup service stopping", nil)
		return
	}
	select {
	case rep := <-reply:
		if err := req.RespondJSON(rep); err != nil {
			s.log.Warn("answer backup request", "err", err)
		}
	case <-ctx.Done():
		req.Error("503", "backup service stopping", nil)
	}
}

// Listing is the reply of candles.api.backup.ls: every copy in every tier.
type Listing struct {
	Tiers []TierListing `json:"tiers"`
	At    time.Time     `json:"at"`
}

// TierListing is one tier's copies, oldest first, or why it could not be
// listed.
type TierListing struct {
	Tier      string        `json:"tier"`
	Location  string        `json:"location"`
	Retention time.Duration `json:"retention_ns"`
	Copies    []Copy        `json:"copies"`
	Error     string        `json:"error,omitempty"`
}

// ListAll lists every tier.
func (s *Service) ListAll(ctx context.Context) Listing {
	out := Listing{At: s.o.Now().UTC()}
	for _, tc := range s.o.Tiers {
		tl := TierListing{Tier: tc.Tier.Name(), Location: tc.Tier.Location(), Retention: tc.Retention, Copies: []Copy{}}
		if copies, err := List(ctx, tc.Tier); err != nil {
			tl.Error = err.Error()
		} else if copies != nil {
			tl.Copies = copies
		}
		out.Tiers = append(out.Tiers, tl)
	}
	return out
}

func (s *Service) handleList(ctx context.Context, req micro.Request) {
	l := s.ListAll(ctx)
	data, err := json.Marshal(l)
	if err != nil {
		req.Error("500", "encode listing", nil)
		return
	}
	if err := req.Respond(data); err != nil {
		s.log.Warn("answer ls request", "err", err)
	}
}
