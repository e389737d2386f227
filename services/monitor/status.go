package monitor

import (
	"slices"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Status returns the runs in progress (the owner's progress joined with
// their sync.started) and the last finished runs, newest first.
func (m *Monitor) Status() candles.StatusReport {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.o.Now()
	rep := candles.StatusReport{V: candles.Version, Running: []candles.RunStatus{}, Recent: []candles.RunStatus{}, At: now}
	if m.db != nil {
		for _, rp := range m.db.Runs {
			rs := candles.RunStatus{RunID: rp.RunID, PairsTotal: rp.PairsTotal, PairsDone: rp.PairsDone,
				Candles: rp.Candles, StartedAt: rp.StartedAt, Deadline: rp.Deadline, Outcome: "running"}
			if r, ok := m.ev.runs[rp.RunID]; ok {
				if r.done {
					continue // finished since the owner last answered
				}
				rs.Reason = r.status.Reason
				if rs.Deadline.IsZero() {
					rs.Deadline = r.status.Deadline
				}
				if rs.StartedAt.IsZero() {
					rs.StartedAt = r.status.StartedAt
				}
			}
			rs.ETA = eta(rs, now)
			rep.Running = append(rep.Running, rs)
		}
	}
	for _, r := range slices.Backward(m.ev.finished) {
		rep.Recent = append(rep.Recent, r)
	}
	return rep
}

// eta is the expected finish of a run at its pace so far: started +
// elapsed × total/done; zero before the first pair is done.
func eta(r candles.RunStatus, now time.Time) time.Time {
	if r.PairsDone <= 0 || r.StartedAt.IsZero() || r.PairsTotal <= 0 {
		return time.Time{}
	}
	elapsed := now.Sub(r.StartedAt)
	return r.StartedAt.Add(time.Duration(float64(elapsed) * float64(r.PairsTotal) / float64(r.PairsDone)))
}
