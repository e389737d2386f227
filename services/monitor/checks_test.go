package monitor

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// t0 is the checks' "now": a 4h boundary, so a fresh 4h pair's newest
// candle closes exactly at t0.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

const h4 = 4 * time.Hour

// freshPair is a complete pair whose newest candle closed `age` before t0.
func freshPair(sym string, age time.Duration) candles.PairCoverage {
	last := t0.Add(-age - h4).UnixMilli()
	return candles.PairCoverage{Symbol: sym, Interval: "4h", First: last - 9*h4.Milliseconds(), Last: last,
		Count: 10, Expected: 10, LastSync: t0.Add(-age)}
}

// setCounts sets every configured pair's stored count to n.
func setCounts(s *snapshot, n int64) {
	for p, c := range s.Coverage {
		c.Count = n
		s.Coverage[p] = c
	}
}

// healthy is a snapshot where every check passes.
func healthy() snapshot {
	pairs := []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}
	return snapshot{
		Now: t0, MaxStaleness: candles.DefaultMaxStaleness, Pairs: pairs,
		SchedulePeriod: 24 * time.Hour, SyncTimeout: 30 * time.Minute,
		DB: &candles.DatabaseHealth{FileBytes: 1_200_000, Candles: 20, DiskFreeBytes: 45_000_000_000, DiskSizeBytes: 250_000_000_000,
			QuickCheck: candles.CheckRun{OK: true, Seconds: 0.2}, IntegrityCheckAt: t0.Add(-time.Hour)},
		DBAt: t0, OwnerAnswering: true,
		Coverage: map[candles.Pair]candles.PairCoverage{
			pairs[0]: freshPair("BTCUSDT", 0), pairs[1]: freshPair("ETHUSDT", time.Hour),
		},
		CoverageAt: t0,
		Alive:      map[string]int{serviceFetcher: 2, serviceWriter: 1, serviceMonitor: 1},
		BackupSeen: true,
		LastSync:   &candles.SyncCompleted{StartedAt: t0.Add(-2 * time.Hour), FinishedAt: t0.Add(-2*time.Hour + time.Minute), PairsOK: 2, PairsTotal: 2},
		LastBackup: &candles.BackupCompleted{Tier: "hot", Verified: true, TakenAt: t0.Add(-3 * time.Hour)},
	}
}

const noDrillYet = "no restore drill yet (candlekeep drill, --drill-schedule)"

// goodDrill is a drill of two tiers that passed, finished at.
func goodDrill(at time.Time) *candles.DrillCompleted {
	return &candles.DrillCompleted{EventHeader: candles.EventHeader{Kind: candles.KindDrillCompleted}, OK: true,
		Recovery: candles.Recovery{Tier: "hot", Backup: "1.db.zst", StartedAt: at.Add(-3500 * time.Millisecond), FinishedAt: at, RTOSeconds: 3.5},
		Tiers: []candles.DrillTier{
			{Tier: "hot", Copy: "1.db.zst", OK: true, RTOSeconds: 1.5, Watermark: 42, Candles: 20},
			{Tier: "warm", Copy: "1.db.zst", OK: true, RTOSeconds: 2, Watermark: 42, Candles: 20},
		}}
}

// failedDrill is a drill whose hot tier did not restore, finished at.
func failedDrill(at time.Time) *candles.DrillCompleted {
	d := goodDrill(at)
	d.Kind, d.OK, d.RTOSeconds = candles.KindDrillFailed, false, 0.5
	d.Reason = "hot: no copy verifies (2 skipped)"
	d.Tiers[0] = candles.DrillTier{Tier: "hot", Error: "no copy verifies (2 skipped)"}
	return d
}

func TestChecks(t *testing.T) {
	tests := []struct {
		name    string
		change  func(s *snapshot)
		check   string
		status  candles.CheckStatus
		value   string
		details []string
		reason  string // a part of the reason
	}{
		{"freshness ok", nil, checkFreshness, candles.CheckOK, "newest candle of the stalest pair closed 1h0m0s ago", nil, "all 2 pairs fresh"},
		{"freshness fails past max-staleness", func(s *snapshot) { s.Coverage[s.Pairs[1]] = freshPair("ETHUSDT", 27*time.Hour) },
			checkFreshness, candles.CheckFail, "1/2 pairs stale", []string{"ETHUSDT/4h: newest candle closed 27h0m0s ago (limit 26h0m0s)"}, "1 of 2"},
		{"a short max-staleness gives a pair one interval + 2h", func(s *snapshot) {
			s.MaxStaleness = 30 * time.Minute
			s.Coverage[s.Pairs[1]] = freshPair("ETHUSDT", 7*time.Hour)
		}, checkFreshness, candles.CheckFail, "1/2 pairs stale", []string{"ETHUSDT/4h: newest candle closed 7h0m0s ago (limit 6h0m0s)"}, ""},
		{"a pair without candles is stale", func(s *snapshot) { delete(s.Coverage, s.Pairs[0]) },
			checkFreshness, candles.CheckFail, "1/2 pairs stale", []string{"BTCUSDT/4h: no candles"}, ""},
		{"freshness unknown before the owner answered", func(s *snapshot) { s.Coverage = nil },
			checkFreshness, candles.CheckUnknown, "unknown", nil, "has not answered yet"},
		{"coverage ok", nil, checkCoverage, candles.CheckOK, "2/2", nil, "complete"},
		{"coverage names the missing pairs", func(s *snapshot) {
			pc := freshPair("ETHUSDT", 0)
			pc.Count, pc.Missing = 9, []candles.Range{{From: pc.Last - h4.Milliseconds(), Until: pc.Last}}
			s.Coverage[s.Pairs[1]] = pc
			delete(s.Coverage, s.Pairs[0])
		}, checkCoverage, candles.CheckWarn, "0/2", []string{"BTCUSDT/4h: empty", "ETHUSDT/4h: 1 missing"}, "2 configured pairs"},
		{"integrity ok", nil, checkIntegrity, candles.CheckOK, "quick_check ok, integrity_check 1h0m0s ago", nil, "passed"},
		{"integrity damaged fails", func(s *snapshot) {
			s.DB.Damaged = &candles.IntegrityFailed{Check: "quick_check", Problems: []string{"page 4 is never used"}, DetectedAt: t0}
		}, checkIntegrity, candles.CheckFail, "damaged", []string{"page 4 is never used"}, "writes stopped"},
		{"integrity quick_check problems fail", func(s *snapshot) {
			s.DB.QuickCheck = candles.CheckRun{OK: false, Problems: []string{"row 3 missing from index"}}
		}, checkIntegrity, candles.CheckFail, "quick_check failed", []string{"row 3 missing from index"}, ""},
		{"integrity_check older than 25h warns", func(s *snapshot) { s.DB.IntegrityCheckAt = t0.Add(-26 * time.Hour) },
			checkIntegrity, candles.CheckWarn, "quick_check ok, integrity_check 26h0m0s ago", nil, "over 25h"},
		{"an integrity.failed since the owner last answered fails", func(s *snapshot) {
			s.Damage = &candles.IntegrityFailed{Check: "query", Problems: []string{"database disk image is malformed"}, DetectedAt: t0}
		}, checkIntegrity, candles.CheckFail, "damaged", []string{"database disk image is malformed"}, "query found the database damaged"},
		{"an integrity.failed before the owner ever answered fails", func(s *snapshot) {
			s.DB = nil
			s.Damage = &candles.IntegrityFailed{Check: "quick_check", Problems: []string{"x"}, DetectedAt: t0}
		}, checkIntegrity, candles.CheckFail, "damaged", []string{"x"}, ""},
		{"integrity unknown when the owner could not check", func(s *snapshot) { s.OwnerProblem = "candles.api.database answered 500: timeout" },
			checkIntegrity, candles.CheckUnknown, "unknown", nil, "could not check the file: candles.api.database answered 500: timeout"},
		{"integrity unknown before the owner answered", func(s *snapshot) { s.DB = nil }, checkIntegrity, candles.CheckUnknown, "unknown", nil, ""},
		{"size ok", nil, checkSize, candles.CheckOK, "1.2 MB, 20 candles, 45.0 GB free (18 %)", nil, "enough"},
		{"size fails with no rows", func(s *snapshot) { s.DB.Candles = 0; setCounts(s, 0) },
			checkSize, candles.CheckFail, "1.2 MB, 0 candles, 45.0 GB free (18 %)", nil, "no candles"},
		{"size fails under half of expected", func(s *snapshot) { s.DB.Candles = 9; setCounts(s, 4) },
			checkSize, candles.CheckFail, "1.2 MB, 9 candles, 45.0 GB free (18 %)", nil, "fewer than half of the 20"},
		{"size warns under 10% free", func(s *snapshot) { s.DB.DiskFreeBytes = 20_000_000_000 },
			checkSize, candles.CheckWarn, "1.2 MB, 20 candles, 20.0 GB free (8 %)", nil, "filling up"},
		{"size fails under 2% free", func(s *snapshot) { s.DB.DiskFreeBytes = 2_000_000_000 },
			checkSize, candles.CheckFail, "1.2 MB, 20 candles, 2.0 GB free (0 %)", nil, "almost full"},
		{"backup ok", nil, checkBackup, candles.CheckOK, "3h0m0s ago (hot)", []string{noDrillYet}, "recent"},
		{"backup older than 26h fails", func(s *snapshot) { s.LastBackup.TakenAt = t0.Add(-27 * time.Hour) },
			checkBackup, candles.CheckFail, "27h0m0s ago (hot)", []string{noDrillYet}, "older than 26h"},
		{"no backup service warns", func(s *snapshot) { s.LastBackup, s.BackupSeen = nil, false },
			checkBackup, candles.CheckWarn, "none", nil, "no backups configured"},
		{"a backup service without backups fails", func(s *snapshot) { s.LastBackup = nil },
			checkBackup, candles.CheckFail, "none", []string{noDrillYet}, "no verified backup"},
		{"a drill that passed reports its RTO", func(s *snapshot) {
			s.LastDrill, s.LastGoodDrill = goodDrill(t0.Add(-48*time.Hour)), goodDrill(t0.Add(-48*time.Hour))
		},
			checkBackup, candles.CheckOK, "3h0m0s ago (hot)", []string{
				"last restore drill passed at 2026-03-08T12:00:00Z (48h0m0s ago), RTO 3.5s",
				"hot: 1.db.zst restores in 1.5s, 20 candles (watermark 42)",
				"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)"}, "recent"},
		{"the newest drill failed fails, naming the tier and cause", func(s *snapshot) {
			s.LastGoodDrill = goodDrill(t0.Add(-48 * time.Hour))
			s.LastDrill = failedDrill(t0.Add(-time.Hour))
		}, checkBackup, candles.CheckFail, "3h0m0s ago (hot)", []string{
			"last restore drill failed at 2026-03-10T11:00:00Z (1h0m0s ago), RTO 0.5s",
			"hot: no copy verifies (2 skipped)",
			"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)",
			"last drill that passed: 2026-03-08T12:00:00Z"},
			"the restore drill of 2026-03-10T11:00:00Z failed: hot: no copy verifies (2 skipped)"},
		{"a failed drill and a stale backup fail with both reasons", func(s *snapshot) {
			s.LastBackup.TakenAt = t0.Add(-27 * time.Hour)
			s.LastDrill = failedDrill(t0.Add(-time.Hour))
		}, checkBackup, candles.CheckFail, "27h0m0s ago (hot)", []string{
			"last restore drill failed at 2026-03-10T11:00:00Z (1h0m0s ago), RTO 0.5s",
			"hot: no copy verifies (2 skipped)",
			"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)"},
			"the newest verified backup is older than 26h0m0s; the restore drill of 2026-03-10T11:00:00Z failed: hot: no copy verifies (2 skipped)"},
		{"no drill passed for 35 days warns", func(s *snapshot) {
			s.LastDrill, s.LastGoodDrill = goodDrill(t0.Add(-36*24*time.Hour)), goodDrill(t0.Add(-36*24*time.Hour))
		},
			checkBackup, candles.CheckWarn, "3h0m0s ago (hot)", []string{
				"last restore drill passed at 2026-02-02T12:00:00Z (864h0m0s ago), RTO 3.5s",
				"hot: 1.db.zst restores in 1.5s, 20 candles (watermark 42)",
				"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)"}, "no restore drill passed for 36d (limit 35d)"},
		{"backups older than 35 days and never a drill warns", func(s *snapshot) { s.FirstBackupAt = t0.Add(-40 * 24 * time.Hour) },
			checkBackup, candles.CheckWarn, "3h0m0s ago (hot)", []string{noDrillYet}, "backups exist since 2026-01-29 and no restore drill has passed (limit 35d)"},
		{"backups younger than 35 days and no drill yet is fine", func(s *snapshot) { s.FirstBackupAt = t0.Add(-30 * 24 * time.Hour) },
			checkBackup, candles.CheckOK, "3h0m0s ago (hot)", []string{noDrillYet}, "recent"},
		{"activity ok", nil, checkActivity, candles.CheckOK, "last sync completed 1h59m0s ago", nil, "every service answers"},
		{"activity fails without a recent sync", func(s *snapshot) { s.LastSync.FinishedAt = t0.Add(-25 * time.Hour) },
			checkActivity, candles.CheckFail, "last sync completed 25h0m0s ago", nil, "no sync completed for 25h0m0s (limit 24h40m0s)"},
		{"activity ignores syncs with the schedule off", func(s *snapshot) {
			s.LastSync.FinishedAt, s.SchedulePeriod = t0.Add(-25*time.Hour), 0
		}, checkActivity, candles.CheckOK, "last sync completed 25h0m0s ago", nil, ""},
		{"activity names the services down", func(s *snapshot) {
			s.Alive = map[string]int{serviceFetcher: 1}
			s.BackupServiceSeen = true
		}, checkActivity, candles.CheckFail, "last sync completed 1h59m0s ago",
			[]string{"writer not answering PING", "backup not answering PING"}, "services down: writer, backup"},
		{"activity fails when the owner stopped answering", func(s *snapshot) {
			s.OwnerAnswering, s.DBAt = false, t0.Add(-time.Minute)
		}, checkActivity, candles.CheckFail, "last sync completed 1h59m0s ago",
			[]string{"writer not answering candles.api.database since 2026-03-10T11:59:00Z"}, "writer not answering"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := healthy()
			if tt.change != nil {
				tt.change(&s)
			}
			cs := runChecks(s)
			i := slices.IndexFunc(cs, func(c candles.Check) bool { return c.Name == tt.check })
			if i < 0 {
				t.Fatalf("no %s check in %+v", tt.check, cs)
			}
			c := cs[i]
			if c.Status != tt.status || c.Value != tt.value || !slices.Equal(c.Details, tt.details) || !strings.Contains(c.Reason, tt.reason) {
				t.Errorf("%s = status %s value %q details %q reason %q; want %s %q %q reason containing %q",
					tt.check, c.Status, c.Value, c.Details, c.Reason, tt.status, tt.value, tt.details, tt.reason)
			}
		})
	}
}

func TestOverall(t *testing.T) {
	tests := []struct {
		name   string
		change func(s *snapshot)
		want   candles.CheckStatus
	}{
		{"all ok", nil, candles.CheckOK},
		{"owner never answered: cannot tell", func(s *snapshot) { s.DB, s.Coverage = nil, nil }, candles.CheckUnknown},
		{"worst wins", func(s *snapshot) { s.LastBackup, s.BackupSeen = nil, false; s.DB.Candles = 0; setCounts(s, 0) }, candles.CheckFail},
		{"a stale recount is not a missing table", func(s *snapshot) { s.DB.Candles = 0 }, candles.CheckOK},
		{"a warning", func(s *snapshot) { s.LastBackup, s.BackupSeen = nil, false }, candles.CheckWarn},
		{"coverage never answered: unknown", func(s *snapshot) { s.Coverage = nil }, candles.CheckUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := healthy()
			if tt.change != nil {
				tt.change(&s)
			}
			if got := overall(s, runChecks(s)); got != tt.want {
				t.Errorf("overall = %s, want %s (checks %+v)", got, tt.want, runChecks(s))
			}
		})
	}
}

func TestETA(t *testing.T) {
	r := candles.RunStatus{PairsTotal: 60, PairsDone: 15, StartedAt: t0}
	if got, want := eta(r, t0.Add(10*time.Second)), t0.Add(40*time.Second); !got.Equal(want) {
		t.Errorf("eta = %s, want %s", got, want)
	}
	r.PairsDone = 0
	if got := eta(r, t0.Add(10*time.Second)); !got.IsZero() {
		t.Errorf("eta before the first pair = %s, want none", got)
	}
}
