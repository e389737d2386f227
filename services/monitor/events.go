package monitor

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

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
	candles.KindRestoreStarted, candles.KindRestoreFailed, candles.KindDrillFailed,
	candles.KindFreshnessChanged, candles.KindSLAReport,
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
	// DrillFailures counts drill.failed events (restore drills that could
	// not prove a tier restores).
	DrillFailures float64
	SyncRuns      map[string]float64 // by outcome
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
	// firstBackupAt is when the oldest verified backup the monitor knows of
	// was taken: with no drill ever passed, the drill is overdue once it is
	// drillMaxAge old.
	firstBackupAt time.Time
	// lastDrill is the newest drill's outcome (drill.completed or
	// drill.failed), lastGoodDrill the newest that passed.
	lastDrill, lastGoodDrill *candles.DrillCompleted
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
	case candles.KindDrillCompleted, candles.KindDrillFailed:
		target = &candles.DrillCompleted{}
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
	case *candles.DrillCompleted:
		st.backupSeen = true
		if drillFailed(e) {
			st.c.DrillFailures++
		}
		st.noteDrill(e)
	}
}

// drillFailed says whether a drill event reports a failure: drill.failed,
// or a drill.completed that says it is not OK.
func drillFailed(e *candles.DrillCompleted) bool {
	return e.Kind == candles.KindDrillFailed || !e.OK
}

// noteDrill keeps the newest drill and the newest drill that passed.
func (st *eventState) noteDrill(e *candles.DrillCompleted) {
	if st.lastDrill == nil || !e.FinishedAt.Before(st.lastDrill.FinishedAt) {
		st.lastDrill = e
	}
	if !drillFailed(e) && (st.lastGoodDrill == nil || !e.FinishedAt.Before(st.lastGoodDrill.FinishedAt)) {
		st.lastGoodDrill = e
	}
}

// noteBackup keeps the newest verified backup.
func (st *eventState) noteBackup(e *candles.BackupCompleted) {
	if !e.Verified {
		return
	}
	if st.lastBackup == nil || e.TakenAt.After(st.lastBackup.TakenAt) {
		st.lastBackup = e
	}
	if st.firstBackupAt.IsZero() || e.TakenAt.Before(st.firstBackupAt) {
		st.firstBackupAt = e.TakenAt
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
