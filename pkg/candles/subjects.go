package candles

import "strings"

// Subjects of the external contract (docs/architecture.md) and the internal
// work queue. Everything that names a subject uses these.
const (
	// SubjectSyncRequest takes fire-and-forget sync requests (SYNC stream).
	SubjectSyncRequest = "candles.sync.request"
	// SubjectSyncSchedule holds candlekeep's sync schedule: a JetStream
	// message schedule (Nats-Schedule) in the SYNC stream whose target is
	// SubjectSyncRequest.
	SubjectSyncSchedule = "candles.sync.schedule.default"
	// SubjectAPISync is the request/reply endpoint that validates a sync
	// request, queues it and answers with its run_id.
	SubjectAPISync = "candles.api.sync"
	// SubjectAPICoverage answers what the database holds per pair.
	SubjectAPICoverage = "candles.api.coverage"
	// SubjectAPIReplay re-applies CANDLES to the database.
	SubjectAPIReplay = "candles.api.replay"
	// SubjectBatchPrefix prefixes candles.batch.<interval>.<SYMBOL> (CANDLES stream).
	SubjectBatchPrefix = "candles.batch."
	// SubjectJobPrefix prefixes candles.jobs.<interval>.<SYMBOL>, the work
	// queue of per-pair fetch jobs shared by every fetcher (JOBS stream).
	SubjectJobPrefix = "candles.jobs."
	// SubjectEventPrefix prefixes candles.events.<kind> (EVENTS stream).
	SubjectEventPrefix = "candles.events."
)

// BatchSubject is the subject a page of candles for one pair is published on.
func BatchSubject(interval, symbol string) string {
	return SubjectBatchPrefix + interval + "." + symbol
}

// JobSubject is the work-queue subject of a fetch job for one pair.
func JobSubject(interval, symbol string) string {
	return SubjectJobPrefix + interval + "." + symbol
}

// EventSubject is the subject of an event of the given kind ("sync.completed").
func EventSubject(kind string) string { return SubjectEventPrefix + kind }

// ParseBatchSubject splits candles.batch.<interval>.<SYMBOL>.
func ParseBatchSubject(subject string) (interval, symbol string, ok bool) {
	rest, found := strings.CutPrefix(subject, SubjectBatchPrefix)
	if !found {
		return "", "", false
	}
	interval, symbol, ok = strings.Cut(rest, ".")
	return interval, symbol, ok && !strings.Contains(symbol, ".")
}
