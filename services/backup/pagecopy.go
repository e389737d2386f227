package backup

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"modernc.org/sqlite"

	"github.com/candlekeep/candlekeep/pkg/store"
)

// SnapshotMethod says how a snapshot copies the live database.
type SnapshotMethod string

// The snapshot methods (Options.SnapshotMethod; docs/backup.md compares
// them).
const (
	// SnapshotBackupAPI copies the database's pages with SQLite's online
	// backup API in one step: one read transaction, pages copied as they
	// are, no b-tree rebuilt. The default: on a 2-core machine it costs the
	// writer far less than VACUUM INTO (BenchmarkBackupSnapshot).
	SnapshotBackupAPI SnapshotMethod = "backup-api"
	// SnapshotVacuumInto writes a compacted copy with VACUUM INTO: every
	// table and index is rebuilt, which costs CPU the writer needs.
	SnapshotVacuumInto SnapshotMethod = "vacuum-into"
)

// snapshotTo copies the live database at src to dst (0600, synced, made
// visible by a rename only when complete) by method.
func snapshotTo(ctx context.Context, method SnapshotMethod, src, dst string) error {
	switch method {
	case SnapshotVacuumInto:
		live, err := store.OpenReadOnly(ctx, src)
		if err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		defer live.Close()
		return live.Snapshot(ctx, dst)
	case SnapshotBackupAPI, "":
		return pageCopy(ctx, src, dst)
	default:
		return fmt.Errorf("unknown snapshot method %q", method)
	}
}

// pageCopier is the modernc.org/sqlite connection's online backup.
type pageCopier interface {
	NewBackup(dstURI string) (*sqlite.Backup, error)
}

// pageCopy copies src to dst with the online backup API. All pages go in
// one step: the step holds one read transaction on src, so the copy is the
// database as of one commit, and the writer keeps committing to the WAL
// meanwhile. (Copying in several steps would let other connections write
// between them, and SQLite restarts such a backup from the first page: with
// a writer that commits all the time it might never finish.) The step
// cannot be interrupted; ctx is checked before it.
func pageCopy(ctx context.Context, src, dst string) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot to %s: %w", dst, os.ErrExist)
	}
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	q := url.Values{"_pragma": {"query_only(1)", fmt.Sprintf("busy_timeout(%d)", store.DefaultBusyTimeout.Milliseconds())}}
	db, err := sql.Open("sqlite", src+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer conn.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*") // 0600
	if err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer func() {
		if err != nil {
			removeDB(tmpPath)
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	err = conn.Raw(func(dc any) error {
		pc, ok := dc.(pageCopier)
		if !ok {
			return errors.New("the SQLite driver has no online backup")
		}
		bk, err := pc.NewBackup(tmpPath)
		if err != nil {
			return err
		}
		_, stepErr := bk.Step(-1)
		return errors.Join(stepErr, bk.Finish())
	})
	if err != nil {
		return fmt.Errorf("snapshot %s to %s: %w", src, dst, err)
	}
	f, err := os.OpenFile(tmpPath, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	if err := os.Chmod(tmpPath, store.FileMode); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	if err := os.Rename(tmpPath, dst); err != nil {
		return fmt.Errorf("snapshot to %s: %w", dst, err)
	}
	return nil
}
