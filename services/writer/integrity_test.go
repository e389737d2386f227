package writer_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
	"github.com/candlekeep/candlekeep/services/writer"
)

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// fillBTC publishes n batches of 100 BTCUSDT candles and waits until the
// writer applied them.
func (h *harness) fillBTC(n int) {
	h.t.Helper()
	var last uint64
	for i := range n {
		last = h.publish(batch("", "BTCUSDT", i, false, series(t0+int64(i*100)*h4, 100, 0)), "").Sequence
	}
	h.waitApplied(last)
}

// integrityFailed waits for the first integrity.failed event and decodes it.
func (h *harness) integrityFailed() candles.IntegrityFailed {
	h.t.Helper()
	var ev candles.IntegrityFailed
	eventually(h.t, "integrity.failed", func() bool { return len(h.events(candles.KindIntegrityFailed)) > 0 })
	if err := json.Unmarshal(h.events(candles.KindIntegrityFailed)[0], &ev); err != nil {
		h.t.Fatal(err)
	}
	return ev
}

// coverageError asks for BTCUSDT's coverage and returns the micro error.
func (h *harness) coverageError() string {
	h.t.Helper()
	resp, err := h.nc.Request(candles.SubjectAPICoverage, []byte(`{"pairs":[{"symbol":"BTCUSDT","interval":"4h"}]}`), 10*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.Header.Get(micro.ErrorHeader)
}

func (h *harness) assertDamageEvent(ev candles.IntegrityFailed, check string) {
	h.t.Helper()
	if ev.Database != h.dbPath || ev.Check != check || len(ev.Problems) == 0 || len(ev.Problems) > 10 || ev.DetectedAt.IsZero() {
		h.t.Errorf("integrity.failed = %+v; want database %s, check %s, the first problems and detected_at", ev, h.dbPath, check)
	}
	if !strings.Contains(ev.Hint, "stop candlekeep") || !strings.Contains(ev.Hint, "mv "+h.dbPath+" "+h.dbPath+".corrupt") ||
		!strings.Contains(ev.Hint, "watermark 0") || !strings.Contains(ev.Hint, "backup") {
		h.t.Errorf("hint %q does not give the recovery steps", ev.Hint)
	}
	if !strings.Contains(h.logs.String(), "database damaged: writes stopped") || !strings.Contains(h.logs.String(), "move the file") {
		h.t.Error("the log does not say the database is damaged and how to recover")
	}
}

// A writer started on a file with damaged pages in the middle of the candles
// b-tree finds it with quick_check before writing anything: integrity.failed,
// the recovery steps in the log, coverage refused with the reason, the
// batches left in the stream, the file's bytes unchanged. The process stays
// up (Run returns nil only when stopped).
func TestWriterRefusesACorruptDatabaseAtStart(t *testing.T) {
	h := newHarness(t)
	r := h.start(nil)
	h.fillBTC(50)
	r.stop()
	if _, err := storetest.CorruptCandles(h.dbPath, 3); err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, h.dbPath)

	r = h.start(nil)
	ev := h.integrityFailed()
	h.assertDamageEvent(ev, "quick_check")
	if msg := h.coverageError(); !strings.Contains(msg, "failed quick_check") || !strings.Contains(msg, h.dbPath) {
		t.Errorf("coverage of the damaged database answered %q; want the damage named", msg)
	}
	// A batch published now stays in the stream for the rebuilt database.
	seq := h.publish(batch("", "ETHUSDT", 0, false, series(t0, 10, 0)), "").Sequence
	r.stop()
	if after := fileSum(t, h.dbPath); after != before {
		t.Error("the writer changed the damaged file")
	}
	info, err := h.js.Consumer(context.Background(), candles.StreamCandles, writer.ConsumerBatches)
	if err != nil {
		t.Fatal(err)
	}
	if floor := info.CachedInfo().AckFloor.Stream; floor >= seq {
		t.Errorf("the writer acked stream_seq %d it could not write (ack floor %d)", seq, floor)
	}

	// Recovery by hand: move the file aside and start again; the writer
	// rebuilds everything from CANDLES.
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(h.dbPath+suffix, h.dbPath+suffix+".corrupt"); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	h.start(nil)
	h.waitApplied(seq)
	h.assertDB()
}

// Damage that appears under a running writer is found by the periodic
// quick_check, or by the first query that reads a bad page: either way the
// writer stops writing at a batch boundary and reports it once.
func TestWriterStopsWhenTheDatabaseGoesBad(t *testing.T) {
	for _, tc := range []struct {
		name        string
		quick, full time.Duration
		check       string
		detectVia   func(h *harness)
	}{
		{"periodic quick_check", 50 * time.Millisecond, time.Hour, "quick_check", func(h *harness) {}},
		{"periodic integrity_check", time.Hour, 50 * time.Millisecond, "integrity_check", func(h *harness) {}},
		{"a coverage query reads a bad page", time.Hour, time.Hour, "query", func(h *harness) {
			if msg := h.coverageError(); msg == "" {
				h.t.Error("coverage of damaged pages answered numbers")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.start(func(o *writer.Options) { o.QuickCheckEvery, o.IntegrityCheckEvery = tc.quick, tc.full })
			h.fillBTC(50)
			// The disk goes bad under the running writer.
			checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
				_, err := storetest.CorruptCandles(h.dbPath, 3)
				return err
			})
			// A commit makes every connection drop the pages it cached, so
			// the next read goes to the damaged file. A periodic check may
			// find the damage before the batch is written (then it never
			// is): only the query case needs the commit before it asks.
			seq := h.publish(batch("", "ETHUSDT", 0, false, series(t0, 10, 0)), "").Sequence
			if tc.check == "query" {
				h.waitApplied(seq)
			}
			tc.detectVia(h)
			ev := h.integrityFailed()
			h.assertDamageEvent(ev, tc.check)
			if msg := h.coverageError(); !strings.Contains(msg, "damaged") && !strings.Contains(msg, "failed") {
				t.Errorf("coverage after the damage answered %q; want the damage named", msg)
			}
			if n := len(h.events(candles.KindIntegrityFailed)); n != 1 {
				t.Errorf("%d integrity.failed events; want 1", n)
			}
		})
	}
}

// A backfill goes on while another process holds a read transaction open:
// the WAL grows with what is written behind the reader (SQLite cannot start
// it over while the reader is in it), writes are never blocked, and once the
// reader goes the writer's own checkpoints bring the WAL back to nothing.
func TestWALShrinksAfterALongReader(t *testing.T) {
	h := newHarness(t)
	h.start(func(o *writer.Options) { o.CheckpointEvery, o.ProgressEvery = 20*time.Millisecond, 50*time.Millisecond })
	h.fillBTC(5)
	eth := candles.Pair{Symbol: "ETHUSDT", Interval: "4h"}
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "backfill"), Pairs: []candles.Pair{eth}, PairsTotal: 1}
	h.event(&started, "")

	db, err := sql.Open("sqlite", h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	reader, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.ExecContext(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM candles`).Scan(&n); err != nil || n != 500 {
		t.Fatalf("reader sees %d candles, %v; want 500", n, err)
	}

	var last uint64
	for i := range 200 {
		last = h.publish(batch("backfill", "ETHUSDT", i, false, series(t0+int64(i*100)*h4, 100, 0)), "").Sequence
	}
	h.waitApplied(last) // writes went on behind the reader
	// The progress line reports the WAL's size.
	eventually(t, "a progress line with the WAL size", func() bool {
		return regexp.MustCompile(`msg="sync progress" run_id=backfill .* wal_bytes=[1-9][0-9]{6,}`).MatchString(h.logs.String())
	})
	walPath := h.dbPath + "-wal"
	fi, err := os.Stat(walPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() <= store.WALSizeLimit {
		t.Fatalf("WAL %d bytes behind the reader: the test wrote too little to show growth", fi.Size())
	}
	grown := fi.Size()

	if _, err := reader.ExecContext(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	reader.Close()
	checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		fi, err := os.Stat(walPath)
		if err != nil {
			return err
		}
		if fi.Size() > store.WALSizeLimit {
			return fmt.Errorf("WAL still %d bytes (was %d behind the reader)", fi.Size(), grown)
		}
		return nil
	})
	h.assertDB()
}

// A damaged database can be replaced under the running writer with Pause,
// as a restore does: the new file is checked, then written, and the batches
// the damaged one never took are applied from the stream.
func TestPauseReplacesADamagedDatabase(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	r := h.start(nil)
	h.fillBTC(50)
	r.stop()
	if _, err := storetest.CorruptCandles(h.dbPath, 3); err != nil {
		t.Fatal(err)
	}
	r = h.start(nil)
	h.integrityFailed()
	last := h.publish(batch("", "ETHUSDT", 0, false, series(t0, 10, 0)), "").Sequence

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resume, err := r.w.Pause(pctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(h.dbPath+suffix, h.dbPath+suffix+".corrupt"); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	fresh, err := store.Open(ctx, h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	r.store = fresh // stop closes it
	if err := resume(fresh); err != nil {
		t.Fatal(err)
	}
	h.waitApplied(last)
	if msg := h.coverageError(); msg != "" {
		t.Errorf("coverage of the new database answered %q", msg)
	}
	r.stop()
	h.assertDB()
	if n := len(h.events(candles.KindIntegrityFailed)); n != 1 {
		t.Errorf("%d integrity.failed events; want 1 (the new file is sound)", n)
	}
}
