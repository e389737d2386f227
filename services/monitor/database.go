package monitor

import (
	"context"
	"errors"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// databaseTimeout bounds a candles.api.database request: the owner runs
// PRAGMA quick_check for each (seconds for a few GB; it answers within
// 30 s). The request runs on its own loop, so a slow answer never holds
// up an evaluation: the evaluation reports the last answer and its age.
const databaseTimeout = 30 * time.Second

// pollDatabase asks the database's owner every EvalInterval (one request
// at a time) until ctx ends; first is called after the first attempt.
func (m *Monitor) pollDatabase(ctx context.Context, first func()) error {
	t := time.NewTicker(m.o.EvalInterval)
	defer t.Stop()
	for {
		m.askDatabase(ctx)
		if first != nil {
			first()
			first = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// askDatabase sends one candles.api.database request and records the
// answer, an error answer, or its absence.
func (m *Monitor) askDatabase(ctx context.Context) {
	m.mu.Lock()
	damagesBefore := m.damages
	m.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, databaseTimeout)
	db, err := request[candles.DatabaseHealth](rctx, m.o.Conn, candles.SubjectAPIDatabase, nil)
	cancel()
	if ctx.Err() != nil {
		return
	}
	now := m.o.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var se *serviceError
	switch {
	case db != nil:
		if m.ownerDown {
			m.log.Info("the database's owner answers again", "subject", candles.SubjectAPIDatabase, "holder", db.Holder)
		}
		m.db, m.dbAt, m.ownerDown, m.ownerProblem = db, now, false, ""
		// The answer is newer than any integrity.failed read before the
		// request was sent: it says whether the file is damaged.
		if m.damages == damagesBefore {
			m.damage = nil
		}
	case errors.As(err, &se):
		if m.ownerProblem != se.Error() {
			m.log.Warn("the database's owner answers with an error", "subject", candles.SubjectAPIDatabase, "code", se.Code, "err", se.Description)
		}
		m.ownerDown, m.ownerProblem = false, se.Error()
	case m.db != nil && !m.ownerDown:
		// Logged once when it stops; the activity check says it at every evaluation.
		m.ownerDown = true
		m.log.Warn("the database's owner does not answer; reporting its last known values", "subject", candles.SubjectAPIDatabase,
			"since", m.dbAt, "err", err)
	}
}
