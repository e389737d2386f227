// Package lockfile gives one process at a time a directory: an exclusive
// flock(2) on <dir>/LOCK, with the holder's pid, host, command and start
// time written into the file so that a refused process can name the holder.
//
// The kernel releases a flock when the last descriptor of the holder's
// open file goes away, which includes the process dying by kill -9, OOM or
// a crash. So there is no such thing as a stale lock here and no clean-up
// to do: a LOCK file left behind by a dead process is simply locked again.
// The file is never removed, because removing it would let a second
// process lock a new file of the same name while the first still holds the
// old one.
package lockfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Name is the lock file's name inside the directory it guards.
const Name = "LOCK"

// Holder says who holds a lock.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// String reads like "pid 4242 on host db1 (candlekeep up), since 2024-…".
func (h Holder) String() string {
	if h.PID == 0 {
		return "another process (it has not written its details yet)"
	}
	return fmt.Sprintf("pid %d on host %s (%s), since %s", h.PID, h.Host, h.Command, h.Since.UTC().Format(time.RFC3339))
}

// Self describes the calling process, started now, running command.
func Self(command string, now time.Time) Holder {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return Holder{PID: os.Getpid(), Host: host, Command: command, Since: now.UTC()}
}

// HeldError is returned when another process holds the lock.
type HeldError struct {
	Path   string
	Holder Holder
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is locked by %s", e.Path, e.Holder)
}

// Lock is a held lock. Release it when done; the process exiting releases
// it too.
type Lock struct {
	f *os.File
}

// Acquire locks dir (creating it 0700 if needed) for holder, or returns a
// *HeldError naming the process that holds it. It never waits.
func Acquire(dir string, holder Holder) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	path := filepath.Join(dir, Name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Path: path, Holder: readHolder(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	data, err := json.Marshal(holder)
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
	}
	if err != nil {
		f.Close() // releases the flock
		return nil, fmt.Errorf("lock %s: write holder: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Wait is Acquire that, while another process holds the lock, calls
// waiting once with that error and tries again every poll until it gets
// the lock or ctx ends. A writer taking over from one that is dying on the
// same host waits here for the kernel to release the old lock.
func Wait(ctx context.Context, dir string, holder Holder, poll time.Duration, waiting func(*HeldError)) (*Lock, error) {
	told := false
	for {
		l, err := Acquire(dir, holder)
		var held *HeldError
		if !errors.As(err, &held) {
			return l, err
		}
		if !told && waiting != nil {
			waiting(held)
			told = true
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up waiting: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// Release empties the file (so it names no one) and drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := l.f.Close() // closing the only descriptor drops the flock
	l.f = nil
	return err
}

// readHolder reads what the holder wrote; a zero Holder when it has not
// written yet or wrote something else.
func readHolder(path string) Holder {
	var h Holder
	data, err := os.ReadFile(path)
	if err != nil {
		return h
	}
	_ = json.Unmarshal([]byte(strings.TrimSpace(string(data))), &h)
	return h
}
