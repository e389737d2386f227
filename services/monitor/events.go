package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// replayWindow is how far back the events reader starts: the widest window
// an alert rule looks at (increase over 1h), so a restarted monitor
// rebuilds the counters' recent history instead of seeing a jump.
const replayWindow = time.Hour

// backfillStep is the spacing of the counter samples the replay writes into
// the rules' History.
const backfillStep = time.Minute

// recentRuns is how many finished runs the status keeps.
const recentRuns = 20

// invalidLogEvery: a malformed event of one kind is logged at most this often.
const invalidLogEvery = time.Minute

// knownKinds are the event kinds the monitor knows; anything else on EVENTS
// is counted as invalid.
var knownKinds = []string{
	candles.KindSyncStarted, candles.KindSyncCompleted, candles.KindSyncFailed, candles.KindSyncTimeout,
	candles.KindSyncSkipped, candles.KindSyncWaiting, candles.KindPairCompleted, candles.KindPairFailed,
	candles.KindRateLimitHit, candles.KindRateLimitBanned, candles.KindBatchRejected, candles.KindWriterActive,
	candles.KindIntegrityFailed, candles.KindResourceRecreated, candles.KindDiskFull, candles.KindDiskRecovered,
	candles.KindStreamReplaced, candles.KindAlertFiring, candles.KindAlertResolved, candles.KindBackupCompleted,
	candles.KindBackupFailed, candles.KindRestoreCompleted, candles.KindDrillCompleted,
	cluster.KindConfigChanged, cluster.KindConfigInvalid,
}

// syncDurationBuckets are candlekeep_sync_duration_seconds' buckets.
var syncDurationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200}

// counters are what the monitor counts from events: the counter metrics.
// A value type (copy with clone) so the replay can keep one per minute.
type counters struct {
	Events          map[string]float64 // by kind
	Invalid         float64
	SyncTimeouts    float64
	RateLimitHits   float64
	RateLimitBans   float64
	PairFailures    float64
	BatchesRejected float64
	CandlesWritten  float64
	SyncRuns        map[string]float64 // by outcome
	// SyncDuration is the histogram: counts per bucket (not cumulative),
	// the +Inf overflow last, and the sum and count.
	SyncDurationCounts []uint64
	SyncDurationSum    float64
	SyncDurationCount  uint64
	// MaxDeliveries counts advisories by "stream/consumer".
	MaxDeliveries map[string]float64
}

func newCounters() counters {
	return counters{
		Events:             map[string]float64{},
		SyncRuns:           map[string]float64{"completed": 0, "failed": 0, "timeout": 0},
		SyncDurationCounts: make([]uint64, len(syncDurationBuckets)+1),
		MaxDeliveries:      map[string]float64{},
	}
}

func (c counters) clone() counters {
	out := c
	out.Events = cloneMap(c.Events)
	out.SyncRuns = cloneMap(c.SyncRuns)
	out.MaxDeliveries = cloneMap(c.MaxDeliveries)
	out.SyncDurationCounts = append([]uint64(nil), c.SyncDurationCounts...)
	return out
}

func cloneMap(m map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (c *counters) observeSyncDuration(sec float64) {
	i := len(syncDurationBuckets)
	for j, b := range syncDurationBuckets {
		if sec <= b {
			i = j
			break
		}
	}
	c.SyncDurationCounts[i]++
	c.SyncDurationSum += sec
	c.SyncDurationCount++
}

// runInfo is what the events tell about a run.
type runInfo struct {
	status candles.RunStatus
	done   bool
}

// eventState is what the monitor learned from EVENTS. Guarded by Monitor.mu.
type eventState struct {
	c          counters
	lastSync   *candles.SyncCompleted
	lastBackup *candles.BackupCompleted
	backupSeen bool
	// bannedUntil is the latest end of a ban ratelimit.banned announced.
	bannedUntil time.Time
	// runs by run_id: started ones (for reason and deadline) and finished ones.
	runs     map[string]*runInfo
	finished []candles.RunStatus // newest last, at most recentRuns
	// invalid logging, per kind: when last logged and how many since.
	invalidLogged map[string]time.Time
	invalidSince  map[string]int
}

func newEventState() eventState {
	return eventState{c: newCounters(), runs: map[string]*runInfo{},
		invalidLogged: map[string]time.Time{}, invalidSince: map[string]int{}}
}

// errUnknownKind marks an event of a kind the monitor does not know.
var errUnknownKind = errors.New("unknown event kind")

// decodeEvent checks an event's header and decodes the kinds the monitor
// reads into their pkg/candles types (nil for the kinds it only counts).
func decodeEvent(subject string, data []byte) (kind string, ev any, err error) {
	kind = strings.TrimPrefix(subject, candles.SubjectEventPrefix)
	var h candles.EventHeader
	if err := json.Unmarshal(data, &h); err != nil {
		return kind, nil, fmt.Errorf("malformed event: %w", err)
	}
	if h.V != candles.Version {
		return kind, nil, fmt.Errorf("event version %d, the monitor reads version %d", h.V, candles.Version)
	}
	if h.Kind != kind {
		return kind, nil, fmt.Errorf("event of kind %q published on %s", h.Kind, subject)
	}
	var target any
	switch kind {
	case candles.KindSyncStarted:
		target = &candles.SyncStarted{}
	case candles.KindSyncCompleted:
		target = &candles.SyncCompleted{}
	case candles.KindSyncFailed:
		target = &candles.SyncFailed{}
	case candles.KindSyncTimeout:
		target = &candles.SyncTimeout{}
	case candles.KindPairCompleted:
		target = &candles.PairCompleted{}
	case candles.KindPairFailed:
		target = &candles.PairFailed{}
	case candles.KindRateLimitHit:
		target = &candles.RateLimitHit{}
	case candles.KindRateLimitBanned:
		target = &candles.RateLimitBanned{}
	case candles.KindBatchRejected:
		target = &candles.BatchRejected{}
	case candles.KindBackupCompleted:
		target = &candles.BackupCompleted{}
	case candles.KindBackupFailed:
		target = &candles.BackupFailed{}
	case candles.KindIntegrityFailed:
		target = &candles.IntegrityFailed{}
	default:
		for _, k := range knownKinds {
			if k == kind {
				return kind, nil, nil
			}
		}
		return kind, nil, errUnknownKind
	}
	if err := json.Unmarshal(data, target); err != nil {
		return kind, nil, fmt.Errorf("malformed %s event: %w", kind, err)
	}
	return kind, target, nil
}

// apply counts one event into st. Called in stream order.
func (st *eventState) apply(kind string, ev any) {
	st.c.Events[kind]++
	switch e := ev.(type) {
	case *candles.SyncStarted:
		r := st.run(e.RunID)
		r.status.Reason, r.status.Deadline, r.status.PairsTotal = e.Reason, e.Deadline, e.PairsTotal
		if r.status.StartedAt.IsZero() {
			r.status.StartedAt = e.Time
		}
	case *candles.SyncCompleted:
		st.c.SyncRuns["completed"]++
		d := e.FinishedAt.Sub(e.StartedAt).Seconds()
		st.c.observeSyncDuration(max(d, 0))
		if st.lastSync == nil || !e.FinishedAt.Before(st.lastSync.FinishedAt) {
			st.lastSync = e
		}
		r := st.run(e.RunID)
		r.status.PairsTotal, r.status.PairsDone, r.status.PairsFailed = e.PairsTotal, e.PairsOK+e.PairsFailed, e.PairsFailed
		r.status.Candles, r.status.StartedAt, r.status.FinishedAt = e.Candles, e.StartedAt, e.FinishedAt
		st.finish(r, "completed")
	case *candles.SyncFailed:
		st.c.SyncRuns["failed"]++
		r := st.run(e.RunID)
		if r.status.StartedAt.IsZero() {
			r.status.StartedAt = e.Time
		}
		r.status.FinishedAt = e.Time
		st.finish(r, "failed")
	case *candles.SyncTimeout:
		st.c.SyncTimeouts++
		st.c.SyncRuns["timeout"]++
		r := st.run(e.RunID)
		r.status.PairsDone, r.status.PairsFailed = e.PairsOK+e.PairsFailed, e.PairsFailed
		r.status.Deadline, r.status.FinishedAt = e.Deadline, e.Time
		if r.status.StartedAt.IsZero() {
			r.status.StartedAt = e.Time
		}
		st.finish(r, "timeout")
	case *candles.PairCompleted:
		st.c.CandlesWritten += float64(e.Candles)
	case *candles.PairFailed:
		st.c.PairFailures++
	case *candles.RateLimitHit:
		st.c.RateLimitHits++
	case *candles.RateLimitBanned:
		st.c.RateLimitBans++
		if e.Until.After(st.bannedUntil) {
			st.bannedUntil = e.Until
		}
	case *candles.BatchRejected:
		st.c.BatchesRejected++
	case *candles.BackupCompleted:
		st.backupSeen = true
		st.noteBackup(e)
	case *candles.BackupFailed:
		st.backupSeen = true
	}
}

// noteBackup keeps the newest verified backup.
func (st *eventState) noteBackup(e *candles.BackupCompleted) {
	if e.Verified && (st.lastBackup == nil || e.TakenAt.After(st.lastBackup.TakenAt)) {
		st.lastBackup = e
	}
}

func (st *eventState) run(id string) *runInfo {
	r, ok := st.runs[id]
	if !ok {
		r = &runInfo{status: candles.RunStatus{RunID: id, Outcome: "running"}}
		st.runs[id] = r
	}
	return r
}

// finish moves a run to the finished list, keeping the last recentRuns.
func (st *eventState) finish(r *runInfo, outcome string) {
	if r.done {
		return
	}
	r.done = true
	r.status.Outcome = outcome
	st.finished = append(st.finished, r.status)
	if n := len(st.finished); n > recentRuns {
		st.finished = append([]candles.RunStatus(nil), st.finished[n-recentRuns:]...)
	}
	st.prune()
}

// maxRuns bounds the runs remembered; beyond it finished runs and runs
// started over a day ago without an end are forgotten.
const maxRuns = 200

func (st *eventState) prune() {
	if len(st.runs) <= maxRuns {
		return
	}
	var newest time.Time
	for _, r := range st.runs {
		if r.status.StartedAt.After(newest) {
			newest = r.status.StartedAt
		}
	}
	for id, r := range st.runs {
		if r.done || r.status.StartedAt.Before(newest.Add(-24*time.Hour)) {
			delete(st.runs, id)
		}
	}
}

// invalid counts a malformed or unknown event and says whether to log it
// now (at most once a minute per kind), with how many were not logged.
func (st *eventState) invalid(kind string, now time.Time) (log bool, suppressed int) {
	st.c.Invalid++
	if kind == "" || len(kind) > 64 {
		kind = "?"
	}
	if t, ok := st.invalidLogged[kind]; ok && now.Sub(t) < invalidLogEvery {
		st.invalidSince[kind]++
		return false, 0
	}
	suppressed = st.invalidSince[kind]
	st.invalidLogged[kind], st.invalidSince[kind] = now, 0
	return true, suppressed
}

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
			m.mu.Lock()
			rp.advance(m.o.Now(), m.ev.c)
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
		cc, err := cons.Consume(func(msg jetstream.Msg) {
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
				m.mu.Lock()
				rp.advance(md.Timestamp.Add(-time.Nanosecond), m.ev.c)
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
	for _, kind := range []string{candles.KindSyncCompleted, candles.KindBackupCompleted, candles.KindIntegrityFailed} {
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
		}
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
