package writer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/diskspace"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// databaseTimeout bounds the database work of one candles.api.database
// request: quick_check reads the whole file, seconds for a few GB.
const databaseTimeout = 30 * time.Second

// countEvery is how long a candle count stays in use. COUNT(*) reads the
// whole primary key (about a second per few tens of millions of candles),
// so the endpoint counts at most this often and answers the last count in
// between: the monitor polls far more often than the count moves in a way
// that matters to it.
const countEvery = 30 * time.Second

// inspector is what candles.api.database needs from the database beyond
// Store (pkg/store implements it; a Store without it is not reported).
type inspector interface {
	// Path is the database file.
	Path() string
	// Verify runs quick_check on a read connection; a damaged file gives a
	// *store.CheckFailedError.
	Verify(ctx context.Context, check string) error
	// Stats counts the candles and reads the schema version.
	Stats(ctx context.Context) (store.Stats, error)
	// LastCheck is when check last passed on this file.
	LastCheck(ctx context.Context, check string) (time.Time, error)
}

var _ inspector = (*store.Store)(nil)

// candleCount is the last candle count of the database in use, shared by
// the requests of candles.api.database (see countEvery).
type candleCount struct {
	mu sync.Mutex
	// st is the store counted: a Pause's resume brings another file,
	// whose count is not this one.
	st            Store
	candles       int64
	schemaVersion int
	at            time.Time // zero: never counted
}

// handleDatabase answers candles.api.database with the DatabaseHealth of
// the database file: an empty body or {} asks for it, anything else gets
// error 400. Each request runs quick_check on a read connection, so writes
// go on. A damaged file still answers, with Damaged set and the problems
// quick_check found: the monitor must see the damage, not silence. A
// quick_check that finds damage marks the database damaged exactly as the
// periodic check does.
func (w *Writer) handleDatabase(ctx context.Context, req micro.Request) {
	if err := decodeDatabaseRequest(req.Data()); err != nil {
		w.respondError(req, "400", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(ctx, databaseTimeout)
	defer cancel()
	st, release, err := w.inspectStore()
	if err != nil {
		w.respondError(req, "503", err.Error())
		return
	}
	h, err := w.databaseHealth(ctx, st)
	release()
	if err != nil {
		w.log.Error("database health", "database", w.dbPath(), "err", err)
		w.respondError(req, "500", "database: "+err.Error())
		return
	}
	if err := req.RespondJSON(h); err != nil {
		w.log.Warn("respond to database request", "err", err)
	}
}

// decodeDatabaseRequest accepts an empty body or {}: the endpoint takes no
// parameters, and anything else is more likely a request meant for another
// subject than one to ignore.
func decodeDatabaseRequest(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return fmt.Errorf("request: want an empty body or {} (%s takes no parameters), not %q", candles.SubjectAPIDatabase, truncate(string(data), 40))
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, strconv.Quote(k))
	}
	if len(names) > 0 {
		sort.Strings(names)
		return fmt.Errorf("%s: unknown field (%s takes no parameters; send an empty body or {})", names[0], candles.SubjectAPIDatabase)
	}
	return nil
}

// inspectStore hands the database health handler the database in use, or
// ErrPaused while a restore swaps it; release must follow a nil error.
// Unlike useStore it hands out a damaged database too: reporting the
// damage is what the handler is for, and it only reads.
func (w *Writer) inspectStore() (st Store, release func(), err error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.pending != nil {
		return nil, nil, ErrPaused
	}
	w.p.users.Add(1)
	return w.p.st, w.p.users.Done, nil
}

// databaseHealth measures the database st. An error means the state of
// the file cannot be told (quick_check could not run, the file cannot be
// read for another reason than damage); damage is an answer, not an error:
// on a damaged file the figures that can still be read are reported and
// the others left at their last known value or zero.
func (w *Writer) databaseHealth(ctx context.Context, st Store) (candles.DatabaseHealth, error) {
	in, ok := st.(inspector)
	if !ok {
		return candles.DatabaseHealth{}, errors.New("this writer's database does not report its state")
	}
	path := w.dbPath()
	h := candles.DatabaseHealth{V: candles.Version, Database: path, Holder: w.holder}

	h.QuickCheck.At = w.o.Now().UTC()
	began := time.Now()
	err := in.Verify(ctx, "quick_check")
	h.QuickCheck.Seconds = time.Since(began).Seconds()
	var cf *store.CheckFailedError
	switch {
	case err == nil:
		h.QuickCheck.OK = true
	case errors.As(err, &cf):
		h.QuickCheck.Problems = cf.Problems
		w.markDamaged("quick_check", err)
	default:
		return candles.DatabaseHealth{}, fmt.Errorf("quick_check of %s could not run: %w", path, err)
	}

	// The file sizes are read on every request: os.Stat is cheap and the
	// WAL's size moves with every checkpoint.
	fi, err := os.Stat(in.Path())
	if err != nil {
		return candles.DatabaseHealth{}, fmt.Errorf("size of %s: %w", path, err)
	}
	h.FileBytes = fi.Size()
	switch fi, err := os.Stat(in.Path() + "-wal"); {
	case err == nil:
		h.WALBytes = fi.Size()
	case !errors.Is(err, os.ErrNotExist):
		return candles.DatabaseHealth{}, fmt.Errorf("size of %s-wal: %w", path, err)
	}
	dir := filepath.Dir(in.Path())
	h.DiskFreeBytes, h.DiskSizeBytes = diskspace.Free(dir), diskspace.Size(dir)

	// tolerate decides a read that failed: on a damaged file it is
	// expected and the figure is left out; otherwise it is the answer.
	tolerate := func(what string, err error) error {
		if err == nil {
			return nil
		}
		w.noteErr(err)
		if w.damaged() != nil {
			w.log.Debug("database health: figure left out of a damaged database", "figure", what, "err", err)
			return nil
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	n, version, err := w.countCandles(ctx, st, in)
	if err := tolerate("count candles", err); err != nil {
		return candles.DatabaseHealth{}, err
	}
	h.Candles, h.SchemaVersion = n, version
	at, err := in.LastCheck(ctx, "integrity_check")
	if err := tolerate("last integrity_check", err); err != nil {
		return candles.DatabaseHealth{}, err
	}
	h.IntegrityCheckAt = at.UTC()
	runs, err := st.RunProgress(ctx)
	if err := tolerate("runs in progress", err); err != nil {
		return candles.DatabaseHealth{}, err
	}
	for _, r := range runs {
		h.Runs = append(h.Runs, candles.RunProgress{RunID: r.RunID, PairsTotal: r.PairsTotal, PairsDone: r.PairsDone,
			Candles: r.Candles, StartedAt: r.StartedAt.UTC(), Deadline: r.Deadline})
	}
	h.Damaged = w.damaged()
	h.At = w.o.Now().UTC()
	return h, nil
}

// countCandles returns the candle count and schema version of st, counted
// at most every countEvery (see countEvery); on an error the last count of
// st, if any, comes with it.
func (w *Writer) countCandles(ctx context.Context, st Store, in inspector) (int64, int, error) {
	c := &w.count
	c.mu.Lock()
	defer c.mu.Unlock()
	now := w.o.Now()
	if c.st == st && !c.at.IsZero() && now.Sub(c.at) < countEvery && !now.Before(c.at) {
		return c.candles, c.schemaVersion, nil
	}
	stats, err := in.Stats(ctx)
	if err != nil {
		if c.st != st {
			return 0, 0, err
		}
		return c.candles, c.schemaVersion, err
	}
	c.st, c.candles, c.schemaVersion, c.at = st, stats.Candles, stats.SchemaVersion, now
	return c.candles, c.schemaVersion, nil
}

// holderID is who answers candles.api.database: the lease holder's id when
// the writer runs under the lease (Options.Active), else host-pid.
func holderID(active *candles.WriterActive) string {
	if active != nil && active.Holder != "" {
		return active.Holder
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}
