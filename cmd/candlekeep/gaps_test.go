package main

import (
	"database/sql"
	"encoding/json"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// The gap audit: rows deleted from the database are re-fetched and the run
// reports them as repaired; a range the exchange itself does not serve is
// recorded as a known gap and never fetched again. `candlekeep coverage`
// then shows every pair complete except the known gap.
func TestGapAuditRepairsHolesAndRecordsKnownGaps(t *testing.T) {
	s, simURL := startSim(t, sim.Options{})
	iv := candles.MustInterval("1h")
	now := time.Now().UnixMilli()
	outageFrom := iv.Add(iv.Align(now), -120)
	outageUntil := iv.Add(outageFrom, 10)
	s.Withhold("BTCUSDT", iv, outageFrom, outageUntil)
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT"}, []string{"1h"}, 300
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	natsURL := startUp(t, dataDir, fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	run := func(body string) (candles.SyncCompleted, map[string]int64) {
		t.Helper()
		s.ResetStats()
		acc := requestSync(t, nc, body)
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
		if done.PairsOK != 2 {
			t.Fatalf("run %s: %+v", body, done)
		}
		return done, s.Stats().Klines
	}

	first, _ := run(`{"reason":"backfill"}`)
	if first.GapsRecorded != 10 {
		t.Fatalf("first run recorded %d gap slots, want the 10 withheld", first.GapsRecorded)
	}

	// Holes: random rows deleted, outside the outage.
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	deleted := 0
	for _, sym := range fo.Symbols {
		rows := readDB(t, dbPath)[candles.Pair{Symbol: sym, Interval: "1h"}]
		for _, i := range rand.Perm(len(rows) - 2)[:6] {
			c := rows[i+1] // keep the first and last so the stored range stays
			res, err := db.Exec(`DELETE FROM candles WHERE symbol=? AND interval='1h' AND open_time=?`, sym, c.OpenTime)
			if err != nil {
				t.Fatal(err)
			}
			n, _ := res.RowsAffected()
			deleted += int(n)
		}
	}
	if deleted != 12 {
		t.Fatalf("deleted %d rows, want 12", deleted)
	}

	second, _ := run(`{"reason":"audit"}`)
	if second.Repaired != 12 || second.GapsRecorded != 0 {
		t.Fatalf("second run repaired %d, recorded %d gap slots; want 12 and 0", second.Repaired, second.GapsRecorded)
	}
	third, klines := run(`{"reason":"audit again"}`)
	if third.Repaired != 0 || klines["BTCUSDT/1h"] != 1 || klines["ETHUSDT/1h"] != 1 {
		t.Fatalf("third run repaired %d with klines requests %v; want nothing to repair and one request per pair", third.Repaired, klines)
	}

	got := readDB(t, dbPath)
	start := got[candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}][0].OpenTime
	last := got[candles.Pair{Symbol: "ETHUSDT", Interval: "1h"}]
	want := truth(s, fo.Symbols, "1h", time.UnixMilli(start), time.UnixMilli(iv.Next(last[len(last)-1].OpenTime)))
	assertSame(t, got, want)

	// What `candlekeep coverage` says about it.
	out, err := exec.Command(binary(t), "coverage", "--nats-url", natsURL).CombinedOutput()
	if err != nil {
		t.Fatalf("candlekeep coverage: %v\n%s", err, out)
	}
	lines := strings.Split(string(out), "\n")
	var btc, eth string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "BTCUSDT/1h"):
			btc = l
		case strings.HasPrefix(l, "ETHUSDT/1h"):
			eth = l
		}
	}
	gap := time.UnixMilli(outageFrom).UTC().Format("2006-01-02T15:04Z") + ".." + time.UnixMilli(outageUntil).UTC().Format("2006-01-02T15:04Z")
	if !strings.Contains(btc, "complete except known gaps") || !strings.Contains(btc, gap) || !strings.HasSuffix(strings.TrimSpace(eth), "complete") {
		t.Fatalf("coverage output:\n%s\nwant BTCUSDT complete except the known gap %s and ETHUSDT complete", out, gap)
	}
	// And as JSON, exactly.
	out, err = exec.Command(binary(t), "coverage", "--nats-url", natsURL, "--json", "--symbols", "BTCUSDT", "--intervals", "1h").CombinedOutput()
	if err != nil {
		t.Fatalf("candlekeep coverage --json: %v\n%s", err, out)
	}
	var cr candles.CoverageResponse
	if err := json.Unmarshal(out, &cr); err != nil || len(cr.Pairs) != 1 {
		t.Fatalf("coverage --json: %v\n%s", err, out)
	}
	p := cr.Pairs[0]
	if len(p.Missing) != 0 || len(p.KnownGaps) != 1 || p.KnownGaps[0] != (candles.Range{From: outageFrom, Until: outageUntil}) ||
		p.Count != p.Expected-10 || p.LastSync.IsZero() {
		t.Fatalf("BTCUSDT/1h coverage = %+v", p)
	}
}
