package writer

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/diskspace"
)

// diskState turns the database's "database or disk is full" into two
// events: disk.full when a write first fails for lack of space and
// disk.recovered when a write succeeds again, however many retries lie
// between (the writer retries in place; see retry).
type diskState struct {
	mu    sync.Mutex
	since time.Time // zero while writes succeed
}

// observeDisk records the outcome of a database write.
func (w *Writer) observeDisk(ctx context.Context, err error) {
	full := diskspace.IsFull(err)
	w.disk.mu.Lock()
	was := w.disk.since
	switch {
	case full && was.IsZero():
		w.disk.since = w.o.Now()
	case err == nil && !was.IsZero():
		w.disk.since = time.Time{}
	default:
		w.disk.mu.Unlock()
		return
	}
	w.disk.mu.Unlock()
	path := w.o.DatabasePath
	free := diskspace.Free(filepath.Dir(path))
	var ev candles.Event
	if full {
		w.log.Error("the database's disk is full; the batch is retried until space returns", "path", path, "free_bytes", free, "err", err)
		ev = &candles.DiskFull{EventHeader: candles.NewHeader(candles.KindDiskFull, ""), Path: path, FreeBytes: free,
			Service: "writer", Reason: err.Error()}
	} else {
		w.log.Info("the database writes again after its disk was full", "path", path, "free_bytes", free, "full_for", w.o.Now().Sub(was).Round(time.Second))
		ev = &candles.DiskRecovered{EventHeader: candles.NewHeader(candles.KindDiskRecovered, ""), Path: path, FreeBytes: free,
			Service: "writer", Since: was.UTC()}
	}
	// Not on the batch's path: the NATS store may be on the same full disk.
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := candles.PublishEvent(pctx, w.js, ev, "", w.o.Now()); err != nil {
			w.log.Debug("disk event not stored in EVENTS (its subscribers had it)", "kind", ev.Head().Kind, "err", err)
		}
	}()
}
