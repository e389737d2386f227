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
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// snapshot is a verified, compressed copy in the scratch directory, ready
// to be stored in every tier.
type snapshot struct {
	path     string   // the compressed file
	manifest Manifest // without Tier and Verified*
}

// ErrDamagedSnapshot is returned when the copy fails PRAGMA
// integrity_check: the live database (or the copy) is damaged, and such a
// copy must never become a backup.
var ErrDamagedSnapshot = errors.New("snapshot fails integrity_check")

// takeSnapshot copies the live database (Options.SnapshotMethod) into the
// scratch directory, checks the copy, reads its figures and compresses it. The
// uncompressed copy is removed before it returns; the compressed file is
// the caller's to remove.
func (s *Service) takeSnapshot(ctx context.Context, now time.Time) (snap *snapshot, err error) {
	if err := os.MkdirAll(s.o.ScratchDir, 0o700); err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	rawPath := filepath.Join(s.o.ScratchDir, fmt.Sprintf("snapshot-%d.db", now.UnixNano()))
	err = snapshotTo(ctx, s.o.SnapshotMethod, s.o.Database, rawPath)
	defer removeDB(rawPath)
	if err != nil {
		return nil, err
	}
	m, err := describe(ctx, rawPath)
	if err != nil {
		return nil, err
	}
	m.V = ManifestVersion
	m.CreatedAt = now.UTC()
	m.Name = ObjectName(now, m.Watermark)
	m.Compression = CompressionZstd
	m.Source = s.o.Database
	m.Version = s.o.Version
	zPath := filepath.Join(s.o.ScratchDir, m.Name)
	if err := compress(ctx, rawPath, zPath, &m); err != nil {
		os.Remove(zPath)
		return nil, err
	}
	return &snapshot{path: zPath, manifest: m}, nil
}

// describe checks the copy at path and reads what the manifest says about
// it.
func describe(ctx context.Context, path string) (Manifest, error) {
	var m Manifest
	cp, err := store.OpenReadOnly(ctx, path)
	if err != nil {
		return m, fmt.Errorf("open snapshot: %w", err)
	}
	defer cp.Close()
	problems, err := cp.IntegrityCheck(ctx)
	if err != nil {
		return m, err
	}
	if len(problems) > 0 {
		return m, fmt.Errorf("%w: %s", ErrDamagedSnapshot, strings.Join(problems, "; "))
	}
	m.IntegrityCheck = "ok"
	st, err := cp.Stats(ctx)
	if err != nil {
		return m, err
	}
	m.Candles, m.SchemaVersion = st.Candles, st.SchemaVersion
	m.Stream = candles.StreamCandles
	if m.Watermark, err = cp.Watermark(ctx, candles.StreamCandles); err != nil {
		return m, err
	}
	cov, err := cp.Coverage(ctx, candles.CoverageRequest{})
	if err != nil {
		return m, err
	}
	m.Pairs = make([]PairSummary, 0, len(cov))
	for _, c := range cov {
		m.Pairs = append(m.Pairs, PairSummary{Symbol: c.Symbol, Interval: c.Interval, First: c.First, Last: c.Last, Count: c.Count})
	}
	return m, nil
}

// compress writes src zstd-compressed to dst (0600, synced) and records
// both files' sizes and sha256 in m.
func compress(ctx context.Context, src, dst string, m *Manifest) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	defer out.Close()
	stored := sha256.New()
	storedN := &countingWriter{w: io.MultiWriter(out, stored)}
	// A backup must not take the CPU the writer and the fetchers need:
	// one encoder goroutine at the fastest level (on a 2-core machine the
	// default level cost the writer about a third of its rate during a
	// backup, the fastest about a sixth, for a few percent more bytes), in
	// its lower-memory mode as it runs inside `candlekeep up`, held to a
	// memory budget.
	enc, err := zstd.NewWriter(storedN, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	db := sha256.New()
	n, err := io.Copy(io.MultiWriter(enc, db), ctxReader{ctx, in})
	if err != nil {
		enc.Close()
		return fmt.Errorf("compress %s: %w", src, err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("compress %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("compress %s: %w", src, err)
	}
	m.DBBytes, m.DBSHA256 = n, hex.EncodeToString(db.Sum(nil))
	m.Bytes, m.SHA256 = storedN.n, hex.EncodeToString(stored.Sum(nil))
	return out.Close()
}

// clearScratch removes what a crashed backup left in the scratch
// directory: only the service writes there.
func (s *Service) clearScratch() {
	entries, err := os.ReadDir(s.o.ScratchDir)
	if err != nil {
		return // missing: nothing to clear; otherwise the next snapshot says why
	}
	for _, e := range entries {
		if e.Type().IsRegular() && (strings.HasPrefix(e.Name(), "snapshot-") || strings.HasPrefix(e.Name(), objectPrefix) || strings.HasPrefix(e.Name(), ".snapshot-")) {
			if err := os.Remove(filepath.Join(s.o.ScratchDir, e.Name())); err == nil {
				s.log.Info("removed the leftover of an interrupted backup", "path", filepath.Join(s.o.ScratchDir, e.Name()))
			}
		}
	}
}

// removeDB removes a scratch database and the -wal/-shm files a reader
// may have left beside it.
func removeDB(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		os.Remove(p)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
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
