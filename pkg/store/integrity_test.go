package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
)

// A database with overwritten pages in the middle of the candles b-tree
// opens (its schema is intact), but the check finds the damage and every
// query or write that reaches a bad page is classified as corruption, not
// as temporary trouble.
func TestCorruptPagesAreDetected(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	w := openStore(t, path)
	fill(t, w, 50) // 5000 candles: about 140 leaf pages
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := storetest.CorruptCandles(path, 3); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, path)

	for _, check := range []string{"quick_check", "integrity_check"} {
		err := s.Verify(ctx, check)
		var cf *store.CheckFailedError
		if !errors.As(err, &cf) || cf.Check != check || cf.Path != path || len(cf.Problems) == 0 {
			t.Fatalf("Verify(%s) = %v; want a CheckFailedError naming %s and its problems", check, err, path)
		}
		if !errors.Is(err, store.ErrCorrupt) || !store.IsCorrupt(err) {
			t.Errorf("Verify(%s) error %v is not classified as corruption", check, err)
		}
		if len(cf.Problems) > 10 {
			t.Errorf("Verify(%s) kept %d problems; want the first few", check, len(cf.Problems))
		}
	}

	pair := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	if cov, err := s.Coverage(ctx, candles.CoverageRequest{Pairs: []candles.Pair{pair}}); !store.IsCorrupt(err) {
		t.Errorf("Coverage of a corrupt file = %+v, %v; want a corruption error, not numbers", cov, err)
	}
	// Rewriting every candle with other values reaches every leaf page.
	_, err := s.ApplyBatch(ctx, candles.StreamCandles, 51, batch("", "BTCUSDT", false, series(t0, 5000, 1)))
	if !store.IsCorrupt(err) {
		t.Errorf("ApplyBatch over the damaged pages: err = %v; want a corruption error", err)
	}
}

func TestSoundFileVerifies(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempDB(t))
	fill(t, s, 5)
	for _, check := range []string{"quick_check", "integrity_check"} {
		if err := s.Verify(ctx, check); err != nil {
			t.Errorf("Verify(%s) of a sound file = %v", check, err)
		}
	}
	for _, err := range []error{nil, context.Canceled, errors.New("database is locked (5) (SQLITE_BUSY)")} {
		if store.IsCorrupt(err) {
			t.Errorf("IsCorrupt(%v) = true", err)
		}
	}
}

// walFrameBytes is the size of one WAL frame of a 4096-byte page: the page
// and its 24-byte frame header; walHeaderBytes starts the file.
const (
	walFrameBytes  = 4096 + 24
	walHeaderBytes = 32
)

// A reader holding a read transaction pins the WAL frames written after its
// snapshot: SQLite cannot start the WAL over while it is there, so the file
// grows with what is written meanwhile. CheckpointWAL still copies
// everything the reader does not need, the -wal file never holds more than
// the live frames (or the journal_size_limit left from an earlier restart),
// and once the reader goes the WAL is reset to nothing by the next
// checkpoint.
func TestWALStaysBoundedBehindAReader(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	s := openStore(t, path)
	fill(t, s, 20)

	// A second process's connection: BEGIN, read, then hold the snapshot.
	reader, err := rawDB(t, path).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.ExecContext(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM candles`).Scan(&n); err != nil || n != 2000 {
		t.Fatalf("reader sees %d candles, %v; want 2000", n, err)
	}
	held, err := s.CheckpointWAL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if held.Truncated {
		t.Fatalf("checkpoint truncated the WAL under a reader: %+v", held)
	}

	// A backfill goes on behind the reader, checkpointing between batches
	// as the writer does.
	seq := uint64(20)
	for i := range 200 {
		seq++
		b := batch("", "ETHUSDT", false, series(t0+int64(i*100)*h4, 100, 0))
		if _, err := s.ApplyBatch(ctx, candles.StreamCandles, seq, b); err != nil {
			t.Fatal(err)
		}
		if i%20 != 19 {
			continue
		}
		st, err := s.CheckpointWAL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Everything up to the reader's snapshot is in the database file.
		if st.Checkpointed < held.Frames {
			t.Fatalf("after batch %d: checkpointed %d frames, want at least the %d before the reader's snapshot", i, st.Checkpointed, held.Frames)
		}
		// The file holds the live frames and nothing more (a file cut to
		// the size limit at a restart may be longer than a short log).
		if bound := max(int64(walHeaderBytes+st.Frames*walFrameBytes), store.WALSizeLimit); st.Bytes > bound {
			t.Fatalf("after batch %d: WAL is %d bytes for %d frames; want at most %d", i, st.Bytes, st.Frames, bound)
		}
	}
	if wm, err := s.Watermark(ctx, candles.StreamCandles); err != nil || wm != seq {
		t.Fatalf("watermark %d, %v; the writer was blocked by the reader (want %d)", wm, err, seq)
	}
	grown, _ := s.WALBytes()
	if grown <= store.WALSizeLimit {
		t.Fatalf("WAL is %d bytes behind the reader: the test did not write enough to show anything", grown)
	}

	// The reader goes: the next checkpoint resets the WAL.
	if _, err := reader.ExecContext(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	reader.Close()
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		st, err := s.CheckpointWAL(ctx)
		if err != nil {
			return err
		}
		if !st.Truncated || st.Bytes != 0 {
			return fmt.Errorf("WAL %d bytes after the reader left (was %d): %+v", st.Bytes, grown, st)
		}
		return nil
	})
	if st, err := s.Stats(ctx); err != nil || st.WALBytes != 0 || st.Candles != 22000 {
		t.Fatalf("Stats = %+v, %v; want an empty WAL and 22000 candles", st, err)
	}
}

// When a check last passed is kept in the file, so a daily check stays
// daily across restarts.
func TestLastCheckSurvivesReopening(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	s := openStore(t, path)
	if at, err := s.LastCheck(ctx, "integrity_check"); err != nil || !at.IsZero() {
		t.Fatalf("LastCheck of a new file = %v, %v; want never", at, err)
	}
	at := time.Date(2026, 12, 4, 3, 0, 0, 123, time.UTC)
	if err := s.RecordCheck(ctx, "integrity_check", at); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got, err := openReadOnly(t, path).LastCheck(ctx, "integrity_check"); err != nil || !got.Equal(at) {
		t.Fatalf("LastCheck after reopening = %v, %v; want %v", got, err, at)
	}
}
