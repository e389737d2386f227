package rules

import "time"

// runbook is the docs/alerts.md anchor of a rule, the annotation rules.yml
// gives it.
func runbook(anchor string) string {
	return "https://github.com/candlekeep/candlekeep/blob/main/docs/alerts.md#" + anchor
}

// All returns candlekeep's eleven rules, in the order of rules.yml. Each Expr,
// Summary and Runbook is rules.yml's text word for word, and each Eval
// computes Expr by hand; TestRulesEqualRulesYML keeps them so.
func All() []Rule {
	return []Rule{
		{
			Name:     "CandlekeepDataStale",
			Severity: "critical",
			For:      5 * time.Minute,
			Expr:     "candlekeep_pair_staleness_seconds > candlekeep_pair_staleness_limit_seconds",
			Summary:  "{{ $labels.symbol }}/{{ $labels.interval }} has no new candle for {{ $value | humanizeDuration }}",
			Runbook:  runbook("candlekeepdatastale"),
			Eval: func(q Querier) []Sample {
				return match(q.Instant("candlekeep_pair_staleness_seconds"), q.Instant("candlekeep_pair_staleness_limit_seconds"),
					func(l, r float64) (float64, bool) { return l, l > r })
			},
		},
		{
			Name:     "CandlekeepDatabaseCorrupt",
			Severity: "critical",
			Expr:     "candlekeep_db_integrity_ok == 0",
			Summary:  "the candle database failed its integrity check; writes are stopped",
			Runbook:  runbook("candlekeepdatabasecorrupt"),
			Eval: func(q Querier) []Sample {
				return filter(q.Instant("candlekeep_db_integrity_ok"), func(v float64) bool { return v == 0 })
			},
		},
		{
			Name:     "CandlekeepSyncTimeout",
			Severity: "critical",
			Expr:     "increase(candlekeep_sync_timeouts_total[1h]) > 0",
			Summary:  "{{ $value | humanize }} sync run(s) hit their deadline in the last hour",
			Runbook:  runbook("candlekeepsynctimeout"),
			Window:   time.Hour,
			Eval: func(q Querier) []Sample {
				return filter(q.Increase("candlekeep_sync_timeouts_total", time.Hour), func(v float64) bool { return v > 0 })
			},
		},
		{
			Name:     "CandlekeepServiceDown",
			Severity: "critical",
			For:      2 * time.Minute,
			Expr:     "candlekeep_service_up == 0",
			Summary:  "the candlekeep {{ $labels.service }} service does not answer",
			Runbook:  runbook("candlekeepservicedown"),
			Eval: func(q Querier) []Sample {
				return filter(q.Instant("candlekeep_service_up"), func(v float64) bool { return v == 0 })
			},
		},
		{
			Name:     "CandlekeepBackupStale",
			Severity: "warning",
			For:      10 * time.Minute,
			Expr:     "time() - candlekeep_backup_last_success_timestamp_seconds > 26 * 3600",
			Summary:  "the newest verified backup is {{ $value | humanizeDuration }} old",
			Runbook:  runbook("candlekeepbackupstale"),
			Eval: func(q Querier) []Sample {
				// time() is the evaluation time in seconds, at millisecond precision.
				now := float64(q.Now().UnixMilli()) / 1000
				age := mapValues(q.Instant("candlekeep_backup_last_success_timestamp_seconds"), func(v float64) float64 { return now - v })
				return filter(age, func(v float64) bool { return v > 26*3600 })
			},
		},
		{
			Name:     "CandlekeepBackupDrillFailed",
			Severity: "warning",
			Expr:     "candlekeep_drill_last_ok == 0",
			Summary:  "the last restore drill failed: a backup tier does not restore",
			Runbook:  runbook("candlekeepbackupdrillfailed"),
			Eval: func(q Querier) []Sample {
				return filter(q.Instant("candlekeep_drill_last_ok"), func(v float64) bool { return v == 0 })
			},
		},
		{
			Name:     "CandlekeepMissingSymbols",
			Severity: "warning",
			For:      30 * time.Minute,
			Expr:     "candlekeep_pairs_configured - candlekeep_pairs_complete > 0",
			Summary:  "{{ $value }} configured pair(s) are not complete",
			Runbook:  runbook("candlekeepmissingsymbols"),
			Eval: func(q Querier) []Sample {
				missing := match(q.Instant("candlekeep_pairs_configured"), q.Instant("candlekeep_pairs_complete"), sub)
				return filter(missing, func(v float64) bool { return v > 0 })
			},
		},
		{
			Name:     "CandlekeepRateLimitAbuse",
			Severity: "warning",
			Expr:     "increase(candlekeep_ratelimit_hits_total[1h]) >= 1 or increase(candlekeep_ratelimit_bans_total[1h]) > 0",
			Summary:  "the exchange answered 429 or 418 in the last hour",
			Runbook:  runbook("candlekeepratelimitabuse"),
			Window:   time.Hour,
			Eval: func(q Querier) []Sample {
				return or(
					filter(q.Increase("candlekeep_ratelimit_hits_total", time.Hour), func(v float64) bool { return v >= 1 }),
					filter(q.Increase("candlekeep_ratelimit_bans_total", time.Hour), func(v float64) bool { return v > 0 }))
			},
		},
		{
			Name:     "CandlekeepSyncSlow",
			Severity: "warning",
			Expr:     "candlekeep_last_sync_duration_seconds > 1800",
			Summary:  "the last sync run took {{ $value | humanizeDuration }}",
			Runbook:  runbook("candlekeepsyncslow"),
			Eval: func(q Querier) []Sample {
				return filter(q.Instant("candlekeep_last_sync_duration_seconds"), func(v float64) bool { return v > 1800 })
			},
		},
		{
			Name:     "CandlekeepDiskSpaceLow",
			Severity: "info",
			For:      15 * time.Minute,
			Expr:     "candlekeep_disk_free_bytes / candlekeep_disk_size_bytes < 0.10",
			Summary:  "{{ $value | humanizePercentage }} free on the data volume",
			Runbook:  runbook("candlekeepdiskspacelow"),
			Eval: func(q Querier) []Sample {
				free := match(q.Instant("candlekeep_disk_free_bytes"), q.Instant("candlekeep_disk_size_bytes"), div)
				return filter(free, func(v float64) bool { return v < 0.10 })
			},
		},
		{
			Name:     "CandlekeepPipelineErrors",
			Severity: "info",
			Expr:     "increase(candlekeep_pair_failures_total[1h]) > 0 or increase(candlekeep_batches_rejected_total[1h]) > 0",
			Summary:  "pairs failed or batches were rejected in the last hour",
			Runbook:  runbook("candlekeeppipelineerrors"),
			Window:   time.Hour,
			Eval: func(q Querier) []Sample {
				return or(
					filter(q.Increase("candlekeep_pair_failures_total", time.Hour), func(v float64) bool { return v > 0 }),
					filter(q.Increase("candlekeep_batches_rejected_total", time.Hour), func(v float64) bool { return v > 0 }))
			},
		},
	}
}
