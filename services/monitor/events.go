package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	// Started runs without an end are kept for their reason and deadline;
	// ended ones only while they might still be joined with progress.
	for id, ri := range st.runs {
		if ri.done && len(st.runs) > 4*recentRuns {
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
	caughtUp, factsRead := false, false
	finishReplay := func() {
		if caughtUp {
			return
		}
		caughtUp = true
		m.mu.Lock()
		rp.advance(m.o.Now(), m.ev.c)
		m.mu.Unlock()
		done(rp.samples)
	}
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
		if !caughtUp && !factsRead {
			factsRead = true
			m.lastFacts(ctx, stream, start)
			if info := stream.CachedInfo(); info.State.Msgs == 0 || info.State.LastTime.Before(start) {
				finishReplay()
			}
		}
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{candles.SubjectEventPrefix + ">"},
			DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
			OptStartTime:   &start,
		})
		if err != nil {
			m.log.Warn("cannot read EVENTS; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			md, err := msg.Metadata()
			if !caughtUp && err == nil {
				// Samples before the event see the counters without it.
				m.mu.Lock()
				rp.advance(md.Timestamp.Add(-time.Nanosecond), m.ev.c)
				m.mu.Unlock()
			}
			m.handleEvent(msg.Subject(), msg.Data())
			if !caughtUp && err == nil && md.NumPending == 0 {
				finishReplay()
			}
		})
		if err != nil {
			m.log.Warn("cannot read EVENTS; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		<-ctx.Done()
		cc.Stop()
		return nil
	}
	return nil
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
}

// lastFacts reads, per kind whose newest event matters even when it is older
// than the replayed hour, the last message on its subject.
func (m *Monitor) lastFacts(ctx context.Context, stream jetstream.Stream, start time.Time) {
	for _, kind := range []string{candles.KindSyncCompleted, candles.KindBackupCompleted} {
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
