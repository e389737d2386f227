package writer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// swapPauseTimeout bounds how long a swap waits for the consumers to
// stop at a batch boundary.
const swapPauseTimeout = time.Minute

// swapper serialises swaps and keeps the stores they opened, which the
// writer closes when Run ends (the caller closes only the one it gave).
type swapper struct {
	mu     sync.Mutex
	opened []io.Closer
}

// handleSwap answers candles.api.writer.swap: a SwapRequest in, a
// SwapResult or an error out.
func (w *Writer) handleSwap(ctx context.Context, req micro.Request) {
	var r candles.SwapRequest
	if err := json.Unmarshal(req.Data(), &r); err != nil {
		w.respondError(req, "400", "swap: want a JSON SwapRequest: "+err.Error())
		return
	}
	res, err := w.Swap(ctx, r)
	if err != nil {
		w.respondError(req, "500", err.Error())
		return
	}
	if err := req.RespondJSON(res); err != nil {
		w.log.Warn("respond to swap request", "err", err)
	}
}

// Swap puts the database file r.Restored (a verified copy, prepared in the
// directory of the live file) in place of the live database under the
// running writer: Pause (the consumers stop at a batch boundary), close the
// live store, move the live file and its -wal and -shm aside to
// <database>.corrupt-<time> (never deleted), rename the copy into place
// (atomic: same directory), open it with Options.Reopen and resume. The
// writer then reads its watermark from the copy and replays CANDLES from
// watermark+1, so every batch acknowledged after the copy was taken is
// applied again, once.
//
// If the copy cannot be opened, the previous file is put back and reopened
// and the error says so: a swap never leaves the writer without the file
// it had.
func (w *Writer) Swap(ctx context.Context, r candles.SwapRequest) (candles.SwapResult, error) {
	live := w.o.DatabasePath
	if w.o.Reopen == nil || live == "" {
		return candles.SwapResult{}, errors.New("swap: this writer cannot reopen its database (no DatabasePath or Reopen)")
	}
	if err := checkPrepared(live, r.Restored); err != nil {
		return candles.SwapResult{}, err
	}
	w.swaps.mu.Lock()
	defer w.swaps.mu.Unlock()
	began := time.Now()
	pctx, cancel := context.WithTimeout(ctx, swapPauseTimeout)
	resume, err := w.Pause(pctx)
	cancel()
	if err != nil {
		return candles.SwapResult{}, fmt.Errorf("swap: pause the writer: %w", err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = resume(nil)
		}
	}()
	old := w.store()
	if c, ok := old.(io.Closer); ok {
		if err := c.Close(); err != nil {
			// A damaged file may not close cleanly; it is moved aside
			// either way.
			w.log.Warn("close the database before the swap", "database", live, "err", err)
		}
	}
	aside := live + ".corrupt-" + w.o.Now().UTC().Format("20060102T150405.000Z")
	moved, err := moveSet(live, aside)
	if err != nil {
		w.reopenAfterFailure(ctx, live, aside, moved, "", resume, &resumed)
		return candles.SwapResult{}, fmt.Errorf("swap: move %s aside: %w", live, err)
	}
	if err := os.Rename(r.Restored, live); err != nil {
		w.reopenAfterFailure(ctx, live, aside, moved, "", resume, &resumed)
		return candles.SwapResult{}, fmt.Errorf("swap: put %s in place: %w", r.Restored, err)
	}
	syncDir(filepath.Dir(live))
	st, err := w.o.Reopen(ctx, live)
	var wm uint64
	if err == nil {
		wm, err = st.Watermark(ctx, candles.StreamCandles)
		if err != nil {
			if c, ok := st.(io.Closer); ok {
				c.Close()
			}
		}
	}
	if err != nil {
		w.reopenAfterFailure(ctx, live, aside, moved, r.Restored, resume, &resumed)
		return candles.SwapResult{}, fmt.Errorf("swap: open the restored copy: %w (the previous file is back in place)", err)
	}
	if c, ok := st.(io.Closer); ok {
		w.swaps.opened = append(w.swaps.opened, c)
	}
	var last uint64
	if s, err := w.js.Stream(ctx, candles.StreamCandles); err == nil {
		last = s.CachedInfo().State.LastSeq
		if info, err := s.Info(ctx); err == nil {
			last = info.State.LastSeq
		}
	}
	resumed = true
	if err := resume(st); err != nil {
		return candles.SwapResult{}, fmt.Errorf("swap: resume: %w", err)
	}
	res := candles.SwapResult{Database: live, Watermark: wm, StreamLast: last,
		PausedFor: time.Since(began).Seconds(), At: w.o.Now().UTC()}
	if moved[""] {
		res.MovedAside = aside
	}
	w.log.Warn("database swapped: the restored copy is live; replaying CANDLES from its watermark",
		"database", live, "moved_aside", res.MovedAside, "reason", r.Reason, "watermark", wm, "stream_last", last,
		"paused", time.Since(began).Round(time.Millisecond))
	return res, nil
}

// reopenAfterFailure undoes a swap that failed after the live store was
// closed: the copy goes back to its prepared name (if it was moved), the
// moved files come back, and the writer resumes on the reopened file.
func (w *Writer) reopenAfterFailure(ctx context.Context, live, aside string, moved map[string]bool, restored string, resume func(Store) error, resumed *bool) {
	if restored != "" {
		if err := os.Rename(live, restored); err != nil {
			w.log.Error("swap failed and the copy could not be moved back", "database", live, "err", err)
		}
	}
	for suffix, ok := range moved {
		if ok {
			if err := os.Rename(aside+suffix, live+suffix); err != nil {
				w.log.Error("swap failed and a moved file could not be put back", "file", aside+suffix, "err", err)
			}
		}
	}
	st, err := w.o.Reopen(ctx, live)
	if err != nil {
		w.log.Error("swap failed and the previous database does not reopen", "database", live, "err", err)
		return
	}
	if c, ok := st.(io.Closer); ok {
		w.swaps.opened = append(w.swaps.opened, c)
	}
	*resumed = true
	_ = resume(st)
}

// checkPrepared accepts a restored file that is a regular file in the
// directory of live, so the rename into place is atomic.
func checkPrepared(live, restored string) error {
	if restored == "" || !filepath.IsAbs(restored) {
		return fmt.Errorf("swap: restored %q: want an absolute path", restored)
	}
	restored = filepath.Clean(restored)
	if filepath.Dir(restored) != filepath.Dir(filepath.Clean(live)) {
		return fmt.Errorf("swap: restored %s is not in the database's directory %s (the rename must be atomic)", restored, filepath.Dir(live))
	}
	if restored == filepath.Clean(live) || strings.HasPrefix(filepath.Base(restored), filepath.Base(live)+"-") {
		return fmt.Errorf("swap: restored %s is the live database or one of its files", restored)
	}
	fi, err := os.Lstat(restored)
	if err != nil {
		return fmt.Errorf("swap: restored copy: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("swap: restored %s is not a regular file", restored)
	}
	return nil
}

// moveSet renames live, live-wal and live-shm to aside, aside-wal and
// aside-shm, reporting which existed and were moved (keyed by suffix).
func moveSet(live, aside string) (map[string]bool, error) {
	moved := map[string]bool{}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		err := os.Rename(live+suffix, aside+suffix)
		switch {
		case err == nil:
			moved[suffix] = true
		case errors.Is(err, os.ErrNotExist):
		default:
			return moved, err
		}
	}
	return moved, nil
}

// syncDir makes the renames in dir durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// closeSwapped closes the stores swaps opened.
func (w *Writer) closeSwapped() {
	w.swaps.mu.Lock()
	defer w.swaps.mu.Unlock()
	for _, c := range w.swaps.opened {
		if err := c.Close(); err != nil {
			w.log.Warn("close a restored database", "err", err)
		}
	}
	w.swaps.opened = nil
}

// fileIdentity remembers which file the database path named when a
// session began, so a file deleted or replaced under the open database
// (which SQLite cannot see: it keeps writing to the unlinked inode) is
// found by the periodic check.
type fileIdentity struct {
	path string
	fi   os.FileInfo
}

func (w *Writer) identify() *fileIdentity {
	p, ok := w.store().(interface{ Path() string })
	if !ok {
		return nil
	}
	fi, err := os.Stat(p.Path())
	if err != nil {
		return nil
	}
	return &fileIdentity{path: p.Path(), fi: fi}
}

// gone reports an error when the path no longer names the file opened, or
// the file shrank: SQLite grows a database file and never shrinks it
// without a VACUUM, which the writer never runs on it, so a smaller file
// was truncated from outside and its tail is lost.
func (id *fileIdentity) gone() error {
	if id == nil {
		return nil
	}
	fi, err := os.Stat(id.path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the database file %s was deleted while open: its data is no longer reachable by name", id.path)
	}
	if err == nil && !os.SameFile(fi, id.fi) {
		return fmt.Errorf("the database file %s was replaced by another file while open", id.path)
	}
	if err != nil {
		return nil
	}
	if err := id.shrunk(fi); err != nil {
		return err
	}
	id.fi = fi
	return id.shortOfHeader()
}

// shrunk reports fi smaller than the file at the last look.
func (id *fileIdentity) shrunk(fi os.FileInfo) error {
	if fi.Size() < id.fi.Size() {
		return fmt.Errorf("the database file %s was truncated from %d to %d bytes while open", id.path, id.fi.Size(), fi.Size())
	}
	return nil
}

// shortConfirm is how often, and how far apart, a file found shorter than
// its header is looked at again before it counts as truncated.
const (
	shortConfirmTries = 10
	shortConfirmWait  = 200 * time.Millisecond
)

// shortOfHeader reports a file shorter than its SQLite header says: the
// header's page count times the page size (valid when the version-valid-for
// number matches the change counter) is the size of the database as last
// checkpointed, and the file is never shorter than that unless it was cut.
// A checkpoint in progress (the writer's own, or another connection's)
// writes page 1, with the new page count, before the pages that grow the
// file: for that moment a sound file looks short. So a short file counts
// only when it is short at every one of ten looks over two seconds; a file
// that shrinks meanwhile was cut, and is reported at once.
func (id *fileIdentity) shortOfHeader() error {
	var err error
	for i := range shortConfirmTries {
		if i > 0 {
			time.Sleep(shortConfirmWait)
			if fi, err := os.Stat(id.path); err == nil {
				if err := id.shrunk(fi); err != nil {
					return err
				}
			}
		}
		if err = shortOnce(id.path); err == nil {
			return nil
		}
	}
	return err
}

// shortOnce is one look: the header first, then the size (a checkpoint
// only ever makes the size catch up with the header).
func shortOnce(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil // gone() reports a missing file; other errors say nothing
	}
	defer f.Close()
	var h [100]byte
	n, rerr := f.ReadAt(h[:], 0)
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	size := fi.Size()
	if n < len(h) {
		if size == 0 {
			return nil // a database never written to
		}
		return fmt.Errorf("the database file %s is %d bytes, shorter than SQLite's header (%v)", path, size, rerr)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	counter, validFor := binary.BigEndian.Uint32(h[24:28]), binary.BigEndian.Uint32(h[92:96])
	pages := int64(binary.BigEndian.Uint32(h[28:32]))
	if counter != validFor || pages == 0 {
		return nil
	}
	if want := pages * pageSize; size < want {
		return fmt.Errorf("the database file %s was truncated: %d bytes, its header says %d pages of %d bytes (%d)", path, size, pages, pageSize, want)
	}
	return nil
}
