package backup

import (
	"log/slog"
	"syscall"
)

// lowerPriority makes the calling OS thread (locked by the caller, and
// never unlocked, so the thread ends with its goroutine) the last in line
// for the CPU (nice 19) and, where the I/O scheduler honours it, for the
// disk (best effort, lowest level): a backup reads and writes the whole
// database, and the writer must keep its pace meanwhile. Linux keeps both
// per thread.
func lowerPriority(log *slog.Logger) {
	tid := syscall.Gettid()
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, 19); err != nil {
		log.Debug("cannot lower the backup thread's CPU priority", "err", err)
	}
	const (
		ioprioWhoProcess = 1
		ioprioClassBE    = 2
		ioprioClassShift = 13
	)
	if _, _, errno := syscall.Syscall(syscall.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), ioprioClassBE<<ioprioClassShift|7); errno != 0 {
		log.Debug("cannot lower the backup thread's I/O priority", "err", errno)
	}
}
