package monitor

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// collector serves the monitor's view of the system (METRICS.md) as const
// metrics built from the last snapshot and the event counters at each
// scrape: with 10,000 pairs that is far cheaper than keeping 20,000
// GaugeVec children current, and a series disappears with its pair.
// The alert and notification metrics are registered by alerts and notify
// on the same Registry.
type collector struct {
	// state returns the last snapshot (nil before the first evaluation)
	// and a copy of the counters.
	state func() (*snapshot, counters)
	d     descs

	// The per-pair series of the last snapshot, built once per snapshot
	// (by the evaluation's own Gather) and sent as they are by scrapes.
	mu        sync.Mutex
	pairsOf   *snapshot
	pairs     []prometheus.Metric
	completed int
}

var _ prometheus.Collector = (*collector)(nil)

// descs are the metrics' descriptions, made once.
type descs struct {
	staleness, stalenessLimit                     *prometheus.Desc
	pairsConfigured, pairsComplete                *prometheus.Desc
	integrityOK, serviceUp                        *prometheus.Desc
	syncTimeouts, rlHits, rlBans                  *prometheus.Desc
	backupLastSuccess, backupAge                  *prometheus.Desc
	drillLastOK, drillLastTimestamp               *prometheus.Desc
	drillLastSuccess, drillLastRTO, drillFailures *prometheus.Desc
	lastSyncDuration, lastSyncTimestamp           *prometheus.Desc
	syncDuration                                  *prometheus.Desc
	lastSyncPairsOK, lastSyncPairsTotal           *prometheus.Desc
	diskFree, diskSize                            *prometheus.Desc
	pairFailures, batchesRejected                 *prometheus.Desc
	candlesStored, candlesWritten                 *prometheus.Desc
	syncRuns, runsInProgress, batchesApplied      *prometheus.Desc
	consumerPending, consumerAckPending           *prometheus.Desc
	consumerRedelivered, maxDeliveries            *prometheus.Desc
	fetcherRequests, fetcherErrors                *prometheus.Desc
	fetcherSeconds, fetcherWeight                 *prometheus.Desc
	weightUsed, weightLimit, banned               *prometheus.Desc
	dbSize, dbWAL, quickCheckSeconds, integrityAt *prometheus.Desc
	healthCheck, events, eventsInvalid, ownerSeen *prometheus.Desc
}

func newDescs() descs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("candlekeep_"+name, help, labels, nil)
	}
	consumer := []string{"stream", "consumer"}
	return descs{
		staleness:           d("pair_staleness_seconds", "Now minus the close time of the pair's newest stored candle.", "symbol", "interval"),
		stalenessLimit:      d("pair_staleness_limit_seconds", "The pair's freshness limit: max(--max-staleness, one interval + 2h).", "symbol", "interval"),
		pairsConfigured:     d("pairs_configured", "Pairs in the cluster configuration."),
		pairsComplete:       d("pairs_complete", "Configured pairs with complete, fresh data."),
		integrityOK:         d("db_integrity_ok", "1 when the database passed its checks, 0 when it is damaged."),
		serviceUp:           d("service_up", "1 when the service answers a micro service PING.", "service"),
		syncTimeouts:        d("sync_timeouts_total", "sync.timeout events."),
		rlHits:              d("ratelimit_hits_total", "ratelimit.hit events (HTTP 429 from the exchange)."),
		rlBans:              d("ratelimit_bans_total", "ratelimit.banned events (HTTP 418 from the exchange)."),
		backupLastSuccess:   d("backup_last_success_timestamp_seconds", "When the newest verified backup was taken."),
		backupAge:           d("backup_age_seconds", "Age of the newest verified backup."),
		drillLastOK:         d("drill_last_ok", "1 when the newest restore drill proved every tier restores, 0 when it failed."),
		drillLastTimestamp:  d("drill_last_timestamp_seconds", "When the newest restore drill finished."),
		drillLastSuccess:    d("drill_last_success_timestamp_seconds", "When the newest restore drill that passed finished."),
		drillLastRTO:        d("drill_last_rto_seconds", "Duration of the newest restore drill (every tier's fetch, verify and open)."),
		drillFailures:       d("drill_failures_total", "drill.failed events."),
		lastSyncDuration:    d("last_sync_duration_seconds", "Duration of the last completed sync."),
		lastSyncTimestamp:   d("last_sync_timestamp_seconds", "When the last completed sync finished."),
		syncDuration:        d("sync_duration_seconds", "Durations of completed syncs."),
		lastSyncPairsOK:     d("last_sync_pairs_ok", "Pairs synced ok by the last completed sync."),
		lastSyncPairsTotal:  d("last_sync_pairs_total", "Pairs of the last completed sync."),
		diskFree:            d("disk_free_bytes", "Free bytes on the database's volume."),
		diskSize:            d("disk_size_bytes", "Size of the database's volume."),
		pairFailures:        d("pair_failures_total", "pair.failed events."),
		batchesRejected:     d("batches_rejected_total", "batch.rejected events."),
		candlesStored:       d("candles_stored", "Rows in the candles table."),
		candlesWritten:      d("candles_written_total", "Candles written, summed from pair.completed events."),
		syncRuns:            d("sync_runs_total", "Finished sync runs by outcome.", "outcome"),
		runsInProgress:      d("runs_in_progress", "Sync runs in progress."),
		batchesApplied:      d("batches_applied_total", "Batches the writer applied (its CANDLES consumer's ack floor)."),
		consumerPending:     d("consumer_pending_messages", "Messages not yet delivered to the consumer (lag).", consumer...),
		consumerAckPending:  d("consumer_ack_pending_messages", "Messages delivered and not yet acknowledged.", consumer...),
		consumerRedelivered: d("consumer_redelivered_messages", "Messages delivered more than once and not yet acknowledged.", consumer...),
		maxDeliveries:       d("jetstream_max_deliveries_total", "JetStream MAX_DELIVERIES advisories.", consumer...),
		fetcherRequests:     d("fetcher_requests_total", "REST requests the fetcher sent.", "fetcher"),
		fetcherErrors:       d("fetcher_request_errors_total", "REST requests of the fetcher that failed.", "fetcher"),
		fetcherSeconds:      d("fetcher_request_seconds_total", "Summed round-trip time of the fetcher's requests.", "fetcher"),
		fetcherWeight:       d("fetcher_weight_total", "Request weight the fetcher reserved.", "fetcher"),
		weightUsed:          d("weight_used", "Exchange request weight used in the current window (max over fetchers)."),
		weightLimit:         d("weight_limit", "Exchange request weight limit per window."),
		banned:              d("ratelimit_banned", "1 while an exchange ban (418) pauses the fetchers."),
		dbSize:              d("db_size_bytes", "Size of the database file."),
		dbWAL:               d("db_wal_bytes", "Size of the database's write-ahead log."),
		quickCheckSeconds:   d("db_quick_check_seconds", "Duration of the last PRAGMA quick_check."),
		integrityAt:         d("db_integrity_check_timestamp_seconds", "When a full integrity_check last passed."),
		healthCheck:         d("health_check_status", "Health check status: 0 ok, 1 warn, 2 fail, 3 unknown.", "check"),
		events:              d("events_total", "Events read from the EVENTS stream by kind.", "kind"),
		eventsInvalid:       d("events_invalid_total", "Malformed or unknown events (ignored)."),
		ownerSeen:           d("owner_last_seen_timestamp_seconds", "When the database's owner last answered candles.api.database."),
	}
}

// Describe sends nothing: the collector is unchecked, its series vary with
// the configured pairs, fetchers and services.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

// Collect emits every metric from the last snapshot and the counters.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s, cn := c.state()
	c.collectCounters(ch, cn)
	if s != nil {
		c.collectSnapshot(ch, s)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

// collectCounters emits the counters counted from events, all present from
// the start at 0 so increase() sees the first event.
func (c *collector) collectCounters(ch chan<- prometheus.Metric, cn counters) {
	d := &c.d
	counter(ch, d.syncTimeouts, cn.SyncTimeouts)
	counter(ch, d.rlHits, cn.RateLimitHits)
	counter(ch, d.rlBans, cn.RateLimitBans)
	counter(ch, d.pairFailures, cn.PairFailures)
	counter(ch, d.batchesRejected, cn.BatchesRejected)
	counter(ch, d.drillFailures, cn.DrillFailures)
	counter(ch, d.candlesWritten, cn.CandlesWritten)
	counter(ch, d.eventsInvalid, cn.Invalid)
	for _, o := range []string{"completed", "failed", "timeout"} {
		counter(ch, d.syncRuns, cn.SyncRuns[o], o)
	}
	for _, k := range knownKinds {
		counter(ch, d.events, cn.Events[k], k)
	}
	for _, w := range watchedConsumers {
		counter(ch, d.maxDeliveries, cn.MaxDeliveries[w.Stream+"/"+w.Consumer], w.Stream, w.Consumer)
	}
	for key, v := range cn.MaxDeliveries {
		if !isWatched(key) {
			stream, consumer := splitKey(key)
			counter(ch, d.maxDeliveries, v, stream, consumer)
		}
	}
	buckets := make(map[float64]uint64, len(syncDurationBuckets))
	var cum uint64
	for i, b := range syncDurationBuckets {
		cum += cn.SyncDurationCounts[i]
		buckets[b] = cum
	}
	ch <- prometheus.MustNewConstHistogram(d.syncDuration, cn.SyncDurationCount, cn.SyncDurationSum, buckets)
}

func isWatched(key string) bool {
	for _, w := range watchedConsumers {
		if w.Stream+"/"+w.Consumer == key {
			return true
		}
	}
	return false
}

func splitKey(key string) (string, string) {
	for i := range len(key) {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return key, ""
}

// collectSnapshot emits the gauges of one evaluation.
func (c *collector) collectSnapshot(ch chan<- prometheus.Metric, s *snapshot) {
	d := &c.d
	gauge(ch, d.pairsConfigured, float64(len(s.Pairs)))
	if s.Coverage != nil {
		series, complete := c.pairSeries(s)
		for _, m := range series {
			ch <- m
		}
		gauge(ch, d.pairsComplete, float64(complete))
	}

	services := []string{serviceFetcher, serviceWriter, serviceMonitor}
	if s.BackupServiceSeen {
		services = append(services, serviceBackup)
	}
	for _, name := range services {
		up := 0.0
		if s.Alive[name] > 0 || name == serviceMonitor {
			up = 1
		}
		gauge(ch, d.serviceUp, up, name[len("candlekeep-"):])
	}

	switch {
	case s.Damage != nil:
		gauge(ch, d.integrityOK, 0)
	case s.DB != nil && (s.DB.Damaged != nil || !s.DB.QuickCheck.OK):
		gauge(ch, d.integrityOK, 0)
	case s.DB != nil:
		gauge(ch, d.integrityOK, 1)
	}
	if db := s.DB; db != nil {
		gauge(ch, d.diskFree, float64(db.DiskFreeBytes))
		gauge(ch, d.diskSize, float64(db.DiskSizeBytes))
		gauge(ch, d.candlesStored, float64(s.storedCandles()))
		gauge(ch, d.runsInProgress, float64(len(db.Runs)))
		gauge(ch, d.dbSize, float64(db.FileBytes))
		gauge(ch, d.dbWAL, float64(db.WALBytes))
		gauge(ch, d.quickCheckSeconds, db.QuickCheck.Seconds)
		if !db.IntegrityCheckAt.IsZero() {
			gauge(ch, d.integrityAt, unix(db.IntegrityCheckAt))
		}
		gauge(ch, d.ownerSeen, unix(s.DBAt))
	}

	if b := s.LastBackup; b != nil {
		gauge(ch, d.backupLastSuccess, unix(b.TakenAt))
		gauge(ch, d.backupAge, s.Now.Sub(b.TakenAt).Seconds())
	}
	if dr := s.LastDrill; dr != nil {
		ok := 1.0
		if drillFailed(dr) {
			ok = 0
		}
		gauge(ch, d.drillLastOK, ok)
		gauge(ch, d.drillLastTimestamp, unix(dr.FinishedAt))
		gauge(ch, d.drillLastRTO, dr.RTOSeconds)
	}
	if g := s.LastGoodDrill; g != nil {
		gauge(ch, d.drillLastSuccess, unix(g.FinishedAt))
	}
	if l := s.LastSync; l != nil {
		gauge(ch, d.lastSyncDuration, max(l.FinishedAt.Sub(l.StartedAt).Seconds(), 0))
		gauge(ch, d.lastSyncTimestamp, unix(l.FinishedAt))
		gauge(ch, d.lastSyncPairsOK, float64(l.PairsOK))
		gauge(ch, d.lastSyncPairsTotal, float64(l.PairsTotal))
	}

	for _, cs := range s.Consumers {
		if !cs.Found {
			continue
		}
		gauge(ch, d.consumerPending, float64(cs.Pending), cs.Stream, cs.Consumer)
		gauge(ch, d.consumerAckPending, float64(cs.AckPending), cs.Stream, cs.Consumer)
		gauge(ch, d.consumerRedelivered, float64(cs.Redelivered), cs.Stream, cs.Consumer)
		if cs.Stream == candles.StreamCandles && cs.Consumer == "writer" {
			counter(ch, d.batchesApplied, float64(cs.AckFloorConsumerSeq))
		}
	}

	var used, limit int
	banned := 0.0
	if s.BannedUntil.After(s.Now) {
		banned = 1 // announced by ratelimit.banned, even with no fetcher answering
	}
	for _, f := range s.Fetchers {
		counter(ch, d.fetcherRequests, float64(f.Requests), f.ID)
		counter(ch, d.fetcherErrors, float64(f.Errors), f.ID)
		counter(ch, d.fetcherSeconds, f.RequestSeconds, f.ID)
		counter(ch, d.fetcherWeight, float64(f.Weight), f.ID)
		used, limit = max(used, f.UsedWeight), max(limit, f.WeightLimit)
		if f.BannedUntil.After(s.Now) {
			banned = 1
		}
	}
	if len(s.Fetchers) > 0 {
		gauge(ch, d.weightUsed, float64(used))
		gauge(ch, d.weightLimit, float64(limit))
	}
	gauge(ch, d.banned, banned)

	for _, chk := range s.Checks {
		gauge(ch, d.healthCheck, statusValue(chk.Status), chk.Name)
	}
}

// pairSeries returns the per-pair staleness and limit series of s and how
// many pairs are complete: the hot path with 10,000 pairs, so built once
// per snapshot.
func (c *collector) pairSeries(s *snapshot) ([]prometheus.Metric, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pairsOf == s {
		return c.pairs, c.completed
	}
	d := &c.d
	out := make([]prometheus.Metric, 0, 2*len(s.Pairs))
	complete := 0
	for _, p := range s.Pairs {
		iv, err := candles.ParseInterval(p.Interval)
		if err != nil {
			continue
		}
		out = append(out, prometheus.MustNewConstMetric(d.stalenessLimit, prometheus.GaugeValue,
			candles.StalenessLimit(iv, s.MaxStaleness).Seconds(), p.Symbol, p.Interval))
		pc, ok := s.Coverage[p]
		if !ok {
			continue
		}
		if _, healthy := pc.Status(s.Now, s.MaxStaleness); healthy {
			complete++
		}
		if pc.Count > 0 {
			out = append(out, prometheus.MustNewConstMetric(d.staleness, prometheus.GaugeValue,
				pc.Staleness(s.Now).Seconds(), p.Symbol, p.Interval))
		}
	}
	c.pairsOf, c.pairs, c.completed = s, out, complete
	return out, complete
}

// statusValue is a check status as health_check_status' number.
func statusValue(s candles.CheckStatus) float64 {
	switch s {
	case candles.CheckOK:
		return 0
	case candles.CheckWarn:
		return 1
	case candles.CheckFail:
		return 2
	default:
		return 3
	}
}
