package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// What the monitor and the backup service need from the database file,
// without reaching into the writer: a read-only view, the SQLite checks, a
// consistent online copy and the figures of the file.

// ErrReadOnly is returned by every write on a store opened with OpenReadOnly.
var ErrReadOnly = errors.New("database opened read-only")

// ErrNotCandlekeep is returned by OpenReadOnly for a file that SQLite can
// read but that no candlekeep ever migrated (no schema_migrations table).
var ErrNotCandlekeep = errors.New("not a candlekeep database")

// OpenReadOnly opens the existing database at path for reading only: every
// connection is query_only, no migration runs and the file's mode is left
// alone. A missing file is an error (wrapping os.ErrNotExist), never a new
// empty database. The writer may keep writing meanwhile: WAL readers see
// the last commit and never block it. Write methods return ErrReadOnly.
func OpenReadOnly(ctx context.Context, path string, opts ...Option) (*Store, error) {
	if path == "" || strings.ContainsAny(path, "?#") || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("sqlite: %q is not a plain file path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("sqlite %s: not a regular file", path)
	}
	s := &Store{now: time.Now, busy: DefaultBusyTimeout, path: path}
	for _, o := range opts {
		o(s)
	}
	q := url.Values{"_pragma": {
		// query_only first, so nothing after it can write.
		"query_only(1)",
		fmt.Sprintf("busy_timeout(%d)", s.busy.Milliseconds()),
	}}
	if s.r, err = sql.Open("sqlite", path+"?"+q.Encode()); err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	s.r.SetMaxOpenConns(maxReaders)
	s.r.SetMaxIdleConns(maxReaders)
	if _, err := s.schemaVersion(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return s, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// schemaVersion reads the schema version the file was migrated to.
func (s *Store) schemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return 0, fmt.Errorf("%w (no schema_migrations table): check the path", ErrNotCandlekeep)
		}
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// QuickCheck runs PRAGMA quick_check (O(N), skips the index-vs-table
// comparison) on a read connection and returns the problems SQLite found;
// none means the file is sound. The error is for a check that could not run.
func (s *Store) QuickCheck(ctx context.Context) ([]string, error) {
	return s.check(ctx, "quick_check")
}

// IntegrityCheck runs PRAGMA integrity_check (the full check, slower on a
// large file) on a read connection and returns the problems found (at most
// SQLite's default of 100); none means the file is sound.
func (s *Store) IntegrityCheck(ctx context.Context) ([]string, error) {
	return s.check(ctx, "integrity_check")
}

func (s *Store) check(ctx context.Context, pragma string) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, "PRAGMA "+pragma)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", pragma, s.path, err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return nil, fmt.Errorf("%s %s: %w", pragma, s.path, err)
		}
		// SQLite may put several problems in one row, one a line, after a
		// header naming the schema.
		for _, p := range strings.Split(line, "\n") {
			if p != "ok" && p != "" && !strings.HasPrefix(p, "*** in database ") {
				problems = append(problems, p)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", pragma, s.path, err)
	}
	return problems, nil
}

// Snapshot writes a consistent copy of the database to dst (mode 0600) while
// the writer goes on: VACUUM INTO runs in one read transaction, which in WAL
// mode never blocks a writer, and produces a compact file holding exactly
// the last commit before it started. The copy is written to a temporary file
// beside dst, synced and renamed, so dst is either absent or complete. An
// existing dst is refused rather than overwritten.
func (s *Store) Snapshot(ctx context.Context, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot to %s: %w", dst, os.ErrExist)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	// CreateTemp makes the file 0600; VACUUM INTO accepts an empty file.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	tmpPath := tmp.Name()
	done := false
	defer func() {
		if !done {
			os.Remove(tmpPath)
		}
	}()
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	if err := s.vacuumInto(ctx, tmpPath); err != nil {
		return fmt.Errorf("snapshot %s to %s: %w", s.path, dst, err)
	}
	if err := syncFile(tmpPath); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	if err := os.Chmod(tmpPath, FileMode); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	if err := os.Rename(tmpPath, dst); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	done = true
	// The rename is durable once the directory is synced.
	if err := syncFile(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("snapshot to %s: sync directory: %w", dst, err)
	}
	return nil
}

// vacuumInto runs VACUUM INTO on a connection of its own: SQLite refuses it
// on a query_only connection (the read pool), and on the write connection it
// would hold up the writer for the whole copy. It only reads the database.
func (s *Store) vacuumInto(ctx context.Context, dst string) error {
	q := url.Values{"_pragma": {fmt.Sprintf("busy_timeout(%d)", s.busy.Milliseconds())}}
	db, err := sql.Open("sqlite", s.path+"?"+q.Encode())
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, dst); err != nil {
		return err
	}
	return db.Close()
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Stats are the figures of a database file that health checks and metrics
// report.
type Stats struct {
	// FileBytes is the size of the database file, WALBytes of its -wal
	// file (0 when there is none): together, the disk the database takes.
	FileBytes, WALBytes int64
	// Candles is the number of rows in the candles table.
	Candles int64
	// SchemaVersion is the migration the file is at.
	SchemaVersion int
}

// Stats reports the file sizes, the candle count and the schema version.
// Counting reads the whole primary key, so it takes about a second per few
// tens of millions of candles; it runs on a read connection and does not
// block the writer.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	fi, err := os.Stat(s.path)
	if err != nil {
		return st, fmt.Errorf("stats of %s: %w", s.path, err)
	}
	st.FileBytes = fi.Size()
	switch fi, err := os.Stat(s.path + "-wal"); {
	case err == nil:
		st.WALBytes = fi.Size()
	case !errors.Is(err, os.ErrNotExist):
		return st, fmt.Errorf("stats of %s: %w", s.path, err)
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM candles`).Scan(&st.Candles); err != nil {
		return st, fmt.Errorf("count candles in %s: %w", s.path, err)
	}
	if st.SchemaVersion, err = s.schemaVersion(ctx); err != nil {
		return st, fmt.Errorf("stats of %s: %w", s.path, err)
	}
	return st, nil
}
