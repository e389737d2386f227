package backup

import (
	"context"
	"errors"
	"io"
	"time"
)

// Tier is where copies are kept: a flat namespace of objects, each written
// at once or not at all. The backup service writes through it, and restore
// reads through it. Implementations: file.Tier (a directory) and s3.Tier (a
// bucket and prefix).
type Tier interface {
	// Name is the tier's role: "hot", "warm" or "cold".
	Name() string
	// Location says where the objects are, for people (a directory, or
	// s3://bucket/prefix); it never carries credentials.
	Location() string
	// Put stores size bytes of r as name, replacing any object of that name.
	// The object appears complete or not at all: a reader never sees part
	// of it.
	Put(ctx context.Context, name string, r io.Reader, size int64) error
	// Open reads the object name; ErrNotFound when there is none.
	Open(ctx context.Context, name string) (io.ReadCloser, error)
	// List returns every object, in no particular order.
	List(ctx context.Context) ([]ObjectInfo, error)
	// Delete removes the object name; deleting a missing object is no error.
	Delete(ctx context.Context, name string) error
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// ErrNotFound is returned by Tier.Open for an object that does not exist.
var ErrNotFound = errors.New("backup object not found")

// Tier names.
const (
	TierHot  = "hot"
	TierWarm = "warm"
	TierCold = "cold"
)
