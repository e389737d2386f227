package writer

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// Defaults of the integrity and WAL options.
const (
	// DefaultQuickCheckEvery is how often the running writer runs PRAGMA
	// quick_check: O(size of the file) on a read connection, seconds for a
	// few GB, so every few minutes costs little.
	DefaultQuickCheckEvery = 5 * time.Minute
	// DefaultIntegrityCheckEvery is how often it runs the full
	// integrity_check (which also compares every index with its table).
	DefaultIntegrityCheckEvery = 24 * time.Hour
	// DefaultCheckpointEvery is how often the writer checkpoints the WAL
	// between batches (store.CheckpointWAL).
	DefaultCheckpointEvery = 5 * time.Second
)

// RecoveryHint is what the log and integrity.failed say to do about a
// damaged database file. %s is the file.
const RecoveryHint = "the database %s is damaged and candlekeep no longer writes to it. " +
	"To recover by hand: stop candlekeep; move the file and its -wal and -shm files aside " +
	"(mv %[1]s %[1]s.corrupt; mv %[1]s-wal %[1]s-wal.corrupt; mv %[1]s-shm %[1]s-shm.corrupt) and start candlekeep again: " +
	"the writer rebuilds the database from the CANDLES stream from watermark 0 (and the next sync re-fetches what the stream no longer holds); " +
	"or restore a verified backup in its place before starting. Keep the .corrupt file for diagnosis (docs/operations.md, \"The database is corrupt\")"

// errDamaged ends the writer's session once its database is damaged.
var errDamaged = errors.New("writer: the database is damaged; writes stopped")

// checker is what the integrity watch needs from the database (pkg/store
// implements it; a Store without it is not checked).
type checker interface {
	// Verify runs quick_check or integrity_check on a read connection; a
	// damaged file gives an error that store.IsCorrupt recognises.
	Verify(ctx context.Context, check string) error
	// CheckpointWAL checkpoints what no reader pins and resets the WAL
	// when nothing is left in it.
	CheckpointWAL(ctx context.Context) (store.WALState, error)
	// WALBytes is the size of the -wal file.
	WALBytes() (int64, error)
	// LastCheck and RecordCheck keep when a check last passed, so the
	// daily integrity_check survives restarts.
	LastCheck(ctx context.Context, check string) (time.Time, error)
	RecordCheck(ctx context.Context, check string, at time.Time) error
}

var _ checker = (*store.Store)(nil)

// damage is the writer's knowledge that its database file is damaged.
// Once set it stays set: only a restart on a sound file clears it.
type damage struct {
	mu sync.Mutex
	// ev is the integrity.failed event (nil while the file is sound).
	ev *candles.IntegrityFailed
	// published is set once ev is in EVENTS.
	published bool
	// done is closed when ev is set.
	done chan struct{}
	// stop ends the work of the session in progress (nil between
	// sessions); markDamaged calls it before it returns, so the consumer
	// that found the damage handles no further message.
	stop context.CancelFunc
}

// workContext returns the context of a session's work: ended by the
// session's end or by the database being found damaged. release must
// follow.
func (w *Writer) workContext(ctx context.Context) (wctx context.Context, release func()) {
	wctx, cancel := context.WithCancel(ctx)
	w.dmg.mu.Lock()
	w.dmg.stop = cancel
	w.dmg.mu.Unlock()
	return wctx, func() {
		w.dmg.mu.Lock()
		w.dmg.stop = nil
		w.dmg.mu.Unlock()
		cancel()
	}
}

// forgetDamage clears what was known about the previous database when a
// Pause's resume brings another file.
func (w *Writer) forgetDamage() {
	w.dmg.mu.Lock()
	defer w.dmg.mu.Unlock()
	if w.dmg.ev != nil {
		w.dmg.ev, w.dmg.published, w.dmg.done = nil, false, make(chan struct{})
	}
}

// damagedSignal is closed once the database in use is found damaged.
func (w *Writer) damagedSignal() <-chan struct{} {
	w.dmg.mu.Lock()
	defer w.dmg.mu.Unlock()
	return w.dmg.done
}

// damaged reports the integrity.failed of the database, or nil.
func (w *Writer) damaged() *candles.IntegrityFailed {
	w.dmg.mu.Lock()
	defer w.dmg.mu.Unlock()
	return w.dmg.ev
}

// damagedErr is what a request that needs the database gets once it is
// damaged.
func (w *Writer) damagedErr() error {
	ev := w.damaged()
	if ev == nil {
		return nil
	}
	return fmt.Errorf("writer: the database %s failed %s (%s); it is not used until it is replaced: see the writer's log or the integrity.failed event for how to recover",
		ev.Database, ev.Check, firstProblem(ev.Problems))
}

func firstProblem(ps []string) string {
	if len(ps) == 0 {
		return "no details"
	}
	return ps[0]
}

// markDamaged records that the database is damaged, as found by check
// ("quick_check", "integrity_check" or "query") with err: it ends the
// session's work at once (the batch in hand is left unacked unless it was
// committed), logs the recovery steps and leaves publishing integrity.failed
// to the session, which then waits (refuseDamaged). Only the first call
// counts.
func (w *Writer) markDamaged(check string, err error) {
	problems := []string{err.Error()}
	var cf *store.CheckFailedError
	if errors.As(err, &cf) {
		check, problems = cf.Check, cf.Problems
	}
	path := w.dbPath() // before dmg.mu: the store's lock is taken first elsewhere
	w.dmg.mu.Lock()
	if w.dmg.ev != nil {
		w.dmg.mu.Unlock()
		return
	}
	ev := &candles.IntegrityFailed{
		EventHeader: candles.NewHeader(candles.KindIntegrityFailed, ""),
		Database:    path,
		Check:       check,
		Problems:    problems,
		DetectedAt:  w.o.Now().UTC(),
		Hint:        fmt.Sprintf(RecoveryHint, path),
	}
	// Stamped here, not by PublishEvent, so candles.api.database reports
	// the event as it was published.
	ev.Time = ev.DetectedAt
	w.dmg.ev = ev
	close(w.dmg.done)
	stop := w.dmg.stop
	w.dmg.mu.Unlock()
	if stop != nil {
		stop()
	}
	w.log.Error("database damaged: writes stopped", "database", path, "check", check,
		"problems", strings.Join(problems, "; "), "hint", ev.Hint)
}

// dbPath names the database file for operators, absolute so the hint's
// commands work from any directory.
func (w *Writer) dbPath() string {
	p, ok := w.store().(interface{ Path() string })
	if !ok {
		return "(unknown path)"
	}
	if abs, err := filepath.Abs(p.Path()); err == nil {
		return abs
	}
	return p.Path()
}

// noteErr sends a database error that says the file is damaged to
// markDamaged and reports whether it did: such an error is never retried.
func (w *Writer) noteErr(err error) bool {
	if !store.IsCorrupt(err) {
		return false
	}
	w.markDamaged("query", err)
	return true
}

// publishDamage publishes integrity.failed once, if the database is
// damaged, and reports whether that is done.
func (w *Writer) publishDamage(ctx context.Context) bool {
	w.dmg.mu.Lock()
	ev, done := w.dmg.ev, w.dmg.published
	w.dmg.mu.Unlock()
	if ev == nil || done {
		return true
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sideEffectTimeout)
	defer cancel()
	id := "integrity.failed:" + ev.Database + ":" + ev.DetectedAt.Format(time.RFC3339Nano)
	// A copy: PublishEvent stamps the header it is given, and ev is shared
	// with candles.api.database, which reads it concurrently.
	pub := *ev
	if err := candles.PublishEvent(pctx, w.js, &pub, id, ev.DetectedAt); err != nil {
		w.log.Error("publish integrity.failed; will retry", "database", ev.Database, "err", err)
		return false
	}
	w.dmg.mu.Lock()
	w.dmg.published = true
	w.dmg.mu.Unlock()
	return true
}

// checkAtStart runs quick_check before the writer trusts its database with
// anything. A check that cannot run for another reason (a lock) is logged
// and the periodic checks try again.
func (w *Writer) checkAtStart(ctx context.Context) {
	c, ok := w.store().(checker)
	if !ok {
		return
	}
	began := time.Now()
	err := c.Verify(ctx, "quick_check")
	switch {
	case err == nil:
		w.log.Info("database checked", "check", "quick_check", "took", time.Since(began).Round(time.Millisecond))
	case store.IsCorrupt(err):
		w.markDamaged("quick_check", err)
	case ctx.Err() == nil:
		w.log.Warn("database check could not run; trying again later", "check", "quick_check", "err", err)
	}
}

// watchIntegrity runs for a session: it checkpoints the WAL between batches
// every CheckpointEvery, runs quick_check every QuickCheckEvery and
// integrity_check every IntegrityCheckEvery (both on a read connection, so
// writes go on), and returns errDamaged, ending the session, as soon as the
// database is found damaged by anyone.
func (w *Writer) watchIntegrity(ctx context.Context) error {
	c, ok := w.store().(checker)
	if !ok {
		<-ctx.Done()
		return nil
	}
	damaged := w.damagedSignal()
	id := w.identify() // swap.go: a file deleted or replaced under the writer
	ckpt := time.NewTicker(w.o.CheckpointEvery)
	defer ckpt.Stop()
	quick := time.NewTicker(w.o.QuickCheckEvery)
	defer quick.Stop()
	// The full check is due IntegrityCheckEvery after it last passed on
	// this file (at once if it never did), however often the writer
	// restarts.
	last, err := c.LastCheck(ctx, "integrity_check")
	if w.noteErr(err) {
		return errDamaged
	}
	if err != nil && ctx.Err() == nil {
		w.log.Warn("read when the database was last checked", "err", err)
	}
	full := time.NewTimer(max(0, last.Add(w.o.IntegrityCheckEvery).Sub(w.o.Now())))
	defer full.Stop()
	verify := func(check string) {
		began := time.Now()
		err := c.Verify(ctx, check)
		switch {
		case err == nil && check == "integrity_check":
			w.log.Info("database checked", "check", check, "took", time.Since(began).Round(time.Millisecond))
			if err := c.RecordCheck(ctx, check, w.o.Now()); err != nil && !w.noteErr(err) && ctx.Err() == nil {
				w.log.Warn("record the database check", "check", check, "err", err)
			}
		case err == nil:
			w.log.Debug("database checked", "check", check, "took", time.Since(began).Round(time.Millisecond))
		case store.IsCorrupt(err):
			w.markDamaged(check, err)
		case ctx.Err() == nil:
			w.log.Warn("database check could not run; trying again later", "check", check, "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-damaged:
			return errDamaged
		case <-ckpt.C:
			if err := id.gone(); err != nil {
				w.markDamaged("file", err)
				continue
			}
			st, err := c.CheckpointWAL(ctx)
			switch {
			case w.noteErr(err):
			case err != nil && ctx.Err() == nil:
				w.log.Warn("checkpoint the WAL", "err", err)
			case err == nil && st.Frames > st.Checkpointed:
				w.log.Debug("WAL pinned by a reader", "wal_bytes", st.Bytes, "wal_frames", st.Frames, "checkpointed", st.Checkpointed)
			}
		case <-quick.C:
			verify("quick_check")
		case <-full.C:
			verify("integrity_check")
			full.Reset(w.o.IntegrityCheckEvery)
		}
	}
}

// walBytes is the size of the WAL for the progress log (-1 if unknown).
func (w *Writer) walBytes() int64 {
	c, ok := w.store().(checker)
	if !ok {
		return -1
	}
	n, err := c.WALBytes()
	if err != nil {
		return -1
	}
	return n
}
