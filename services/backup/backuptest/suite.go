// Package backuptest is the one test suite every backup.Tier implementation
// runs (as Litestream's replica client suite): the same behaviour from a
// directory and from a bucket.
package backuptest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/services/backup"
)

// RunTierSuite runs the suite; newTier returns an empty tier for each case.
func RunTierSuite(t *testing.T, newTier func(t *testing.T) backup.Tier) {
	ctx := context.Background()
	t.Run("EmptyListsNothing", func(t *testing.T) {
		tier := newTier(t)
		objs, err := tier.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 0 {
			t.Fatalf("List = %v, want nothing", objs)
		}
	})
	t.Run("PutOpenList", func(t *testing.T) {
		tier := newTier(t)
		data := []byte("the whole database, compressed")
		name := backup.ObjectName(time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC), 42)
		if err := tier.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if got := read(t, tier, name); !bytes.Equal(got, data) {
			t.Fatalf("Open read %q, want %q", got, data)
		}
		objs, err := tier.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 1 || objs[0].Name != name || objs[0].Size != int64(len(data)) {
			t.Fatalf("List = %+v, want one object %s of %d bytes", objs, name, len(data))
		}
	})
	t.Run("PutReplaces", func(t *testing.T) {
		tier := newTier(t)
		for _, s := range []string{"first version", "second"} {
			if err := tier.Put(ctx, "x.manifest.json", strings.NewReader(s), int64(len(s))); err != nil {
				t.Fatal(err)
			}
		}
		if got := string(read(t, tier, "x.manifest.json")); got != "second" {
			t.Fatalf("after two Puts read %q, want %q", got, "second")
		}
	})
	t.Run("OpenMissingIsErrNotFound", func(t *testing.T) {
		tier := newTier(t)
		_, err := tier.Open(ctx, "candles-20260101T000000Z-w1.db.zst")
		if !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("Open of a missing object: %v, want ErrNotFound", err)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		tier := newTier(t)
		for _, n := range []string{"a", "b"} {
			if err := tier.Put(ctx, n, strings.NewReader(n), 1); err != nil {
				t.Fatal(err)
			}
		}
		if err := tier.Delete(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if err := tier.Delete(ctx, "never-there"); err != nil {
			t.Fatalf("Delete of a missing object: %v, want no error", err)
		}
		if got := names(t, tier); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("after Delete: %v, want [b]", got)
		}
	})
	t.Run("BadNamesRefused", func(t *testing.T) {
		tier := newTier(t)
		for _, n := range []string{"", "../escape", "dir/name"} {
			if err := tier.Put(ctx, n, strings.NewReader("x"), 1); err == nil {
				t.Errorf("Put(%q) succeeded, want an error", n)
			}
		}
	})
	t.Run("CopyWithoutManifestIsIncomplete", func(t *testing.T) {
		tier := newTier(t)
		name := backup.ObjectName(time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC), 7)
		if err := tier.Put(ctx, name, strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
		copies, err := backup.List(ctx, tier)
		if err != nil {
			t.Fatal(err)
		}
		if len(copies) != 1 || copies[0].Complete() || copies[0].Watermark != 7 {
			t.Fatalf("copies = %+v, want one incomplete copy at watermark 7", copies)
		}
	})
}

func read(t *testing.T, tier backup.Tier, name string) []byte {
	t.Helper()
	r, err := tier.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func names(t *testing.T, tier backup.Tier) []string {
	t.Helper()
	objs, err := tier.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range objs {
		out = append(out, o.Name)
	}
	slices.Sort(out)
	return out
}
