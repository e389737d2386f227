package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Copy is one copy in one tier, as List finds it.
type Copy struct {
	Tier string `json:"tier"`
	// Name is the data object; Time and Watermark are read from it.
	Name      string    `json:"name"`
	Time      time.Time `json:"time"`
	Watermark uint64    `json:"watermark"`
	// Bytes is the data object's size in the tier.
	Bytes int64 `json:"bytes"`
	// Manifest is nil for an incomplete copy (no manifest, or one that
	// does not read); Problem then says why.
	Manifest *Manifest `json:"manifest,omitempty"`
	Problem  string    `json:"problem,omitempty"`
}

// Complete: the copy has a readable manifest that says it was verified and
// matches the stored object's size. Only complete copies count.
func (c Copy) Complete() bool { return c.Manifest != nil && c.Problem == "" }

// CreatedAt is the manifest's created_at, else the time in the name.
func (c Copy) CreatedAt() time.Time {
	if c.Manifest != nil {
		return c.Manifest.CreatedAt
	}
	return c.Time
}

// List returns the copies in tier, oldest first: every data object, with
// its manifest when it has a good one. Objects that are not candlekeep
// copies are left out.
func List(ctx context.Context, tier Tier) ([]Copy, error) {
	objs, err := tier.List(ctx)
	if err != nil {
		return nil, err
	}
	manifests := map[string]bool{}
	for _, o := range objs {
		if strings.HasSuffix(o.Name, manifestSuffix) {
			manifests[strings.TrimSuffix(o.Name, manifestSuffix)] = true
		}
	}
	var out []Copy
	for _, o := range objs {
		t, w, ok := ParseObjectName(o.Name)
		if !ok {
			continue
		}
		c := Copy{Tier: tier.Name(), Name: o.Name, Time: t, Watermark: w, Bytes: o.Size}
		if !manifests[o.Name] {
			c.Problem = "no manifest: incomplete"
		} else if m, err := ReadManifest(ctx, tier, o.Name); err != nil {
			c.Problem = err.Error()
		} else {
			c.Manifest = &m
			switch {
			case !m.Verified:
				c.Problem = "manifest says not verified"
			case m.Bytes != o.Size:
				c.Problem = fmt.Sprintf("stored object has %d bytes, manifest says %d", o.Size, m.Bytes)
			case m.Name != o.Name:
				c.Problem = fmt.Sprintf("manifest describes %q", m.Name)
			}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// maxManifestBytes bounds what is read as a manifest: a few hundred
// bytes per pair.
const maxManifestBytes = 16 << 20

// ReadManifest reads the manifest of the data object name.
func ReadManifest(ctx context.Context, tier Tier, name string) (Manifest, error) {
	r, err := tier.Open(ctx, ManifestName(name))
	if err != nil {
		return Manifest{}, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxManifestBytes))
	if err != nil {
		return Manifest{}, fmt.Errorf("%s tier: read manifest of %s: %w", tier.Name(), name, err)
	}
	m, err := decodeManifest(data)
	if err != nil {
		return m, fmt.Errorf("%s tier: %s: %w", tier.Name(), ManifestName(name), err)
	}
	return m, nil
}

// ErrChecksum is returned by Verify and Fetch for an object whose content
// is not what its manifest says: truncated, damaged or tampered with.
var ErrChecksum = errors.New("checksum mismatch")

// Verify reads the data object of m from tier and checks its size and
// sha256 against the manifest.
func Verify(ctx context.Context, tier Tier, m Manifest) error {
	r, err := tier.Open(ctx, m.Name)
	if err != nil {
		return err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("%s tier: read %s: %w", tier.Name(), m.Name, err)
	}
	return checkSum(tier.Name(), m.Name, n, hex.EncodeToString(h.Sum(nil)), m.Bytes, m.SHA256)
}

func checkSum(tier, name string, n int64, sum string, wantN int64, wantSum string) error {
	if n != wantN || sum != wantSum {
		return fmt.Errorf("%s tier: %s: %d bytes sha256 %s, manifest says %d bytes sha256 %s: %w",
			tier, name, n, sum, wantN, wantSum, ErrChecksum)
	}
	return nil
}

// Fetch decompresses the copy of m from tier to the database file dst
// (mode 0600), checking the stored object's sha256 and the database's:
// dst appears only when both match. An existing dst is refused.
func Fetch(ctx context.Context, tier Tier, m Manifest, dst string) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("fetch to %s: %w", dst, os.ErrExist)
	}
	r, err := tier.Open(ctx, m.Name)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("fetch to %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	stored := sha256.New()
	counted := &countingReader{r: io.TeeReader(r, stored)}
	dec, err := zstd.NewReader(counted, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("fetch %s: %w", m.Name, err)
	}
	defer dec.Close()
	db := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, db), dec)
	if err != nil {
		// A damaged object may fail to decompress before its checksum can
		// be compared: it is the same finding.
		return fmt.Errorf("%s tier: decompress %s: %v: %w", tier.Name(), m.Name, err, ErrChecksum)
	}
	// Read what the decoder left (a trailing frame end) so the stored
	// object's sum covers all of it.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return fmt.Errorf("%s tier: read %s: %w", tier.Name(), m.Name, err)
	}
	if err := checkSum(tier.Name(), m.Name, counted.n, hex.EncodeToString(stored.Sum(nil)), m.Bytes, m.SHA256); err != nil {
		return err
	}
	if err := checkSum(tier.Name(), m.Name+" (decompressed)", n, hex.EncodeToString(db.Sum(nil)), m.DBBytes, m.DBSHA256); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fetch to %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fetch to %s: %w", dst, err)
	}
	if err := os.Chmod(f.Name(), 0o600); err != nil {
		return fmt.Errorf("fetch to %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("fetch to %s: %w", dst, err)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
