package lockfile_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/lockfile"
)

// A second Acquire on a held directory is refused with the holder's
// details; after Release it succeeds.
func TestAcquireRefusesAndNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	first := lockfile.Holder{PID: 4242, Host: "db1", Command: "candlekeep up", Since: time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)}
	l, err := lockfile.Acquire(dir, first)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockfile.Acquire(dir, lockfile.Self("candlekeep writer", time.Now()))
	var held *lockfile.HeldError
	if !errors.As(err, &held) || held.Holder != first || held.Path != filepath.Join(dir, lockfile.Name) {
		t.Fatalf("second Acquire = %v, want a HeldError naming %+v", err, first)
	}
	if want := "pid 4242 on host db1 (candlekeep up), since 2024-03-01T12:00:00Z"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := lockfile.Acquire(dir, first)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	l2.Release()
}

// Wait reports the holder once and gets the lock when it is released.
func TestWaitGetsTheLockWhenReleased(t *testing.T) {
	dir := t.TempDir()
	l, err := lockfile.Acquire(dir, lockfile.Self("first", time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan *lockfile.HeldError, 10)
	got := make(chan error, 1)
	go func() {
		l2, err := lockfile.Wait(context.Background(), dir, lockfile.Self("second", time.Now()), 10*time.Millisecond,
			func(h *lockfile.HeldError) { waiting <- h })
		if err == nil {
			err = l2.Release()
		}
		got <- err
	}()
	if h := <-waiting; h.Holder.Command != "first" {
		t.Fatalf("waiting told about %+v", h.Holder)
	}
	l.Release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if len(waiting) != 0 {
		t.Fatalf("waiting called %d more times", len(waiting))
	}
	// A cancelled wait returns the holder's error.
	l, _ = lockfile.Acquire(dir, lockfile.Self("third", time.Now()))
	defer l.Release()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var held *lockfile.HeldError
	if _, err := lockfile.Wait(ctx, dir, lockfile.Self("fourth", time.Now()), time.Millisecond, nil); !errors.As(err, &held) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Wait = %v", err)
	}
}

// The kernel drops the lock of a process killed with SIGKILL: no stale lock.
func TestLockOfAKilledProcessIsFree(t *testing.T) {
	if dir := os.Getenv("LOCKFILE_TEST_HOLD"); dir != "" {
		if _, err := lockfile.Acquire(dir, lockfile.Self("holder", time.Now())); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		time.Sleep(time.Hour) // until killed
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockOfAKilledProcessIsFree$")
	cmd.Env = append(os.Environ(), "LOCKFILE_TEST_HOLD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q", line)
	}
	_, err = lockfile.Acquire(dir, lockfile.Self("test", time.Now()))
	var held *lockfile.HeldError
	if !errors.As(err, &held) || held.Holder.PID != cmd.Process.Pid {
		t.Fatalf("Acquire while the child holds it = %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := lockfile.Acquire(dir, lockfile.Self("test", time.Now()))
	if err != nil {
		t.Fatalf("Acquire after kill -9 of the holder: %v", err)
	}
	l.Release()
}
