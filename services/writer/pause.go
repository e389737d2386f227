package writer

import (
	"context"
	"errors"
	"sync"
)

// ErrPaused is what the coverage and replay endpoints answer while the
// writer's database is paused for a restore.
var ErrPaused = errors.New("writer: database paused for a restore; ask again in a moment")

// pauser lets Pause stop the consumers at a batch boundary and swap the
// database under a running writer.
type pauser struct {
	mu sync.Mutex
	// st is the database in use; only a resume replaces it.
	st Store
	// cancel ends the consumer session in progress (nil between sessions).
	cancel context.CancelFunc
	// pending is the pause asked for, until its resume.
	pending *pause
	// users counts endpoint handlers using st.
	users sync.WaitGroup
}

// pause is one Pause: Run closes stopped when the consumers have stopped
// and then waits for the store to go on with (nil: the same one).
type pause struct {
	stopped chan struct{}
	resume  chan Store
}

// store is the database in use.
func (w *Writer) store() Store {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.st
}

// useStore hands an endpoint handler the database, or ErrPaused; release
// must follow a nil error.
func (w *Writer) useStore() (st Store, release func(), err error) {
	if err := w.damagedErr(); err != nil {
		return nil, nil, err
	}
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.pending != nil {
		return nil, nil, ErrPaused
	}
	w.p.users.Add(1)
	return w.p.st, w.p.users.Done, nil
}

// Pause stops the writer's use of its database so it can be closed and
// replaced (a restore): the consumers stop at a batch boundary (every batch
// acked is committed; a batch in hand is finished first, or left unacked if
// its write was still failing), a replay in progress is waited for, and
// coverage and replay requests get ErrPaused until the resume. Pause returns
// when nothing uses the database.
//
// resume(st) makes st the writer's database (nil keeps the old one, if it
// was not closed) and starts the consumers again: each reads its watermark
// from st and, when the durable consumer disagrees (a restore from an older
// copy), recreates it at watermark+1, so the batches published meanwhile
// and those the restored copy lacks are applied exactly once. resume may be
// called once; the caller owns closing the old store.
//
// If ctx ends before the database is free, Pause resumes with the old store
// and returns ctx's error. Pause fails on a writer that is not running or
// already paused.
func (w *Writer) Pause(ctx context.Context) (resume func(Store) error, err error) {
	w.p.mu.Lock()
	if w.p.cancel == nil || w.p.pending != nil {
		w.p.mu.Unlock()
		return nil, errors.New("writer: pause: the writer is not running or is already paused")
	}
	p := &pause{stopped: make(chan struct{}), resume: make(chan Store, 1)}
	w.p.pending = p
	cancel := w.p.cancel
	w.p.mu.Unlock()
	cancel()

	free := make(chan struct{})
	go func() {
		<-p.stopped
		w.p.users.Wait()
		close(free)
	}()
	select {
	case <-free:
	case <-ctx.Done():
		p.resume <- nil
		return nil, ctx.Err()
	}
	w.log.Info("writer paused: the database is free")
	var once sync.Once
	return func(st Store) error {
		err := errors.New("writer: resume called twice")
		once.Do(func() {
			p.resume <- st
			err = nil
		})
		return err
	}, nil
}

// sessions runs session until ctx ends or it fails, starting it again after
// every Pause with the store the resume gave.
func (w *Writer) sessions(ctx context.Context, session func(context.Context) error) error {
	for {
		sctx, cancel := context.WithCancel(ctx)
		w.p.mu.Lock()
		w.p.cancel = cancel
		w.p.mu.Unlock()
		err := session(sctx)
		cancel()
		w.p.mu.Lock()
		w.p.cancel = nil
		p := w.p.pending
		w.p.mu.Unlock()
		if p == nil || ctx.Err() != nil {
			if p != nil {
				close(p.stopped) // Pause gives up on its own ctx
			}
			return err
		}
		close(p.stopped)
		var st Store
		select {
		case st = <-p.resume:
		case <-ctx.Done():
			return nil
		}
		w.p.mu.Lock()
		if st != nil {
			w.p.st = st
			w.forgetDamage() // the new file is checked when its session starts
		}
		w.p.pending = nil
		w.p.mu.Unlock()
		w.log.Info("writer resumed", "new_database", st != nil)
		w.announce(ctx)
	}
}
