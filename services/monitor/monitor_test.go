package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/testclock"
)

// fixture is a healthy system's answers at the clock's start T0.
type fixture struct {
	T0       time.Time
	DB       candles.DatabaseHealth
	Coverage []candles.PairCoverage
	Sync     *candles.SyncCompleted
	Backup   *candles.BackupCompleted
	Fetcher  candles.FetcherStats
}

// closeOf is the close time of the pair's newest candle.
func (f fixture) closeOf(i int) time.Time {
	return time.UnixMilli(f.Coverage[i].Last).Add(4 * time.Hour)
}

func newFixture() fixture {
	t0 := time.Now().UTC().Truncate(time.Second)
	iv, _ := candles.ParseInterval("4h")
	pair := func(sym string, ago int) candles.PairCoverage {
		last := iv.Align(t0.UnixMilli()) - int64(ago+1)*iv.Duration().Milliseconds()
		return candles.PairCoverage{Symbol: sym, Interval: "4h", First: last - 9*iv.Duration().Milliseconds(), Last: last,
			Count: 10, Expected: 10, LastSync: t0.Add(-time.Hour)}
	}
	return fixture{
		T0: t0,
		DB: candles.DatabaseHealth{V: 1, Database: "/data/candles.db", Holder: "w1", FileBytes: 1_200_000, WALBytes: 4096,
			Candles: 20, DiskFreeBytes: 45_000_000_000, DiskSizeBytes: 250_000_000_000,
			QuickCheck: candles.CheckRun{OK: true, Seconds: 0.25, At: t0}, IntegrityCheckAt: t0.Add(-time.Hour), At: t0},
		Coverage: []candles.PairCoverage{pair("BTCUSDT", 0), pair("ETHUSDT", 1)},
		Sync: &candles.SyncCompleted{EventHeader: candles.NewHeader(candles.KindSyncCompleted, "r1"), PairsTotal: 2, PairsOK: 2,
			Candles: 2, StartedAt: t0.Add(-61 * time.Minute), FinishedAt: t0.Add(-time.Hour)},
		Backup: &candles.BackupCompleted{EventHeader: candles.NewHeader(candles.KindBackupCompleted, ""), Tier: "hot",
			Location: "/backups/hot/1.db", Verified: true, TakenAt: t0.Add(-2 * time.Hour)},
		Fetcher: candles.FetcherStats{ID: "f1", Requests: 120, Errors: 3, RequestSeconds: 6.5, Weight: 240, UsedWeight: 37, WeightLimit: 6000},
	}
}

// healthyUp starts everything a healthy system answers with.
func healthyUp(t *testing.T, s *system, f fixture) *owner {
	s.publish(f.Sync)
	s.publish(f.Backup)
	startFetcher(t, s, f.Fetcher)
	return startOwner(t, s, f.DB, f.Coverage)
}

func TestHealthCannotTellUntilTheOwnerAnswersAndReportsLastKnownValues(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)

	checkfor.Check(t, waitFor, pollGap, func() error {
		if code, body := r.get(t, "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	code, rep := r.healthz(t)
	if code != http.StatusServiceUnavailable || rep.Status != candles.CheckUnknown {
		t.Fatalf("before any owner: /healthz %d %s, want 503 unknown", code, rep.Status)
	}
	for _, name := range []string{checkFreshness, checkCoverage, checkIntegrity, checkSize} {
		if c := checkOf(rep, name); c.Status != candles.CheckUnknown {
			t.Errorf("before any owner: %s is %s (%s), want unknown", name, c.Status, c.Reason)
		}
	}
	if got := apiHealth(t, s.nc); got.Status != candles.CheckUnknown {
		t.Errorf("before any owner: candles.api.health says %s, want unknown", got.Status)
	}

	o := healthyUp(t, s, f)
	waitReport(t, r, statusIs(candles.CheckOK))
	code, rep = r.healthz(t)
	if code != http.StatusOK || rep.Status != candles.CheckOK || len(rep.Checks) != 6 {
		t.Fatalf("owner answering: /healthz %d %s with %d checks, want 200 ok with 6", code, rep.Status, len(rep.Checks))
	}
	if got := apiHealth(t, s.nc); got.Status != candles.CheckOK {
		t.Errorf("owner answering: candles.api.health says %s, want ok", got.Status)
	}
	wantSize := "1.2 MB, 20 candles, 45.0 GB free (18 %)"
	if c := checkOf(rep, checkSize); c.Value != wantSize || !c.AsOf.Equal(f.T0) {
		t.Errorf("size check = %q as of %s, want %q as of %s", c.Value, c.AsOf, wantSize, f.T0)
	}
	o.mu.Lock()
	asked := slices.Clone(o.asked[0].Pairs)
	o.mu.Unlock()
	if want := []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}; !slices.Equal(asked, want) {
		t.Errorf("coverage asked for %v, want the configured pairs %v", asked, want)
	}

	// The owner stops: the last known values stay, with when they were
	// measured, and that it stopped answering is itself a finding.
	o.stop(t)
	waitReport(t, r, func(rep candles.HealthReport) error {
		if c := checkOf(rep, checkActivity); !strings.Contains(c.Reason, "writer not answering") {
			return fmt.Errorf("activity %s: %s", c.Status, c.Reason)
		}
		return nil
	})
	clock.Add(2 * time.Minute)
	rep = waitReport(t, r, func(rep candles.HealthReport) error {
		if !rep.At.Equal(f.T0.Add(2 * time.Minute)) {
			return fmt.Errorf("report at %s", rep.At)
		}
		return nil
	})
	if rep.Status != candles.CheckFail {
		t.Errorf("owner gone: status %s, want fail", rep.Status)
	}
	act := checkOf(rep, checkActivity)
	wantDetail := "writer not answering candles.api.database since " + f.T0.Format(time.RFC3339)
	if act.Status != candles.CheckFail || !slices.Contains(act.Details, wantDetail) || !slices.Contains(act.Details, "writer not answering PING") {
		t.Errorf("owner gone: activity %s %q, want fail naming %q and the writer's PING", act.Status, act.Details, wantDetail)
	}
	for _, name := range []string{checkIntegrity, checkSize, checkCoverage, checkFreshness} {
		c := checkOf(rep, name)
		if c.Status != candles.CheckOK || !c.AsOf.Equal(f.T0) {
			t.Errorf("owner gone: %s %s as of %s, want its last known ok as of %s", name, c.Status, c.AsOf, f.T0)
		}
	}
	if c := checkOf(rep, checkSize); c.Value != wantSize {
		t.Errorf("owner gone: size %q, want the last known %q", c.Value, wantSize)
	}
	if code, _ := r.healthz(t); code != http.StatusServiceUnavailable {
		t.Errorf("owner gone: /healthz %d, want 503", code)
	}
}

func TestMetricsExactValues(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	ctx := context.Background()
	// The writer's CANDLES consumer: two batches, one applied (acked).
	cons, err := s.js.CreateOrUpdateConsumer(ctx, candles.StreamCandles, jetstream.ConsumerConfig{Durable: "writer", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.js.Publish(ctx, candles.BatchSubject("4h", "BTCUSDT"), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := cons.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	for msg := range batch.Messages() {
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s.publish(&candles.PairCompleted{EventHeader: candles.NewHeader(candles.KindPairCompleted, "r1"), Symbol: "BTCUSDT", Interval: "4h", Candles: 7})
	s.publish(&candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, "r1"), Symbol: "ETHUSDT", Interval: "4h", Reason: "x"})

	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	healthyUp(t, s, f)
	if err := s.nc.Publish(maxDeliveriesPrefix+"JOBS.fetcher-jobs", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	var mfs map[string]*dto.MetricFamily
	checkfor.Check(t, waitFor, pollGap, func() error {
		mfs = r.metrics(t)
		if v, _ := value(mfs, "candlekeep_jetstream_max_deliveries_total", "stream", "JOBS", "consumer", "fetcher-jobs"); v != 1 {
			return fmt.Errorf("max deliveries %v", v)
		}
		if v, ok := value(mfs, "candlekeep_health_check_status", "check", "activity"); !ok || v != 0 {
			return fmt.Errorf("activity %v %v", v, ok)
		}
		if _, ok := value(mfs, "candlekeep_fetcher_requests_total", "fetcher", "f1"); !ok {
			return fmt.Errorf("no fetcher stats yet")
		}
		if v, _ := value(mfs, "candlekeep_consumer_pending_messages", "stream", "CANDLES", "consumer", "writer"); v != 1 {
			return fmt.Errorf("consumer pending %v", v)
		}
		return nil
	})
	unix := func(t time.Time) float64 { return float64(t.Unix()) }
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"candlekeep_pair_staleness_seconds", []string{"symbol", "BTCUSDT", "interval", "4h"}, f.T0.Sub(f.closeOf(0)).Seconds()},
		{"candlekeep_pair_staleness_seconds", []string{"symbol", "ETHUSDT", "interval", "4h"}, f.T0.Sub(f.closeOf(1)).Seconds()},
		{"candlekeep_pair_staleness_limit_seconds", []string{"symbol", "BTCUSDT", "interval", "4h"}, 26 * 3600},
		{"candlekeep_pairs_configured", nil, 2},
		{"candlekeep_pairs_complete", nil, 2},
		{"candlekeep_db_integrity_ok", nil, 1},
		{"candlekeep_sync_timeouts_total", nil, 0},
		{"candlekeep_service_up", []string{"service", "fetcher"}, 1},
		{"candlekeep_service_up", []string{"service", "writer"}, 1},
		{"candlekeep_service_up", []string{"service", "monitor"}, 1},
		{"candlekeep_backup_last_success_timestamp_seconds", nil, unix(f.Backup.TakenAt)},
		{"candlekeep_backup_age_seconds", nil, 7200},
		{"candlekeep_ratelimit_hits_total", nil, 0},
		{"candlekeep_ratelimit_bans_total", nil, 0},
		{"candlekeep_last_sync_duration_seconds", nil, 60},
		{"candlekeep_last_sync_timestamp_seconds", nil, unix(f.Sync.FinishedAt)},
		{"candlekeep_last_sync_pairs_ok", nil, 2},
		{"candlekeep_last_sync_pairs_total", nil, 2},
		{"candlekeep_disk_free_bytes", nil, 45e9},
		{"candlekeep_disk_size_bytes", nil, 250e9},
		{"candlekeep_pair_failures_total", nil, 1},
		{"candlekeep_batches_rejected_total", nil, 0},
		{"candlekeep_candles_stored", nil, 20},
		{"candlekeep_candles_written_total", nil, 7},
		{"candlekeep_sync_runs_total", []string{"outcome", "completed"}, 1},
		{"candlekeep_sync_runs_total", []string{"outcome", "failed"}, 0},
		{"candlekeep_sync_runs_total", []string{"outcome", "timeout"}, 0},
		{"candlekeep_runs_in_progress", nil, 0},
		{"candlekeep_batches_applied_total", nil, 1},
		{"candlekeep_consumer_pending_messages", []string{"stream", "CANDLES", "consumer", "writer"}, 1},
		{"candlekeep_consumer_ack_pending_messages", []string{"stream", "CANDLES", "consumer", "writer"}, 0},
		{"candlekeep_consumer_redelivered_messages", []string{"stream", "CANDLES", "consumer", "writer"}, 0},
		{"candlekeep_jetstream_max_deliveries_total", []string{"stream", "JOBS", "consumer", "fetcher-jobs"}, 1},
		{"candlekeep_jetstream_max_deliveries_total", []string{"stream", "CANDLES", "consumer", "writer"}, 0},
		{"candlekeep_fetcher_requests_total", []string{"fetcher", "f1"}, 120},
		{"candlekeep_fetcher_request_errors_total", []string{"fetcher", "f1"}, 3},
		{"candlekeep_fetcher_request_seconds_total", []string{"fetcher", "f1"}, 6.5},
		{"candlekeep_fetcher_weight_total", []string{"fetcher", "f1"}, 240},
		{"candlekeep_weight_used", nil, 37},
		{"candlekeep_weight_limit", nil, 6000},
		{"candlekeep_ratelimit_banned", nil, 0},
		{"candlekeep_db_size_bytes", nil, 1_200_000},
		{"candlekeep_db_wal_bytes", nil, 4096},
		{"candlekeep_db_quick_check_seconds", nil, 0.25},
		{"candlekeep_db_integrity_check_timestamp_seconds", nil, unix(f.DB.IntegrityCheckAt)},
		{"candlekeep_events_total", []string{"kind", "sync.completed"}, 1},
		{"candlekeep_events_total", []string{"kind", "pair.completed"}, 1},
		{"candlekeep_events_total", []string{"kind", "ratelimit.hit"}, 0},
		{"candlekeep_events_invalid_total", nil, 0},
		{"candlekeep_owner_last_seen_timestamp_seconds", nil, unix(f.T0)},
	}
	for _, c := range checkNames {
		want = append(want, struct {
			name   string
			labels []string
			value  float64
		}{"candlekeep_health_check_status", []string{"check", c}, 0})
	}
	for _, w := range want {
		got, ok := value(mfs, w.name, w.labels...)
		if !ok || got != w.value {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	if _, ok := value(mfs, "candlekeep_service_up", "service", "backup"); ok {
		t.Error("candlekeep_service_up{service=backup} present though no backup service ever answered")
	}
	h := mfs["candlekeep_sync_duration_seconds"]
	if h == nil || len(h.Metric) != 1 || h.Metric[0].Histogram == nil {
		t.Fatalf("candlekeep_sync_duration_seconds: %v", h)
	}
	hist := h.Metric[0].Histogram
	if hist.GetSampleCount() != 1 || hist.GetSampleSum() != 60 {
		t.Errorf("sync duration histogram: count %d sum %v, want 1 and 60", hist.GetSampleCount(), hist.GetSampleSum())
	}
	for _, b := range hist.Bucket {
		want := uint64(0)
		if b.GetUpperBound() >= 60 {
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("sync duration bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

func TestInvalidEventsAreCountedAndNeverFatal(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	healthyUp(t, s, f)
	waitReport(t, r, statusIs(candles.CheckOK))

	ctx := context.Background()
	for subject, data := range map[string]string{
		candles.EventSubject(candles.KindSyncCompleted): `not json`,
		candles.EventSubject("foo.bar"):                 `{"v":1,"kind":"foo.bar","time":"2026-01-01T00:00:00Z"}`,
		candles.EventSubject(candles.KindPairFailed):    `{"kind":"pair.failed","symbol":"BTCUSDT"}`,
		candles.EventSubject(candles.KindRateLimitHit):  `{"v":1,"kind":"ratelimit.hit","used_weight":"many"}`,
	} {
		if _, err := s.js.Publish(ctx, subject, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	s.publish(&candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, ""), UsedWeight: 6100})

	checkfor.Check(t, waitFor, pollGap, func() error {
		mfs := r.metrics(t)
		inv, _ := value(mfs, "candlekeep_events_invalid_total")
		hits, _ := value(mfs, "candlekeep_ratelimit_hits_total")
		if inv != 4 || hits != 1 {
			return fmt.Errorf("invalid %v, ratelimit hits %v; want 4 and 1", inv, hits)
		}
		return nil
	})
	// Still evaluating: a later clock reaches the report.
	clock.Add(time.Minute)
	waitReport(t, r, func(rep candles.HealthReport) error {
		if !rep.At.Equal(f.T0.Add(time.Minute)) || rep.Status != candles.CheckOK {
			return fmt.Errorf("report %s at %s", rep.Status, rep.At)
		}
		return nil
	})
	if v, _ := value(r.metrics(t), "candlekeep_sync_runs_total", "outcome", "completed"); v != 1 {
		t.Errorf("sync runs completed = %v, want 1 (the malformed sync.completed is not one)", v)
	}
}

func TestStatusListsRunningAndFinishedRuns(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	f.DB.Runs = []candles.RunProgress{{RunID: "r3", PairsTotal: 60, PairsDone: 15, Candles: 150, StartedAt: f.T0.Add(-10 * time.Second)}}
	deadline := f.T0.Add(30 * time.Minute)
	s.publish(&candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "r3"), PairsTotal: 60, Reason: "schedule", Deadline: deadline})
	s.publish(&candles.SyncFailed{EventHeader: candles.EventHeader{Kind: candles.KindSyncFailed, RunID: "r0", Time: f.T0.Add(-3 * time.Hour)}, Reason: "no exchange"})
	s.publish(&candles.SyncTimeout{EventHeader: candles.EventHeader{Kind: candles.KindSyncTimeout, RunID: "r2", Time: f.T0.Add(-30 * time.Minute)},
		Deadline: f.T0.Add(-30 * time.Minute), PairsOK: 50, PairsFailed: 2})
	startMonitor(t, s, clock, nil)
	healthyUp(t, s, f) // publishes r1's sync.completed last

	var rep candles.StatusReport
	checkfor.Check(t, waitFor, pollGap, func() error {
		msg, err := s.nc.Request(candles.SubjectAPIStatus, nil, 5*time.Second)
		if err != nil {
			return err
		}
		rep = candles.StatusReport{}
		if err := json.Unmarshal(msg.Data, &rep); err != nil {
			return err
		}
		if len(rep.Running) != 1 || len(rep.Recent) != 3 {
			return fmt.Errorf("%d running, %d recent", len(rep.Running), len(rep.Recent))
		}
		return nil
	})
	wantRunning := candles.RunStatus{RunID: "r3", Reason: "schedule", PairsTotal: 60, PairsDone: 15, Candles: 150,
		StartedAt: f.T0.Add(-10 * time.Second), Deadline: deadline, ETA: f.T0.Add(30 * time.Second), Outcome: "running"}
	if got := rep.Running[0]; !sameRun(got, wantRunning) {
		t.Errorf("running = %+v, want %+v", got, wantRunning)
	}
	var got []string
	for _, r := range rep.Recent {
		got = append(got, r.RunID+":"+r.Outcome)
	}
	if want := []string{"r1:completed", "r2:timeout", "r0:failed"}; !slices.Equal(got, want) {
		t.Errorf("recent runs = %v, want newest first %v", got, want)
	}
	if c := rep.Recent[0]; c.PairsTotal != 2 || c.PairsDone != 2 || !c.FinishedAt.Equal(f.Sync.FinishedAt) {
		t.Errorf("r1 = %+v, want 2/2 pairs finished at %s", c, f.Sync.FinishedAt)
	}
	if c := rep.Recent[1]; c.PairsDone != 52 || c.PairsFailed != 2 {
		t.Errorf("r2 = %+v, want 52 pairs done, 2 failed", c)
	}
}

func sameRun(a, b candles.RunStatus) bool {
	return a.RunID == b.RunID && a.Reason == b.Reason && a.PairsTotal == b.PairsTotal && a.PairsDone == b.PairsDone &&
		a.Candles == b.Candles && a.StartedAt.Equal(b.StartedAt) && a.Deadline.Equal(b.Deadline) && a.ETA.Equal(b.ETA) && a.Outcome == b.Outcome
}

// backfillRecorder records what the replay appends to the rules' History.
type backfillRecorder struct {
	mu    sync.Mutex
	times []time.Time
	hits  []float64
}

func (b *backfillRecorder) wrap(m *Monitor) {
	next := m.appendHistory
	m.appendHistory = func(t time.Time, mfs []*dto.MetricFamily) {
		if !m.isReady() {
			v := -1.0
			for _, mf := range mfs {
				if mf.GetName() == "candlekeep_ratelimit_hits_total" {
					v = mf.Metric[0].GetCounter().GetValue()
				}
			}
			b.mu.Lock()
			b.times, b.hits = append(b.times, t), append(b.hits, v)
			b.mu.Unlock()
		}
		next(t, mfs)
	}
}

func TestRestartReplaysTheLastHour(t *testing.T) {
	s := newSystem(t)
	hit := func() {
		s.publish(&candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, ""), UsedWeight: 6100})
	}
	first := startMonitor(t, s, nil, nil)
	hit()
	hit()
	checkfor.Check(t, waitFor, pollGap, func() error {
		if v, _ := value(first.metrics(t), "candlekeep_ratelimit_hits_total"); v != 2 {
			return fmt.Errorf("first monitor counts %v hits", v)
		}
		return nil
	})
	first.stop()
	hit()

	var rec backfillRecorder
	second := startMonitor(t, s, nil, nil, rec.wrap)
	waitReplayed(t, second, 3)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	// One sample a minute over the replayed hour: 0 an hour ago, every hit
	// (all published in the last seconds) in the last one.
	if len(rec.times) != 61 {
		t.Fatalf("backfill: %d samples, want 61 (one a minute over the hour)", len(rec.times))
	}
	for i, tm := range rec.times {
		if i > 0 && tm.Sub(rec.times[i-1]) != time.Minute {
			t.Errorf("backfill sample %d at %s, %s after the previous, want 1m", i, tm, tm.Sub(rec.times[i-1]))
		}
		want := 0.0
		if i == len(rec.times)-1 {
			want = 3
		}
		if rec.hits[i] != want {
			t.Errorf("backfill sample %d (%s): ratelimit hits %v, want %v", i, tm, rec.hits[i], want)
		}
	}
	// With the real History (rules.NewHistory), its Querier sees the hour's
	// increase; the stub History answers no Querier yet.
	if q := second.m.hist.At(time.Now()); q != nil {
		inc := q.Increase("candlekeep_ratelimit_hits_total", time.Hour)
		if len(inc) != 1 || inc[0].Value < 3 {
			t.Errorf("History increase over 1h = %+v, want 3", inc)
		}
	}
}

// waitReplayed waits until r is ready (its replay done) and counts hits
// rate-limit hits.
func waitReplayed(t *testing.T, r *running, hits float64) {
	t.Helper()
	checkfor.Check(t, waitFor, pollGap, func() error {
		if ok, why := r.m.ready(); !ok {
			return fmt.Errorf("not ready: %s", why)
		}
		if v, _ := value(r.metrics(t), "candlekeep_ratelimit_hits_total"); v != hits {
			return fmt.Errorf("the monitor counts %v rate-limit hits, want %v", v, hits)
		}
		return nil
	})
}

// TestReplayWithAClockBehindTheServer: the server stamps the events; a
// monitor whose clock is a month behind still replays one hour (a sample a
// minute up to its now), not one sample per minute of the difference
// (44,000 of them, which kept a monitor from evaluating for seconds), and
// counts the event.
func TestReplayWithAClockBehindTheServer(t *testing.T) {
	s := newSystem(t)
	s.publish(&candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, ""), UsedWeight: 6100})
	clock := testclock.New(time.Now().Add(-30 * 24 * time.Hour))
	var rec backfillRecorder
	r := startMonitor(t, s, clock, nil, rec.wrap)
	waitReplayed(t, r, 1)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	// The clock stands still: samples from an hour back up to the minute
	// before now (the first live evaluation appends the one at now).
	if len(rec.times) != 60 {
		t.Fatalf("backfill: %d samples, want 60 (one a minute over the hour before the monitor's now)", len(rec.times))
	}
	if first, last := rec.times[0], rec.times[len(rec.times)-1]; !first.Equal(clock.Now().Add(-time.Hour)) || !last.Before(clock.Now()) {
		t.Errorf("backfill samples from %s to %s, want from an hour before %s to before it", first, last, clock.Now())
	}
}

func TestBanStateFromEvents(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	s.publish(&candles.RateLimitBanned{EventHeader: candles.NewHeader(candles.KindRateLimitBanned, ""), Until: f.T0.Add(5 * time.Minute), RetryAfter: 300})
	waitMetrics := func(banned, bans float64) {
		t.Helper()
		checkfor.Check(t, waitFor, pollGap, func() error {
			mfs := r.metrics(t)
			b, _ := value(mfs, "candlekeep_ratelimit_banned")
			n, _ := value(mfs, "candlekeep_ratelimit_bans_total")
			if b != banned || n != bans {
				return fmt.Errorf("banned %v, bans %v; want %v and %v", b, n, banned, bans)
			}
			return nil
		})
	}
	waitMetrics(1, 1)
	clock.Add(6 * time.Minute) // the ban is over
	waitMetrics(0, 1)
}

func TestEventsStreamReplacedKeepsCounting(t *testing.T) {
	s := newSystem(t)
	r := startMonitor(t, s, nil, nil)
	hit := func() {
		s.publish(&candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, ""), UsedWeight: 6100})
	}
	waitHits := func(want float64) {
		t.Helper()
		checkfor.Check(t, waitFor, pollGap, func() error {
			if v, _ := value(r.metrics(t), "candlekeep_ratelimit_hits_total"); v != want {
				return fmt.Errorf("%v hits, want %v", v, want)
			}
			return nil
		})
	}
	hit()
	hit()
	waitHits(2)
	ctx := context.Background()
	if err := s.js.DeleteStream(ctx, candles.StreamEvents); err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(ctx, s.js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// Events keep coming on the new stream: the first one is not lost, and
	// the old ones are not counted again.
	hit()
	waitHits(3)
	hit()
	waitHits(4)
}

func TestIntegrityFailedStandsUntilTheOwnerAnswersAgain(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	o := healthyUp(t, s, f)
	waitReport(t, r, statusIs(candles.CheckOK))

	// The owner goes silent, and the last thing it said was that the file is damaged.
	o.stop(t)
	s.publish(&candles.IntegrityFailed{EventHeader: candles.NewHeader(candles.KindIntegrityFailed, ""), Database: "/data/candles.db",
		Check: "query", Problems: []string{"database disk image is malformed"}, DetectedAt: f.T0})
	rep := waitReport(t, r, func(rep candles.HealthReport) error {
		if c := checkOf(rep, checkIntegrity); c.Status != candles.CheckFail {
			return fmt.Errorf("integrity %s: %s", c.Status, c.Reason)
		}
		return nil
	})
	if c := checkOf(rep, checkIntegrity); !slices.Equal(c.Details, []string{"database disk image is malformed"}) {
		t.Errorf("integrity details %q, want the event's problems", c.Details)
	}
	checkfor.Check(t, waitFor, pollGap, func() error {
		if v, ok := value(r.metrics(t), "candlekeep_db_integrity_ok"); !ok || v != 0 {
			return fmt.Errorf("db_integrity_ok %v (present %v), want 0", v, ok)
		}
		return nil
	})

	// A (restored) database's owner answers healthy: its word stands.
	startOwner(t, s, f.DB, f.Coverage)
	waitReport(t, r, statusIs(candles.CheckOK))
	checkfor.Check(t, waitFor, pollGap, func() error {
		if v, _ := value(r.metrics(t), "candlekeep_db_integrity_ok"); v != 1 {
			return fmt.Errorf("db_integrity_ok %v, want 1", v)
		}
		return nil
	})
}

func TestOwnerErrorAnswerMeansCannotTellTheFilesState(t *testing.T) {
	s := newSystem(t)
	f := newFixture()
	clock := testclock.New(f.T0)
	r := startMonitor(t, s, clock, nil)
	o := healthyUp(t, s, f)
	waitReport(t, r, statusIs(candles.CheckOK))

	o.fail("500", "quick_check did not finish within 30s")
	rep := waitReport(t, r, statusIs(candles.CheckUnknown))
	c := checkOf(rep, checkIntegrity)
	if c.Status != candles.CheckUnknown || !strings.Contains(c.Reason, "quick_check did not finish within 30s") || !c.AsOf.Equal(f.T0) {
		t.Errorf("integrity %s %q as of %s, want unknown naming the owner's error, as of %s", c.Status, c.Reason, c.AsOf, f.T0)
	}
	if c := checkOf(rep, checkActivity); c.Status != candles.CheckOK {
		t.Errorf("activity %s %q: the owner answers, it is not down", c.Status, c.Reason)
	}

	o.fail("", "")
	waitReport(t, r, statusIs(candles.CheckOK))
}

// TestRestartBeforeTheOwnerAnswersKeepsTheAlert: inside `up` the monitor and
// the writer restart together. A monitor restarted while CandlekeepDataStale
// fires, evaluating before the database's owner answers again, neither
// resolves the alert for lack of data nor fires it a second time once the
// owner answers with the still-stale data: one incident, one FIRING.
func TestRestartBeforeTheOwnerAnswersKeepsTheAlert(t *testing.T) {
	s := newSystem(t)
	iv := candles.MustInterval("4h")
	last := iv.Align(time.Now().Add(-72 * time.Hour).UnixMilli())
	stale := []candles.PairCoverage{
		{Symbol: "BTCUSDT", Interval: "4h", First: iv.Add(last, -10), Last: last, Count: 11, Expected: 11},
		{Symbol: "ETHUSDT", Interval: "4h", First: iv.Add(last, -10), Last: last, Count: 11, Expected: 11},
	}
	fast := func(o *Options) { o.RuleTimeScale = 0.001 }
	count := func(kind string) int { t.Helper(); return alertEvents(t, s, kind, "CandlekeepDataStale") }
	firing := func(r *running) bool {
		for _, a := range r.m.Health().Firing {
			if a.Alert == "CandlekeepDataStale" {
				return true
			}
		}
		return false
	}
	// evaluated waits until r reported n evaluation intervals after since.
	evaluated := func(r *running, since time.Time, n int) {
		t.Helper()
		checkfor.Check(t, waitFor, pollGap, func() error {
			if at := r.m.Health().At; !at.After(since.Add(time.Duration(n) * 50 * time.Millisecond)) {
				return fmt.Errorf("last evaluation at %s", at)
			}
			return nil
		})
	}

	o := startOwner(t, s, candles.DatabaseHealth{V: 1, QuickCheck: candles.CheckRun{OK: true}}, stale)
	first := startMonitor(t, s, nil, fast)
	checkfor.Check(t, waitFor, pollGap, func() error {
		if n := count(candles.KindAlertFiring); n != 1 || !firing(first) {
			return fmt.Errorf("%d alert.firing, firing %v; want CandlekeepDataStale firing once", n, firing(first))
		}
		return nil
	})
	first.stop()
	o.stop(t)

	restarted := time.Now()
	second := startMonitor(t, s, nil, fast)
	evaluated(second, restarted, 10)
	if n := count(candles.KindAlertResolved); n != 0 || !firing(second) {
		t.Fatalf("before the owner answers: %d alert.resolved, firing %v; want the alert kept firing", n, firing(second))
	}
	answered := time.Now()
	startOwner(t, s, candles.DatabaseHealth{V: 1, QuickCheck: candles.CheckRun{OK: true}}, stale)
	evaluated(second, answered, 10)
	if f, r := count(candles.KindAlertFiring), count(candles.KindAlertResolved); f != 1 || r != 0 || !firing(second) {
		t.Fatalf("after the owner answers: %d alert.firing, %d alert.resolved, firing %v; want one incident still firing", f, r, firing(second))
	}
}

// alertEvents is how many kind events (alert.firing, alert.resolved) EVENTS
// holds for the rule alert.
func alertEvents(t *testing.T, s *system, kind, alert string) int {
	t.Helper()
	n := 0
	for _, msg := range eventMsgs(t, s, kind) {
		var ev candles.AlertEvent
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Alert == alert {
			n++
		}
	}
	return n
}

// TestRulesWaitForTheOwnerOnlySoLong: with no database owner at all, the
// alert rules wait OwnerGrace for its data and then evaluate without it
// (here a rate-limit hit fires CandlekeepRateLimitAbuse).
func TestRulesWaitForTheOwnerOnlySoLong(t *testing.T) {
	s := newSystem(t)
	startMonitor(t, s, nil, func(o *Options) { o.RuleTimeScale = 0.001; o.OwnerGrace = 300 * time.Millisecond })
	s.publish(&candles.RateLimitHit{EventHeader: candles.NewHeader(candles.KindRateLimitHit, ""), UsedWeight: 6100})
	checkfor.Check(t, waitFor, pollGap, func() error {
		if n := alertEvents(t, s, candles.KindAlertFiring, "CandlekeepRateLimitAbuse"); n != 1 {
			return fmt.Errorf("%d alert.firing for CandlekeepRateLimitAbuse, want 1", n)
		}
		return nil
	})
}
