package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// metaSource is the meta row holding the exchange base URL the database was
// filled from.
const metaSource = "source"

// SourceMismatchError is returned by BindSource when the database was
// filled from another exchange URL than the one configured: mixing the
// candles of two sources (the real exchange and the simulator, say) in
// one table would make both wrong.
type SourceMismatchError struct {
	// Recorded is the URL the database is bound to, Configured the one
	// this process was started with.
	Recorded, Configured string
}

func (e *SourceMismatchError) Error() string {
	return fmt.Sprintf("the database holds candles from %s, but this process is configured for %s; "+
		"use another --data-dir for %s, or start with --rebind-source to bind this database to %s from now on "+
		"(the candles already stored stay as they are)", e.Recorded, e.Configured, e.Configured, e.Configured)
}

// CanonicalSource is the form of an exchange base URL the database records:
// scheme and host in lower case, no user info (it may hold credentials), no
// query or fragment, no trailing slash. It fails for anything that is not
// an absolute http(s) URL.
func CanonicalSource(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("exchange URL: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("exchange URL %q: want http(s)://host[:port][/path]", redact(u))
	}
	u.Host = strings.ToLower(u.Host)
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u.String(), nil
}

func redact(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// Source is the exchange URL the database is bound to ("" when none yet).
func (s *Store) Source(ctx context.Context) (string, error) {
	var v string
	err := s.r.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaSource).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read source: %w", err)
	}
	return v, nil
}

// Binding is what BindSource did.
type Binding int

// The outcomes of BindSource.
const (
	// BoundAlready: the database was bound to this source.
	BoundAlready Binding = iota
	// BoundNew: the database had no source yet (empty, or filled before
	// sources were recorded) and is now bound to this one.
	BoundNew
	// Rebound: the database was bound to another source and, as asked,
	// is now bound to this one.
	Rebound
)

// BindSource binds the database to the exchange base URL source
// (canonicalised with CanonicalSource). A database bound to another URL is
// refused with a *SourceMismatchError unless rebind is set, in which case
// the new URL replaces the old one; previous is the URL it was bound to.
// A database with no recorded source takes this one, since there is
// nothing to compare with.
func (s *Store) BindSource(ctx context.Context, source string, rebind bool) (b Binding, previous string, err error) {
	canon, err := CanonicalSource(source)
	if err != nil {
		return 0, "", err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, "", fmt.Errorf("bind source: %w", err)
	}
	defer tx.Rollback()
	err = tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaSource).Scan(&previous)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		b = BoundNew
	case err != nil:
		return 0, "", fmt.Errorf("bind source: %w", err)
	case previous == canon:
		return BoundAlready, previous, nil
	case !rebind:
		return 0, previous, &SourceMismatchError{Recorded: previous, Configured: canon}
	default:
		b = Rebound
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		metaSource, canon, formatTime(s.now())); err != nil {
		return 0, previous, fmt.Errorf("bind source: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, previous, fmt.Errorf("bind source: commit: %w", err)
	}
	return b, previous, nil
}
