// Package diskspace tells how much room a filesystem has left and whether an
// error means it has none, for the services that report disk.full and
// disk.recovered.
package diskspace

import (
	"errors"
	"strings"
	"syscall"
)

// Free returns the bytes an unprivileged writer can still use on the
// filesystem holding path; 0 when it cannot be read.
func Free(path string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0
	}
	return st.Bavail * uint64(st.Bsize)
}

// Size returns the total bytes of the filesystem holding path; 0 when it
// cannot be read. With Free it tells how full the filesystem is.
func Size(path string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0
	}
	return st.Blocks * uint64(st.Bsize)
}

// IsFull reports whether err is a write that failed for lack of space: the
// ENOSPC of the operating system, or the way SQLite (SQLITE_FULL) and
// nats-server word it.
func IsFull(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "database or disk is full") || strings.Contains(msg, "no space left") ||
		strings.Contains(msg, "SQLITE_FULL")
}
