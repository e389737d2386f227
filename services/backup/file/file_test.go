package file_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/backuptest"
	"github.com/candlekeep/candlekeep/services/backup/file"
)

func TestTierSuite(t *testing.T) {
	backuptest.RunTierSuite(t, func(t *testing.T) backup.Tier {
		tier, err := file.New("hot", filepath.Join(t.TempDir(), "hot"))
		if err != nil {
			t.Fatal(err)
		}
		return tier
	})
}

func TestModes(t *testing.T) {
	// An existing directory with a loose mode is narrowed as well.
	for _, existing := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "backups", "hot")
		if existing {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		tier, err := file.New("hot", dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := tier.Put(context.Background(), "obj", strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != file.DirMode {
			t.Errorf("existing=%v: dir mode %v (%v), want %v", existing, fi.Mode().Perm(), err, file.DirMode)
		}
		if fi, err := os.Stat(filepath.Join(dir, "obj")); err != nil || fi.Mode().Perm() != file.FileMode {
			t.Errorf("existing=%v: file mode %v (%v), want %v", existing, fi.Mode().Perm(), err, file.FileMode)
		}
	}
}

func TestPutShortReaderLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	tier, err := file.New("warm", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := tier.Put(context.Background(), "obj", strings.NewReader("abc"), 10); err == nil {
		t.Fatal("Put of 3 bytes announced as 10 succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("directory holds %v after a failed Put, want nothing", entries)
	}
}

func TestMustExistRefusesAMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt", "second-disk")
	tier, err := file.New("warm", dir, file.MustExist())
	if err != nil {
		t.Fatal(err)
	}
	err = tier.Put(context.Background(), "obj", strings.NewReader("data"), 4)
	if err == nil || !strings.Contains(err.Error(), "is its disk mounted?") {
		t.Fatalf("Put into a missing directory: %v, want a refusal asking about the disk", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the missing directory was created (%v)", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tier.Put(context.Background(), "obj", strings.NewReader("data"), 4); err != nil {
		t.Fatalf("Put once the directory is there: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != file.DirMode {
		t.Fatalf("dir mode %v (%v), want %v", fi.Mode().Perm(), err, file.DirMode)
	}
}
