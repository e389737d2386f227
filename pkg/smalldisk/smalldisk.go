// Package smalldisk gives tests a small filesystem they can fill and free,
// to see how the services behave when a disk runs full.
package smalldisk

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/diskspace"
)

// Mount returns a fresh directory on a filesystem of size bytes, unmounted
// when the test ends: a tmpfs mount, else an ext4 image on a loop device.
// Both need root (the development machines and CI run as root); where
// neither works the test is skipped, naming why.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	var tried []string
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err == nil {
		t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
		return dir
	}
	tried = append(tried, fmt.Sprintf("mount -t tmpfs: %v %s", err, strings.TrimSpace(string(out))))
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(size)
		f.Close()
	}
	if err == nil {
		if out, err = exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err == nil {
			if out, err = exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err == nil {
				t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
				return dir
			}
		}
	}
	tried = append(tried, fmt.Sprintf("loop device: %v %s", err, strings.TrimSpace(string(out))))
	t.Skipf("this test needs a small filesystem it can fill, and this machine allows none (needs root): %s", strings.Join(tried, "; "))
	return ""
}

// Fill writes the file path until only leave bytes are free on its
// filesystem (0: until a write fails for lack of space).
func Fill(t testing.TB, path string, leave uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	for {
		free := diskspace.Free(filepath.Dir(path))
		if leave > 0 && free <= leave {
			return
		}
		n := uint64(len(buf))
		if leave > 0 {
			n = min(n, free-leave)
		} else if free < n {
			n = max(free, 512)
		}
		if _, err := f.Write(buf[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}
