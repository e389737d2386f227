package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/testclock"
)

var epoch = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

func newClock() *testclock.Clock { return testclock.New(epoch) }

func openStore(t *testing.T, path string, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tempDB(t *testing.T) string { return filepath.Join(t.TempDir(), "candles.db") }

// rawDB opens the file directly, to look at what the Store wrote.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

const h4 = 4 * 60 * 60 * 1000

// series returns n valid 4h candles from open time start; v shifts the values
// so that a different v gives different rows for the same keys.
func series(start int64, n int, v float64) []candles.Candle {
	out := make([]candles.Candle, n)
	for i := range out {
		o := 100 + float64(i) + v
		out[i] = candles.Candle{
			OpenTime: start + int64(i)*h4, CloseTime: start + int64(i+1)*h4 - 1,
			Open: o, High: o + 2, Low: o - 1, Close: o + 1, Volume: 10 + v, QuoteVolume: 1000 + v,
			Trades: int64(50 + i), TakerBuyBaseVolume: 5, TakerBuyQuoteVolume: 500,
		}
	}
	return out
}

func batch(runID, symbol string, final bool, cs []candles.Candle) candles.Batch {
	return candles.Batch{V: candles.Version, RunID: runID, Symbol: symbol, Interval: "4h", Final: final, Candles: cs}
}

// rows reads back every candle of a pair.
func rows(t *testing.T, db *sql.DB, symbol, interval string) []candles.Candle {
	t.Helper()
	rs, err := db.Query(`SELECT open_time, close_time, open, high, low, close, volume, quote_volume, trades,
  taker_buy_base_volume, taker_buy_quote_volume FROM candles WHERE symbol = ? AND interval = ? ORDER BY open_time`, symbol, interval)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []candles.Candle
	for rs.Next() {
		var c candles.Candle
		if err := rs.Scan(&c.OpenTime, &c.CloseTime, &c.Open, &c.High, &c.Low, &c.Close, &c.Volume, &c.QuoteVolume,
			&c.Trades, &c.TakerBuyBaseVolume, &c.TakerBuyQuoteVolume); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

const t0 = int64(1704067200000) // 2024-01-01T00:00:00Z

func normalizeSQL(s string) string {
	s = regexp.MustCompile(`--[^\n]*`).ReplaceAllString(s, "")
	s = strings.Join(strings.Fields(s), " ")
	return strings.TrimSuffix(s, ";")
}

type column struct {
	Name, Type    string
	NotNull, PKAt int
}

func describe(t *testing.T, db *sql.DB, table string) (cols []column, withoutRowid bool) {
	t.Helper()
	rs, err := db.Query(`SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid`, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var c column
		if err := rs.Scan(&c.Name, &c.Type, &c.NotNull, &c.PKAt); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	if err := db.QueryRow(`SELECT wr FROM pragma_table_list WHERE name = ?`, table).Scan(&withoutRowid); err != nil {
		t.Fatal(err)
	}
	return cols, withoutRowid
}

func TestSchemaMatchesDesign(t *testing.T) {
	path := tempDB(t)
	s := openStore(t, path)
	s.Close()

	design, err := os.ReadFile("testdata/design_candles.sql")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "ref.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if _, err := ref.Exec(string(design)); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)

	wantCols, wantWR := describe(t, ref, "candles")
	gotCols, gotWR := describe(t, db, "candles")
	if !reflect.DeepEqual(gotCols, wantCols) {
		t.Errorf("candles columns:\n got %+v\nwant %+v", gotCols, wantCols)
	}
	if !gotWR || !wantWR {
		t.Errorf("WITHOUT ROWID: got %v, design %v", gotWR, wantWR)
	}
	var got string
	if err := db.QueryRow(`SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'candles'`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if normalizeSQL(got) != normalizeSQL(string(design)) {
		t.Errorf("candles DDL:\n got %s\nwant %s", normalizeSQL(got), normalizeSQL(string(design)))
	}

	var tables []string
	rs, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var n string
		rs.Scan(&n)
		tables = append(tables, n)
	}
	rs.Close()
	if want := []string{"candles", "known_gaps", "meta", "pair_range", "pair_state", "run_pairs", "runs", "schema_migrations", "stream_state"}; !reflect.DeepEqual(tables, want) {
		t.Errorf("tables = %v, want %v", tables, want)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q (%v), want wal", mode, err)
	}
}

func TestReopenIsIdempotent(t *testing.T) {
	path := tempDB(t)
	ctx := context.Background()
	s := openStore(t, path)
	if _, err := s.ApplyBatch(ctx, "CANDLES", 1, batch("", "BTCUSDT", false, series(t0, 3, 0))); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for i := 0; i < 2; i++ {
		s := openStore(t, path)
		if w, err := s.Watermark(ctx, "CANDLES"); err != nil || w != 1 {
			t.Fatalf("reopen %d: watermark %d, %v; want 1", i, w, err)
		}
		s.Close()
	}
	db := rawDB(t, path)
	var versions, n int
	if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &versions); err != nil {
		t.Fatal(err)
	}
	if n != store.SchemaVersion() || versions != store.SchemaVersion() {
		t.Errorf("schema_migrations: %d rows, max %d; want %d", n, versions, store.SchemaVersion())
	}
	if got := rows(t, db, "BTCUSDT", "4h"); !reflect.DeepEqual(got, series(t0, 3, 0)) {
		t.Errorf("rows after reopen = %+v", got)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	path := tempDB(t)
	s := openStore(t, path)
	s.Close()
	db := rawDB(t, path)
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'later')`, store.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err := store.Open(context.Background(), path)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	if want := fmt.Sprintf("version %d", store.SchemaVersion()+1); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the version", err)
	}
}

func TestOpenRejectsNonFilePaths(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if _, err := store.Open(context.Background(), p); err == nil {
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func TestFileModes(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // 0: no file before Open
	}{
		{"new file", 0},
		{"existing world-readable file", 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempDB(t)
			if tt.existing != 0 {
				if err := os.WriteFile(path, nil, tt.existing); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			s := openStore(t, path)
			if _, err := s.ApplyBatch(context.Background(), "CANDLES", 1, batch("", "BTCUSDT", false, series(t0, 2, 0))); err != nil {
				t.Fatal(err)
			}
			// Coverage opens a reader, so -shm exists too.
			if _, err := s.Coverage(context.Background(), candles.CoverageRequest{}); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
				}
			}
		})
	}
}

func TestApplyBatch(t *testing.T) {
	changed := series(t0, 3, 0)
	changed[1].Close = 103.5
	changed[1].High = 104
	// 155 candles: two full multi-row statements and a remainder, with a
	// change in each part and new keys at the end.
	large := series(t0, 155, 0)
	for _, i := range []int{10, 70, 140} {
		large[i].Volume += 1
	}
	type step struct {
		seq  uint64
		b    candles.Batch
		want store.Applied
	}
	tests := []struct {
		name  string
		steps []step
		rows  []candles.Candle
	}{{
		name:  "insert",
		steps: []step{{1, batch("", "BTCUSDT", false, series(t0, 3, 0)), store.Applied{Inserted: 3}}},
		rows:  series(t0, 3, 0),
	}, {
		name: "identical re-apply rewrites nothing",
		steps: []step{
			{1, batch("", "BTCUSDT", false, series(t0, 3, 0)), store.Applied{Inserted: 3}},
			{2, batch("", "BTCUSDT", false, series(t0, 3, 0)), store.Applied{Unchanged: 3}},
		},
		rows: series(t0, 3, 0),
	}, {
		name: "changed values update, new keys insert",
		steps: []step{
			{1, batch("", "BTCUSDT", false, series(t0, 3, 0)), store.Applied{Inserted: 3}},
			{2, batch("", "BTCUSDT", false, append(changed, series(t0+3*h4, 1, 3)...)), store.Applied{Inserted: 1, Updated: 1, Unchanged: 2}},
		},
		rows: append(changed, series(t0+3*h4, 1, 3)...),
	}, {
		name: "gap in the batch does not count rows in between",
		steps: []step{
			{1, batch("", "BTCUSDT", false, series(t0+h4, 1, 1)), store.Applied{Inserted: 1}},
			{2, batch("", "BTCUSDT", false, []candles.Candle{series(t0, 1, 0)[0], series(t0+2*h4, 1, 2)[0]}), store.Applied{Inserted: 2}},
		},
		rows: []candles.Candle{series(t0, 1, 0)[0], series(t0+h4, 1, 1)[0], series(t0+2*h4, 1, 2)[0]},
	}, {
		name: "seq at or below the watermark is skipped",
		steps: []step{
			{5, batch("", "BTCUSDT", false, series(t0, 2, 0)), store.Applied{Inserted: 2}},
			{5, batch("", "BTCUSDT", false, series(t0, 3, 7)), store.Applied{Skipped: true}},
			{4, batch("", "BTCUSDT", false, series(t0, 3, 7)), store.Applied{Skipped: true}},
		},
		rows: series(t0, 2, 0),
	}, {
		name: "large batches are counted exactly",
		steps: []step{
			{1, batch("", "BTCUSDT", false, series(t0, 150, 0)), store.Applied{Inserted: 150}},
			{2, batch("", "BTCUSDT", false, large), store.Applied{Inserted: 5, Updated: 3, Unchanged: 147}},
		},
		rows: large,
	}, {
		name:  "empty final batch",
		steps: []step{{1, batch("", "BTCUSDT", true, nil), store.Applied{}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempDB(t)
			s := openStore(t, path)
			ctx := context.Background()
			var last uint64
			for i, st := range tt.steps {
				got, err := s.ApplyBatch(ctx, "CANDLES", st.seq, st.b)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if got != st.want {
					t.Errorf("step %d: Applied = %+v, want %+v", i, got, st.want)
				}
				last = max(last, st.seq)
			}
			if w, err := s.Watermark(ctx, "CANDLES"); err != nil || w != last {
				t.Errorf("watermark = %d, %v; want %d", w, err, last)
			}
			if got := rows(t, rawDB(t, path), "BTCUSDT", "4h"); !reflect.DeepEqual(got, tt.rows) {
				t.Errorf("rows:\n got %+v\nwant %+v", got, tt.rows)
			}
		})
	}
}

func TestWatermarksAreIndependentPerStream(t *testing.T) {
	s := openStore(t, tempDB(t))
	ctx := context.Background()
	if _, err := s.ApplyBatch(ctx, "CANDLES", 7, batch("", "BTCUSDT", false, series(t0, 1, 0))); err != nil {
		t.Fatal(err)
	}
	if err := s.Advance(ctx, "EVENTS", 3); err != nil {
		t.Fatal(err)
	}
	for stream, want := range map[string]uint64{"CANDLES": 7, "EVENTS": 3, "OTHER": 0} {
		if w, err := s.Watermark(ctx, stream); err != nil || w != want {
			t.Errorf("Watermark(%s) = %d, %v; want %d", stream, w, err, want)
		}
	}
}

func TestRejectAndReset(t *testing.T) {
	path := tempDB(t)
	s := openStore(t, path)
	ctx := context.Background()
	steps := []struct {
		name string
		do   func() error
		want uint64
	}{
		{"reject moves the watermark", func() error { return s.Reject(ctx, "CANDLES", 4) }, 4},
		{"reject never moves it back", func() error { return s.Reject(ctx, "CANDLES", 2) }, 4},
		{"advance", func() error { return s.Advance(ctx, "CANDLES", 6) }, 6},
		{"reset moves it back", func() error { return s.ResetWatermark(ctx, "CANDLES", 1) }, 1},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if w, err := s.Watermark(ctx, "CANDLES"); err != nil || w != st.want {
			t.Errorf("%s: watermark %d, %v; want %d", st.name, w, err, st.want)
		}
	}
	if a, err := s.ApplyBatch(ctx, "CANDLES", 4, batch("", "BTCUSDT", false, series(t0, 1, 0))); err != nil || a.Skipped {
		t.Errorf("apply after reset = %+v, %v; want applied", a, err)
	}
	var n int
	rawDB(t, path).QueryRow(`SELECT COUNT(*) FROM candles`).Scan(&n)
	if n != 1 {
		t.Errorf("%d rows, want 1 (Reject writes no rows)", n)
	}
}
