package monitor

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/testclock"
)

// TestDrillEventsDriveTheBackupCheckAndMetrics feeds real drill.failed and
// drill.completed events through EVENTS: the backup check fails naming the
// tier and the cause while the newest drill failed, passes again after a
// good drill and reports its RTO; the drill metrics follow; and a monitor
// started later (the drills older than its replayed hour) knows the newest
// drill from the stream's last messages.
func TestDrillEventsDriveTheBackupCheckAndMetrics(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	healthyUp(t, s, f)
	waitReport(t, r, statusIs(candles.CheckOK))

	failed := failedDrill(f.T0.Add(-10 * time.Minute))
	failed.EventHeader = candles.NewHeader(candles.KindDrillFailed, "")
	s.publish(failed)
	wantReason := "the restore drill of " + failed.FinishedAt.Format(time.RFC3339) + " failed: hot: no copy verifies (2 skipped)"
	rep := waitReport(t, r, func(rep candles.HealthReport) error {
		if c := checkOf(rep, checkBackup); c.Status != candles.CheckFail || c.Reason != wantReason {
			return fmt.Errorf("backup check %s %q, want fail %q", c.Status, c.Reason, wantReason)
		}
		return nil
	})
	if rep.Status != candles.CheckFail {
		t.Errorf("overall %s with a failed drill, want fail", rep.Status)
	}
	wantDetails := []string{
		"last restore drill failed at " + failed.FinishedAt.Format(time.RFC3339) + " (10m0s ago), RTO 0.5s",
		"hot: no copy verifies (2 skipped)",
		"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)",
	}
	if c := checkOf(rep, checkBackup); !slices.Equal(c.Details, wantDetails) {
		t.Errorf("backup details %q, want %q", c.Details, wantDetails)
	}
	waitMetrics(t, r, map[string]float64{
		"candlekeep_drill_last_ok":                     0,
		"candlekeep_drill_failures_total":              1,
		"candlekeep_drill_last_rto_seconds":            0.5,
		"candlekeep_drill_last_timestamp_seconds":      float64(failed.FinishedAt.Unix()),
		`candlekeep_health_check_status{check=backup}`: 2,
	}, "candlekeep_drill_last_success_timestamp_seconds")

	good := goodDrill(f.T0.Add(-time.Minute))
	good.EventHeader = candles.NewHeader(candles.KindDrillCompleted, "")
	s.publish(good)
	rep = waitReport(t, r, statusIs(candles.CheckOK))
	wantDetails = []string{
		"last restore drill passed at " + good.FinishedAt.Format(time.RFC3339) + " (1m0s ago), RTO 3.5s",
		"hot: 1.db.zst restores in 1.5s, 20 candles (watermark 42)",
		"warm: 1.db.zst restores in 2.0s, 20 candles (watermark 42)",
	}
	if c := checkOf(rep, checkBackup); c.Reason != "a verified backup is recent" || !slices.Equal(c.Details, wantDetails) {
		t.Errorf("backup check after a good drill: reason %q details %q, want details %q", c.Reason, c.Details, wantDetails)
	}
	passed := map[string]float64{
		"candlekeep_drill_last_ok":                        1,
		"candlekeep_drill_failures_total":                 1,
		"candlekeep_drill_last_rto_seconds":               3.5,
		"candlekeep_drill_last_timestamp_seconds":         float64(good.FinishedAt.Unix()),
		"candlekeep_drill_last_success_timestamp_seconds": float64(good.FinishedAt.Unix()),
		`candlekeep_health_check_status{check=backup}`:    0,
	}
	waitMetrics(t, r, passed)
	r.stop()

	// Two hours on, the drills are older than the replayed hour: the
	// restarted monitor reads the newest of each kind and keeps the newer.
	later := startMonitor(t, s, testclock.New(f.T0.Add(2*time.Hour)), nil)
	delete(passed, "candlekeep_drill_failures_total") // counted only within the replayed hour
	delete(passed, `candlekeep_health_check_status{check=backup}`)
	waitMetrics(t, later, passed)
}

// waitMetrics waits until /metrics has every series of want with its value
// (a name with {check=x} names that label) and none of absent.
func waitMetrics(t *testing.T, r *running, want map[string]float64, absent ...string) {
	t.Helper()
	checkfor.Check(t, waitFor, pollGap, func() error {
		mfs := r.metrics(t)
		for name, v := range want {
			var labels []string
			if i := len("candlekeep_health_check_status"); len(name) > i && name[:i] == "candlekeep_health_check_status" {
				labels = []string{"check", name[i+len("{check=") : len(name)-1]}
				name = name[:i]
			}
			got, ok := value(mfs, name, labels...)
			if !ok || got != v {
				return fmt.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, v)
			}
		}
		for _, name := range absent {
			if _, ok := value(mfs, name); ok {
				return fmt.Errorf("%s present, want none", name)
			}
		}
		return nil
	})
}
