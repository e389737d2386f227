package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// WALSizeLimit is the journal_size_limit of the write connection: whenever
// SQLite starts the WAL over (every frame checkpointed, no reader in it), it
// cuts the -wal file down to this size, so a WAL that grew behind a long
// reader does not keep its peak size for ever.
const WALSizeLimit = 4 << 20

// truncateBusyTimeout is how long a TRUNCATE checkpoint waits for readers
// to leave the WAL. It holds the write lock meanwhile, so it must be short:
// a reader still there means "try again later", not "wait".
const truncateBusyTimeout = 50 * time.Millisecond

// WALState is what one CheckpointWAL did.
type WALState struct {
	// Frames is the number of frames in the WAL after the PASSIVE
	// checkpoint, Checkpointed how many of them are copied into the
	// database file. Frames > Checkpointed means a reader pins the rest.
	Frames, Checkpointed int
	// Truncated is true when the WAL was also reset to zero bytes.
	Truncated bool
	// Bytes is the size of the -wal file afterwards.
	Bytes int64
}

// CheckpointWAL copies what it can of the WAL into the database file without
// waiting for anyone (PASSIVE: frames a reader still needs stay), and, when
// that left nothing behind, resets the WAL to zero bytes (TRUNCATE) unless a
// reader is still inside it. It runs on the write connection, so call it
// between write transactions; it holds the writer up for at most a few
// milliseconds plus truncateBusyTimeout.
func (s *Store) CheckpointWAL(ctx context.Context) (WALState, error) {
	var st WALState
	if s.w == nil {
		return st, fmt.Errorf("checkpoint %s: %w", s.path, ErrReadOnly)
	}
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: %w", s.path, err)
	}
	defer conn.Close()
	var busy int
	if err := conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &st.Frames, &st.Checkpointed); err != nil {
		return st, fmt.Errorf("checkpoint %s: %w", s.path, err)
	}
	if st.Bytes, err = s.WALBytes(); err != nil {
		return st, err
	}
	// An empty WAL has nothing to reset; skipping it spares the write lock.
	if st.Checkpointed >= st.Frames && (st.Frames > 0 || st.Bytes > 0) {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, truncateBusyTimeout.Milliseconds())); err != nil {
			return st, fmt.Errorf("checkpoint %s: %w", s.path, err)
		}
		var frames, done int
		terr := conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &frames, &done)
		// Restore the writer's patience whatever happened.
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf(`PRAGMA busy_timeout = %d`, s.busy.Milliseconds())); err != nil {
			return st, fmt.Errorf("checkpoint %s: restore busy_timeout: %w", s.path, err)
		}
		if terr != nil {
			return st, fmt.Errorf("checkpoint %s: %w", s.path, terr)
		}
		st.Truncated = busy == 0
	}
	if st.Bytes, err = s.WALBytes(); err != nil {
		return st, err
	}
	return st, nil
}

// WALBytes is the size of the database's -wal file (0 when there is none).
func (s *Store) WALBytes() (int64, error) {
	fi, err := os.Stat(s.path + "-wal")
	switch {
	case err == nil:
		return fi.Size(), nil
	case errors.Is(err, os.ErrNotExist):
		return 0, nil
	default:
		return 0, fmt.Errorf("size of %s-wal: %w", s.path, err)
	}
}
