package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"modernc.org/sqlite"
)

// SQLite's primary result codes for a damaged file (sqlite3.h): the low
// byte of an extended code.
const (
	sqliteCorrupt = 11 // SQLITE_CORRUPT: "database disk image is malformed"
	sqliteNotADB  = 26 // SQLITE_NOTADB: "file is not a database"
)

// ErrCorrupt marks an error that means the database file is damaged: a
// query or write hit a malformed page, or a check found problems. Retrying
// cannot help; the file must be replaced (docs/operations.md, "The database
// is corrupt").
var ErrCorrupt = errors.New("database disk image is malformed")

// IsCorrupt reports whether err says the database file is damaged
// (SQLITE_CORRUPT or SQLITE_NOTADB anywhere in its chain, or ErrCorrupt),
// as opposed to temporary trouble such as a busy lock or a full disk.
func IsCorrupt(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrCorrupt) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqliteCorrupt, sqliteNotADB:
			return true
		}
	}
	// The driver sometimes flattens the code into the message (a row
	// iterator's error, a failed prepare).
	msg := err.Error()
	return strings.Contains(msg, "database disk image is malformed") || strings.Contains(msg, "file is not a database")
}

// CheckFailedError is a check (PRAGMA quick_check or integrity_check) that
// ran and found problems.
type CheckFailedError struct {
	// Path is the database file.
	Path string
	// Check is "quick_check" or "integrity_check".
	Check string
	// Problems are SQLite's findings, at most maxProblems of them.
	Problems []string
}

// maxProblems is how many findings a CheckFailedError keeps: the first few
// say where the damage is; SQLite's full list can be long.
const maxProblems = 10

// Error names the file, the check and the first finding.
func (e *CheckFailedError) Error() string {
	first := ""
	if len(e.Problems) > 0 {
		first = ": " + e.Problems[0]
	}
	return fmt.Sprintf("%s of %s found %d problem(s)%s", e.Check, e.Path, len(e.Problems), first)
}

// Unwrap makes a failed check an ErrCorrupt.
func (e *CheckFailedError) Unwrap() error { return ErrCorrupt }

// Verify runs check ("quick_check" or "integrity_check") on a read
// connection and turns its findings into a *CheckFailedError. A check that
// could not finish because the file is too damaged to read is a
// *CheckFailedError as well; any other trouble running it is returned as
// is (the file's state is then unknown, not bad).
func (s *Store) Verify(ctx context.Context, check string) error {
	var problems []string
	var err error
	switch check {
	case "quick_check":
		problems, err = s.QuickCheck(ctx)
	case "integrity_check":
		problems, err = s.IntegrityCheck(ctx)
	default:
		return fmt.Errorf("verify %s: unknown check %q (quick_check or integrity_check)", s.path, check)
	}
	if err != nil {
		if IsCorrupt(err) {
			return &CheckFailedError{Path: s.path, Check: check, Problems: []string{err.Error()}}
		}
		return err
	}
	if len(problems) == 0 {
		return nil
	}
	if len(problems) > maxProblems {
		problems = problems[:maxProblems]
	}
	return &CheckFailedError{Path: s.path, Check: check, Problems: problems}
}

// metaChecked prefixes the meta rows that record when a check last passed.
const metaChecked = "checked:"

// LastCheck is when check last passed on this file (RecordCheck), or the
// zero time if it never did: so a daily integrity_check stays daily across
// restarts of the writer.
func (s *Store) LastCheck(ctx context.Context, check string) (time.Time, error) {
	var v string
	err := s.r.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaChecked+check).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read last %s of %s: %w", check, s.path, err)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, nil // unreadable: as if never checked
	}
	return t, nil
}

// RecordCheck records that check passed at.
func (s *Store) RecordCheck(ctx context.Context, check string, at time.Time) error {
	return s.inTx(ctx, "record "+check, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
			metaChecked+check, at.UTC().Format(time.RFC3339Nano), formatTime(s.now()))
		return err
	})
}
