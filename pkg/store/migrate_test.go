package store_test

import (
	"context"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// A database written by schema version 1 (testdata/schema_v1.sql) is
// migrated in place, keeps its data and works with every feature of the
// new schema; opening it again migrates nothing.
func TestMigrationFromVersion1(t *testing.T) {
	fixture, err := os.ReadFile("testdata/schema_v1.sql")
	if err != nil {
		t.Fatal(err)
	}
	path := tempDB(t)
	old := rawDB(t, path)
	if _, err := old.Exec(string(fixture)); err != nil {
		t.Fatal(err)
	}
	old.Close()
	ctx := context.Background()

	for open := 1; open <= 2; open++ {
		s := openStore(t, path)
		var versions []int
		rs, err := rawDB(t, path).Query(`SELECT version FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var v int
			rs.Scan(&v)
			versions = append(versions, v)
		}
		rs.Close()
		if want := []int{1, 2, 3, 4, 5, 6}; !reflect.DeepEqual(versions, want) || store.SchemaVersion() != 6 {
			t.Fatalf("open %d: schema versions %v, want %v", open, versions, want)
		}
		if w, err := s.Watermark(ctx, "CANDLES"); err != nil || w != uint64(41+open) {
			t.Errorf("open %d: watermark %d, %v; want %d", open, w, err, 41+open)
		}
		// The database applied batches before job tokens: token-less
		// batches up to the stream's last sequence at the first start
		// are the old pipeline's; later ones, or another stream's, not.
		if c, err := s.LegacyCutoff(ctx, "CANDLES", "id-1", uint64(100*open)); err != nil || c != 100 {
			t.Errorf("open %d: LegacyCutoff = %d, %v; want 100 (recorded at the first start)", open, c, err)
		}
		if c, err := s.LegacyCutoff(ctx, "CANDLES", "id-2", 500); err != nil || c != 0 {
			t.Errorf("open %d: LegacyCutoff of a newer stream = %d, %v; want 0", open, c, err)
		}
		if open == 1 {
			// The old run has no deadline and goes on as before.
			p, err := s.RunProgress(ctx)
			if want := []store.Progress{{RunID: "old-run", PairsTotal: 2, PairsDone: 1, Candles: 2,
				StartedAt: time.Date(2024, 3, 1, 1, 0, 0, 0, time.UTC)}}; err != nil || !reflect.DeepEqual(p, want) {
				t.Errorf("RunProgress = %+v, %v; want %+v", p, err, want)
			}
			if d, err := s.NextDeadline(ctx); err != nil || !d.IsZero() {
				t.Errorf("NextDeadline = %v, %v; want none", d, err)
			}
			if complete, err := s.FailPair(ctx, "old-run", "ETHUSDT", "4h", "late"); err != nil || !complete {
				t.Errorf("FailPair = %v, %v; want the old run complete", complete, err)
			}
			ann, err := s.PendingAnnouncements(ctx)
			if err != nil || len(ann) != 1 || ann[0].PairsOK != 1 || ann[0].PairsFailed != 1 || ann[0].Candles != 2 || ann[0].Repaired != 0 {
				t.Errorf("PendingAnnouncements = %+v, %v", ann, err)
			}
			// New tables work on the old rows: slots 2 and 3 are empty.
			a, err := s.ApplyBatch(ctx, "CANDLES", 43, spanned(0, 5, at4h(4)))
			if err != nil || a.GapsRecorded != 2 {
				t.Errorf("ApplyBatch = %+v, %v; want 2 gap slots recorded", a, err)
			}
		}
		cov, err := s.Coverage(ctx, candles.CoverageRequest{Gaps: true})
		want := []candles.PairCoverage{{Symbol: "BTCUSDT", Interval: "4h", First: slot(0), Last: slot(4), Count: 3, Expected: 5,
			KnownGaps: []candles.Range{r4h(2, 4)}}}
		if err != nil || !reflect.DeepEqual(cov, want) {
			t.Errorf("open %d: Coverage = %+v, %v; want %+v", open, cov, err, want)
		}
		s.Close()
	}
}
