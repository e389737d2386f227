// Package file is the backup tier in a local directory (the hot tier on the
// data volume, the warm tier on a second disk).
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/candlekeep/candlekeep/services/backup"
)

// Modes of what the tier creates: copies hold the whole database, so only
// the owner reads them.
const (
	FileMode os.FileMode = 0o600
	DirMode  os.FileMode = 0o700
)

// tmpPrefix marks an object being written; List skips such files, so what a
// crash leaves behind is never taken for a copy.
const tmpPrefix = ".tmp-"

// Tier keeps objects as files in one directory.
type Tier struct {
	name, dir string
	mustExist bool
}

var _ backup.Tier = (*Tier)(nil)

// Option changes how a Tier treats its directory.
type Option func(*Tier)

// MustExist makes Put refuse a missing directory instead of creating it:
// for a directory on another disk (the warm tier), where a missing
// directory most likely means the disk is not mounted, and creating it
// would put the "second disk" copies on the first.
func MustExist() Option { return func(t *Tier) { t.mustExist = true } }

// New returns the tier name ("hot", "warm") in dir. The directory is
// created (0700, with its parents) on the first Put unless MustExist, not
// here: a missing directory fails that tier's backups, not the service's
// start.
func New(name, dir string, opts ...Option) (*Tier, error) {
	if dir == "" {
		return nil, fmt.Errorf("%s tier: no directory", name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%s tier %s: %w", name, dir, err)
	}
	t := &Tier{name: name, dir: abs}
	for _, o := range opts {
		o(t)
	}
	return t, nil
}

// Name is the tier's role.
func (t *Tier) Name() string { return t.name }

// Location is the directory.
func (t *Tier) Location() string { return t.dir }

// Dir is the directory.
func (t *Tier) Dir() string { return t.dir }

func (t *Tier) path(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." || strings.HasPrefix(name, tmpPrefix) {
		return "", fmt.Errorf("%s tier: bad object name %q", t.name, name)
	}
	return filepath.Join(t.dir, name), nil
}

// Put writes r to a temporary file in the directory, syncs it, renames it
// to name and syncs the directory, so name is absent or complete even
// across a crash or a full disk.
func (t *Tier) Put(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	dst, err := t.path(name)
	if err != nil {
		return err
	}
	if t.mustExist {
		if fi, err := os.Stat(t.dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("%s tier: directory %s is missing or not a directory (is its disk mounted?); create it (mode 0700) to use it: %v", t.name, t.dir, err)
		}
	} else if err := os.MkdirAll(t.dir, DirMode); err != nil {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	// MkdirAll leaves an existing directory's mode alone; a backup
	// directory is the owner's only.
	if err := os.Chmod(t.dir, DirMode); err != nil {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	f, err := os.CreateTemp(t.dir, tmpPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(FileMode); err != nil {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err != nil {
		return fmt.Errorf("%s tier: write %s: %w", t.name, name, err)
	}
	if n != size {
		return fmt.Errorf("%s tier: write %s: %d bytes, want %d", t.name, name, n, size)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%s tier: sync %s: %w", t.name, name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s tier: close %s: %w", t.name, name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	if err := syncDir(t.dir); err != nil {
		return fmt.Errorf("%s tier: sync directory: %w", t.name, err)
	}
	return nil
}

// Open opens the file name.
func (t *Tier) Open(_ context.Context, name string) (io.ReadCloser, error) {
	p, err := t.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s tier: %s: %w", t.name, name, backup.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s tier: %w", t.name, err)
	}
	return f, nil
}

// List returns the files of the directory, without temporary files; a
// missing directory holds nothing.
func (t *Tier) List(_ context.Context) ([]backup.ObjectInfo, error) {
	entries, err := os.ReadDir(t.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s tier: %w", t.name, err)
	}
	var out []backup.ObjectInfo
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("%s tier: %w", t.name, err)
		}
		out = append(out, backup.ObjectInfo{Name: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out, nil
}

// Delete removes the file name.
func (t *Tier) Delete(_ context.Context, name string) error {
	p, err := t.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s tier: %w", t.name, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
