package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// metaFullAudit is the meta row that says a gap audit over the full range
// of every pair is due, and since when (see StreamBinding.Replaced).
const metaFullAudit = "full_audit_due"

// StreamBinding is what BindStream found.
type StreamBinding struct {
	// Replaced: the database's watermark counted in another stream of the
	// same name (deleted and created again, or a wiped server store). The
	// watermark is now 0, the new identity recorded and a full audit due.
	Replaced bool
	// Adopted: the database had no identity for the stream yet (a new
	// database, or one written before identities were recorded) and took
	// this one, keeping its watermark.
	Adopted bool
	// Previous is the identity recorded before ("" when none).
	Previous string
	// OldWatermark is the watermark before the call.
	OldWatermark uint64
}

// BindStream ties the watermark of stream to the stream's identity (its
// creation time, which survives restarts and changes when the stream is
// created again). When the database's watermark belongs to another
// identity, the sequence numbers it counts are meaningless in this stream:
// in one transaction the watermark is reset to 0 (the stream is read from
// its start), the new identity recorded and a full audit marked due, since
// batches of the old stream the database never applied are gone.
func (s *Store) BindStream(ctx context.Context, stream, identity string) (StreamBinding, error) {
	if identity == "" {
		return StreamBinding{}, fmt.Errorf("bind stream %s: empty identity", stream)
	}
	var b StreamBinding
	err := s.inTx(ctx, "bind stream "+stream, func(tx *sql.Tx) error {
		b = StreamBinding{}
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT last_seq, identity FROM stream_state WHERE stream = ?`, stream).Scan(&seq, &b.Previous)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("read watermark of %s: %w", stream, err)
		}
		b.OldWatermark = uint64(seq)
		switch b.Previous {
		case identity:
			return nil
		case "":
			b.Adopted = true
		default:
			b.Replaced = true
			seq = 0
			if err := setMeta(ctx, tx, metaFullAudit, formatTime(s.now())); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO stream_state (stream, last_seq, identity) VALUES (?, ?, ?)
ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq, identity = excluded.identity`, stream, seq, identity)
		if err != nil {
			return fmt.Errorf("record identity of %s: %w", stream, err)
		}
		return nil
	})
	return b, err
}

// StreamIdentity is the identity recorded with the watermark of stream
// ("" when none).
func (s *Store) StreamIdentity(ctx context.Context, stream string) (string, error) {
	var id string
	err := s.r.QueryRowContext(ctx, `SELECT identity FROM stream_state WHERE stream = ?`, stream).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read identity of %s: %w", stream, err)
	}
	return id, nil
}

// FullAuditDue reports since when a full gap audit is due (zero: none).
func (s *Store) FullAuditDue(ctx context.Context) (time.Time, error) {
	var v string
	err := s.r.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaFullAudit).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read full audit flag: %w", err)
	}
	return parseTime(v)
}

// ClearFullAudit clears the full audit flag once run runID has done the
// audit, and reports whether it did: the run started after the flag was set
// (a run planned before the replacement measured the old state) and every
// pair the database has applied a batch for is an ok pair of the run (each
// was measured against its full expected range and synced to the present).
// Otherwise the flag stays for a later run.
func (s *Store) ClearFullAudit(ctx context.Context, runID string) (bool, error) {
	var cleared bool
	err := s.inTx(ctx, "clear full audit flag", func(tx *sql.Tx) error {
		cleared = false
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaFullAudit).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		since, err := parseTime(v)
		if err != nil {
			return err
		}
		var started string
		err = tx.QueryRowContext(ctx, `SELECT started_at FROM runs WHERE run_id = ?`, runID).Scan(&started)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read run %s: %w", runID, err)
		}
		startedAt, err := parseTime(started)
		if err != nil {
			return err
		}
		if !since.Before(startedAt) {
			return nil
		}
		var left int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM pair_range r WHERE NOT EXISTS (
  SELECT 1 FROM run_pairs p WHERE p.run_id = ? AND p.symbol = r.symbol AND p.interval = r.interval AND p.status = 'ok')`,
			runID).Scan(&left); err != nil {
			return fmt.Errorf("pairs not audited by run %s: %w", runID, err)
		}
		if left > 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM meta WHERE key = ?`, metaFullAudit)
		cleared = err == nil
		return err
	})
	return cleared, err
}

func setMeta(ctx context.Context, tx *sql.Tx, key, value string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, key, value, value)
	if err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}
