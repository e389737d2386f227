package monitor

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// The events reader: EVENTS from an hour back (the replay that rebuilds
// the counters and the rules' History after a restart), then live.

// replayWindow is how far back the events reader starts: the widest window
// an alert rule looks at (increase over 1h), so a restarted monitor
// rebuilds the counters' recent history instead of seeing a jump.
const replayWindow = time.Hour

// backfillStep is the spacing of the counter samples the replay writes into
// the rules' History.
const backfillStep = time.Minute

// sample is the counters at one time of the replayed hour.
type sample struct {
	t time.Time
	c counters
}

// replay tracks the replay of the last hour: the counter samples to
// backfill the History with, one per backfillStep.
type replay struct {
	next    time.Time
	samples []sample
}

// advance records samples up to t (exclusive of events at t itself).
func (r *replay) advance(t time.Time, c counters) {
	for !r.next.After(t) {
		r.samples = append(r.samples, sample{t: r.next, c: c.clone()})
		r.next = r.next.Add(backfillStep)
	}
}

// readEvents reads EVENTS from now − replayWindow and then live until ctx
// ends. The replayed part only counts; once it caught up it calls done.
// A stream that does not exist yet is waited for.
func (m *Monitor) readEvents(ctx context.Context, done func(samples []sample)) error {
	start := m.o.Now().Add(-replayWindow)
	rp := &replay{next: start}
	m.mu.Lock()
	rp.advance(start, m.ev.c)
	m.mu.Unlock()
	var caughtUp atomic.Bool
	var finishOnce sync.Once
	finishReplay := func() {
		finishOnce.Do(func() {
			// Up to just before now: the first live evaluation appends
			// the sample at now (even with a clock that stands still).
			m.mu.Lock()
			rp.advance(m.o.Now().Add(-time.Nanosecond), m.ev.c)
			m.mu.Unlock()
			caughtUp.Store(true)
			done(rp.samples)
		})
	}
	factsRead := false
	var pos readPosition
	for attempt := 0; ctx.Err() == nil; attempt++ {
		stream, err := m.js.Stream(ctx, candles.StreamEvents)
		if err != nil {
			if attempt == 0 || errors.Is(err, jetstream.ErrStreamNotFound) {
				// Nothing to replay: a monitor started before the others.
				finishReplay()
			}
			if attempt%30 == 0 {
				m.log.Info("waiting for the EVENTS stream", "err", err)
			}
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		if !caughtUp.Load() && !factsRead {
			factsRead = true
			m.lastFacts(ctx, stream, start)
			if info := stream.CachedInfo(); info.State.Msgs == 0 || info.State.LastTime.Before(start) {
				finishReplay()
			}
		}
		cfg := jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{candles.SubjectEventPrefix + ">"},
			DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
			OptStartTime:   &start,
		}
		created := stream.CachedInfo().Created
		replacedStream, lastSeq := pos.begin(created)
		switch {
		case replacedStream:
			// A new stream (deleted and created again): everything in
			// it came after what was counted.
			m.log.Warn("the EVENTS stream was replaced; reading the new one from its start")
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverAllPolicy, nil
		case lastSeq > 0:
			// Reading again after the consumer ended: go on after the
			// last event applied, so nothing is counted twice.
			cfg.DeliverPolicy, cfg.OptStartTime, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, nil, lastSeq+1
		}
		cons, err := stream.OrderedConsumer(ctx, cfg)
		if err != nil {
			m.log.Warn("cannot read EVENTS; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		replaced := make(chan struct{})
		// The handler runs on the client's goroutine, which Stop does not
		// wait for: once follow returned, the reader waits out a handler
		// still running and the later ones do nothing, so nothing is
		// counted or logged after the monitor stopped.
		var handling sync.Mutex
		stopped := false
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			handling.Lock()
			defer handling.Unlock()
			if stopped {
				return
			}
			md, err := msg.Metadata()
			if err != nil {
				m.handleEvent(msg.Subject(), msg.Data())
				return
			}
			if md.Sequence.Consumer == 1 && pos.seen() {
				// The ordered consumer was recreated, at the sequence
				// after the last one it delivered. On a replaced stream
				// that skips the new stream's first events: start over.
				if cur, err := m.js.Stream(ctx, candles.StreamEvents); err == nil && !cur.CachedInfo().Created.Equal(created) {
					if pos.stale() {
						close(replaced)
					}
					return
				}
			}
			if !pos.apply(md.Sequence.Stream) {
				return // from a consumer already given up
			}
			if !caughtUp.Load() {
				// Samples before the event see the counters without it.
				// The server stamped the event; a clock of ours behind
				// the server's must not fill the History with samples
				// past our now (one per minute of the difference).
				m.mu.Lock()
				at := md.Timestamp
				if now := m.o.Now(); at.After(now) {
					at = now
				}
				rp.advance(at.Add(-time.Nanosecond), m.ev.c)
				m.mu.Unlock()
			}
			m.handleEvent(msg.Subject(), msg.Data())
			if !caughtUp.Load() && md.NumPending == 0 {
				finishReplay()
			}
		}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			m.log.Debug("reading EVENTS", "err", err)
		}))
		if err != nil {
			m.log.Warn("cannot read EVENTS; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		m.follow(ctx, cc, created, replaced, &pos)
		handling.Lock()
		stopped = true
		handling.Unlock()
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// streamCheckEvery is how often the events reader checks that the stream
// it reads is still the same one: a consumer on a deleted stream neither
// ends nor errs, and one recreated on a new stream starts after the old
// stream's last sequence, skipping the new stream's first events.
const streamCheckEvery = time.Second

// follow waits while cc reads the stream created at created, until ctx
// ends, the consumer ends or the stream was replaced.
func (m *Monitor) follow(ctx context.Context, cc jetstream.ConsumeContext, created time.Time, replaced <-chan struct{}, pos *readPosition) {
	defer cc.Stop()
	t := time.NewTicker(streamCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-replaced:
			return
		case <-cc.Closed():
			m.log.Warn("reading EVENTS stopped; reading again")
			return
		case <-t.C:
			cur, err := m.js.Stream(ctx, candles.StreamEvents)
			if errors.Is(err, jetstream.ErrStreamNotFound) || (err == nil && !cur.CachedInfo().Created.Equal(created)) {
				pos.stale()
				return
			}
		}
	}
}

// readPosition is where the events reader is: the identity (creation
// time) of the stream it reads and the last stream sequence it applied.
// The consumer's handler and the reader's loop share it.
type readPosition struct {
	mu      sync.Mutex
	created time.Time
	lastSeq uint64
	// gone: the stream was replaced; messages of the current consumer are
	// ignored until the loop starts reading the new one.
	gone bool
}

// begin starts a consumer on the stream created at created. It says
// whether that is a new stream (replaced since the last consumer) and the
// last sequence applied in the stream it reads (0: none yet, or new).
func (p *readPosition) begin(created time.Time) (replaced bool, lastSeq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	replaced = p.gone || (!p.created.IsZero() && !p.created.Equal(created))
	if replaced {
		p.lastSeq = 0
	}
	p.created, p.gone = created, false
	return replaced, p.lastSeq
}

func (p *readPosition) seen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSeq > 0
}

// stale marks the stream replaced; true the first time.
func (p *readPosition) stale() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	first := !p.gone
	p.gone = true
	return first
}

// apply records seq as applied unless the consumer is stale.
func (p *readPosition) apply(seq uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return false
	}
	p.lastSeq = seq
	return true
}

// handleEvent decodes and applies one event; bad input is counted and
// logged, never fatal.
func (m *Monitor) handleEvent(subject string, data []byte) {
	kind, ev, err := decodeEvent(subject, data)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		log, suppressed := m.ev.invalid(kind, m.o.Now())
		if log {
			m.log.Warn("invalid event ignored", "subject", subject, "kind", kind, "err", err, "suppressed_since_last", suppressed)
		}
		return
	}
	m.ev.apply(kind, ev)
	if e, ok := ev.(*candles.IntegrityFailed); ok {
		m.damage = e
		m.damages++
	}
}

// lastFacts reads, per kind whose newest event matters even when it is older
// than the replayed hour, the last message on its subject.
func (m *Monitor) lastFacts(ctx context.Context, stream jetstream.Stream, start time.Time) {
	m.firstBackup(ctx, stream, start)
	for _, kind := range []string{candles.KindSyncCompleted, candles.KindBackupCompleted, candles.KindIntegrityFailed,
		candles.KindDrillCompleted, candles.KindDrillFailed} {
		msg, err := stream.GetLastMsgForSubject(ctx, candles.EventSubject(kind))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				m.log.Debug("read the last event", "kind", kind, "err", err)
			}
			continue
		}
		if !msg.Time.Before(start) {
			continue // the replay reads it
		}
		_, ev, err := decodeEvent(msg.Subject, msg.Data)
		if err != nil {
			continue
		}
		m.mu.Lock()
		switch e := ev.(type) {
		case *candles.SyncCompleted:
			if m.ev.lastSync == nil {
				m.ev.lastSync = e
			}
			r := candles.RunStatus{RunID: e.RunID, PairsTotal: e.PairsTotal, PairsDone: e.PairsOK + e.PairsFailed,
				PairsFailed: e.PairsFailed, Candles: e.Candles, StartedAt: e.StartedAt, FinishedAt: e.FinishedAt, Outcome: "completed"}
			m.ev.finished = append([]candles.RunStatus{r}, m.ev.finished...)
		case *candles.BackupCompleted:
			m.ev.backupSeen = true
			m.ev.noteBackup(e)
		case *candles.IntegrityFailed:
			m.damage = e
			m.damages++
		case *candles.DrillCompleted:
			m.ev.backupSeen = true
			m.ev.noteDrill(e)
		}
		m.mu.Unlock()
	}
}

// firstBackup reads the oldest backup.completed EVENTS still holds, when it
// is older than the replayed hour: how long backups have existed, which
// makes a drill that never passed overdue (checkBackupOf).
func (m *Monitor) firstBackup(ctx context.Context, stream jetstream.Stream, start time.Time) {
	msg, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(candles.EventSubject(candles.KindBackupCompleted)))
	if err != nil || !msg.Time.Before(start) {
		return
	}
	_, ev, err := decodeEvent(msg.Subject, msg.Data)
	if e, ok := ev.(*candles.BackupCompleted); ok && err == nil {
		m.mu.Lock()
		m.ev.noteBackup(e)
		m.mu.Unlock()
	}
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
