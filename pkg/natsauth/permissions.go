package natsauth

// The subject permissions of each user. They follow what each service does
// in the code (services/*, pkg/cluster, pkg/candles), so a change there that
// touches a new subject, stream, consumer or bucket must be mirrored here;
// the least-privilege tests (cmd/candlekeep/auth_test.go) and the e2e tests
// run under these permissions and fail with "Permissions Violation" logs
// when something is missing.

// Names of the streams, durable consumers and KV buckets the permissions
// name. They are the values of constants in the services; they are spelled
// out here so this package depends on nothing but nkeys.
const (
	streamSync    = "SYNC"
	streamJobs    = "JOBS"
	streamCandles = "CANDLES"
	streamEvents  = "EVENTS"

	consumerFetcherRequests = "fetcher-requests"      // SYNC, services/fetcher
	consumerFetcherJobs     = "fetcher-jobs"          // JOBS, services/fetcher
	consumerWriter          = "writer"                // CANDLES, services/writer
	consumerWriterRuns      = "writer-runs"           // EVENTS, services/writer
	consumerMonitorSLA      = "monitor-sla"           // SYNC, services/monitor/sla
	consumerBackupAuto      = "backup-auto-restore"   // EVENTS, services/backup
	consumerBackupSync      = "backup-sync-completed" // EVENTS, services/backup
	consumerBackupSchedule  = "backup-schedule"       // SYNC, services/backup
	consumerBackupDrill     = "backup-drill"          // SYNC, services/backup

	bucketConfig        = "candlekeep_config"
	bucketFetchers      = "candlekeep_fetchers"
	bucketLocks         = "candlekeep_pair_locks"
	bucketProgress      = "candlekeep_job_progress"
	bucketLease         = "candlekeep_writer_lease"
	bucketAlerts        = "candlekeep_alerts"
	bucketNotifications = "candlekeep_notifications"
	bucketIncidents     = "candlekeep_incidents"
)

// Users of the CANDLEKEEP account, one per service plus the two humans'
// users, and the SYS account's user.
const (
	UserFetcher  = "fetcher"
	UserWriter   = "writer"
	UserBackup   = "backup"
	UserMonitor  = "monitor"
	UserOperator = "operator"
	UserReadonly = "readonly"
	UserSystem   = "system"
)

// Users lists every user auth init writes, in the order of auth.conf.
var Users = []string{UserFetcher, UserWriter, UserBackup, UserMonitor, UserOperator, UserReadonly, UserSystem}

// Permissions are one user's allow and deny lists. A deny wins over an
// allow; an empty allow list means everything (only the operator has it).
type Permissions struct {
	PubAllow, PubDeny, SubAllow, SubDeny []string
	// Responses lets the user answer requests it received (micro
	// endpoints) without a publish right on _INBOX.>.
	Responses bool
}

func jsAPI(s ...string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = "$JS.API." + x
	}
	return out
}

// jsRead is reading JetStream's state: account, stream and consumer info,
// stored messages (KV gets use DIRECT.GET).
var jsRead = jsAPI("INFO", "STREAM.INFO.*", "STREAM.NAMES", "STREAM.LIST",
	"CONSUMER.INFO.*.*", "CONSUMER.NAMES.*", "CONSUMER.LIST.*",
	"STREAM.MSG.GET.*", "DIRECT.GET.>")

// ordered lets a user read stream (or bucket's stream) with ordered,
// ephemeral consumers: create them, ask for their messages, answer flow
// control and delete them on a reset. Their names are random, so the
// durable consumers of the others on the same stream are denied by name
// (durableDeny).
func ordered(streams ...string) []string {
	var out []string
	for _, s := range streams {
		out = append(out, jsAPI("CONSUMER.CREATE."+s, "CONSUMER.CREATE."+s+".>",
			"CONSUMER.MSG.NEXT."+s+".*", "CONSUMER.DELETE."+s+".*")...)
		out = append(out, "$JS.FC."+s+".>")
	}
	return out
}

// kv is full use of buckets: create or update them (their streams), read,
// watch, put and delete keys.
func kv(buckets ...string) []string {
	var out []string
	for _, b := range buckets {
		out = append(out, jsAPI("STREAM.CREATE.KV_"+b, "STREAM.UPDATE.KV_"+b)...)
		out = append(out, "$KV."+b+".>")
		out = append(out, ordered("KV_"+b)...)
	}
	return out
}

// kvRead is reading and watching buckets.
func kvRead(buckets ...string) []string {
	var out []string
	for _, b := range buckets {
		out = append(out, ordered("KV_"+b)...)
	}
	return out
}

// durable is owning a durable consumer: create or update it, pull and ack
// its messages, delete it (the writer remakes its consumers).
func durable(stream, name string) []string {
	return append(jsAPI("CONSUMER.CREATE."+stream+"."+name, "CONSUMER.CREATE."+stream+"."+name+".>",
		"CONSUMER.DURABLE.CREATE."+stream+"."+name, "CONSUMER.MSG.NEXT."+stream+"."+name,
		"CONSUMER.DELETE."+stream+"."+name),
		"$JS.ACK."+stream+"."+name+".>")
}

// durables are every durable consumer and its owner.
var durables = []struct{ stream, name, owner string }{
	{streamSync, consumerFetcherRequests, UserFetcher},
	{streamJobs, consumerFetcherJobs, UserFetcher},
	{streamCandles, consumerWriter, UserWriter},
	{streamEvents, consumerWriterRuns, UserWriter},
	{streamSync, consumerMonitorSLA, UserMonitor},
	{streamEvents, consumerBackupAuto, UserBackup},
	{streamEvents, consumerBackupSync, UserBackup},
	{streamSync, consumerBackupSchedule, UserBackup},
	{streamSync, consumerBackupDrill, UserBackup},
}

// durableDeny denies user every durable consumer it does not own: a
// fetcher cannot create, take from, ack or delete the writer's consumer.
func durableDeny(user string) []string {
	var out []string
	for _, d := range durables {
		if d.owner != user {
			out = append(out, durable(d.stream, d.name)...)
		}
	}
	return out
}

// provision is what the one code path that provisions the streams
// (candles.EnsureStreams, called at start by the fetcher, the writer and the
// backup service; the fetcher's and the writer's healers recreate a lost
// stream) needs.
var provision = jsAPI("STREAM.CREATE."+streamSync, "STREAM.UPDATE."+streamSync,
	"STREAM.CREATE."+streamJobs, "STREAM.UPDATE."+streamJobs,
	"STREAM.CREATE."+streamCandles, "STREAM.UPDATE."+streamCandles,
	"STREAM.CREATE."+streamEvents, "STREAM.UPDATE."+streamEvents)

// dangerous is denied to every user but the operator: deleting or purging
// streams, deleting stored messages, moving stream leaders, restoring
// snapshots. SYNC's purge is the exception for the services that replace
// their schedule message there (a subject-filtered purge of
// candles.sync.schedule.<name>): a purge's filter is in its body, which
// permissions cannot see, so they get SYNC's purge and nothing else.
var dangerous = jsAPI("STREAM.DELETE.>", "STREAM.PURGE."+streamCandles, "STREAM.PURGE."+streamEvents,
	"STREAM.PURGE."+streamJobs, "STREAM.MSG.DELETE.>", "STREAM.RESTORE.>", "STREAM.SNAPSHOT.>",
	"STREAM.LEADER.STEPDOWN.>", "STREAM.PEER.REMOVE.>", "CONSUMER.LEADER.STEPDOWN.>",
	"META.>", "SERVER.>", "ACCOUNT.>")

// monitorEvents are the event kinds only the monitor publishes.
var monitorEvents = []string{"candles.events.alert.>", "candles.events.sla.>", "candles.events.freshness.>"}

// serviceBase is what every service does: read JetStream's state, answer
// and ask micro's $SRV discovery, get replies on _INBOX.
func serviceBase(p *Permissions) {
	p.PubAllow = append(p.PubAllow, jsRead...)
	p.SubAllow = append(p.SubAllow, "_INBOX.>", "$SRV.>", "$JS.EVENT.>")
	p.Responses = true
}

// Permission returns the permissions of user; ok is false for an unknown
// user. The system user (SYS account) has no limits inside SYS.
func Permission(user string) (p Permissions, ok bool) {
	switch user {
	case UserFetcher:
		serviceBase(&p)
		p.PubAllow = append(p.PubAllow, "candles.batch.>", "candles.jobs.>", "candles.events.>",
			"candles.sync.request", "candles.sync.schedule.default", "candles.api.coverage", "$SRV.>")
		p.PubAllow = append(p.PubAllow, provision...)
		p.PubAllow = append(p.PubAllow, jsAPI("STREAM.PURGE."+streamSync)...)
		p.PubAllow = append(p.PubAllow, durable(streamSync, consumerFetcherRequests)...)
		p.PubAllow = append(p.PubAllow, durable(streamJobs, consumerFetcherJobs)...)
		p.PubAllow = append(p.PubAllow, kv(bucketConfig, bucketFetchers, bucketLocks, bucketProgress)...)
		p.PubDeny = append(append(append(p.PubDeny, dangerous...), monitorEvents...), durableDeny(user)...)
		p.SubAllow = append(p.SubAllow, "candles.api.sync")
	case UserWriter:
		serviceBase(&p)
		p.PubAllow = append(p.PubAllow, "candles.events.>", "$SRV.>")
		p.PubAllow = append(p.PubAllow, provision...) // writer.Run, services/writer/streams.go
		p.PubAllow = append(p.PubAllow, durable(streamCandles, consumerWriter)...)
		p.PubAllow = append(p.PubAllow, durable(streamEvents, consumerWriterRuns)...)
		p.PubAllow = append(p.PubAllow, ordered(streamCandles)...) // candles.api.replay
		p.PubAllow = append(p.PubAllow, kv(bucketConfig, bucketLease)...)
		p.PubAllow = append(p.PubAllow, kvRead(bucketFetchers, bucketProgress)...)
		p.PubDeny = append(append(append(p.PubDeny, dangerous...), monitorEvents...), durableDeny(user)...)
		p.SubAllow = append(p.SubAllow, "candles.api.coverage", "candles.api.replay", "candles.api.database", "candles.api.writer.swap")
	case UserBackup:
		serviceBase(&p)
		p.PubAllow = append(p.PubAllow, "candles.events.>", "$SRV.>",
			"candles.sync.schedule.backup", "candles.sync.schedule.drill", "candles.sync.backup", "candles.sync.drill",
			"candles.api.sync", "candles.api.writer.swap", "candles.api.database", "candles.api.coverage")
		p.PubAllow = append(p.PubAllow, provision...)
		p.PubAllow = append(p.PubAllow, jsAPI("STREAM.PURGE."+streamSync)...)
		for _, d := range durables {
			if d.owner == UserBackup {
				p.PubAllow = append(p.PubAllow, durable(d.stream, d.name)...)
			}
		}
		p.PubAllow = append(p.PubAllow, ordered(streamEvents)...)
		p.PubAllow = append(p.PubAllow, kv(bucketConfig, bucketIncidents)...)
		p.PubDeny = append(append(append(p.PubDeny, dangerous...), monitorEvents...), durableDeny(user)...)
		p.SubAllow = append(p.SubAllow, "candles.api.backup", "candles.api.backup.ls", "candles.api.drill", "candles.api.restore")
	case UserMonitor:
		serviceBase(&p)
		p.PubAllow = append(p.PubAllow, monitorEvents...)
		p.PubAllow = append(p.PubAllow, "$SRV.>", "candles.api.database", "candles.api.coverage",
			"candles.sync.schedule.sla", "candles.sync.sla")
		p.PubAllow = append(p.PubAllow, jsAPI("STREAM.PURGE."+streamSync)...)
		p.PubAllow = append(p.PubAllow, durable(streamSync, consumerMonitorSLA)...)
		p.PubAllow = append(p.PubAllow, ordered(streamEvents, streamSync)...)
		p.PubAllow = append(p.PubAllow, kv(bucketAlerts, bucketNotifications)...)
		p.PubAllow = append(p.PubAllow, kvRead(bucketConfig, bucketFetchers, bucketLocks, bucketProgress, bucketLease, bucketIncidents)...)
		p.PubDeny = append(append(p.PubDeny, dangerous...), durableDeny(user)...)
		p.SubAllow = append(p.SubAllow, "candles.api.health", "candles.api.status", "candles.events.>")
	case UserReadonly:
		// Dashboards: read events, buckets and stream state, ask the
		// read-only endpoints; nothing that changes anything.
		p.PubAllow = append(p.PubAllow, jsRead...)
		p.PubAllow = append(p.PubAllow, "$SRV.>", "candles.api.health", "candles.api.status", "candles.api.coverage",
			"candles.api.database", "candles.api.backup.ls")
		p.PubAllow = append(p.PubAllow, ordered(streamEvents)...)
		p.PubAllow = append(p.PubAllow, kvRead(bucketConfig, bucketFetchers, bucketLocks, bucketProgress, bucketLease,
			bucketAlerts, bucketNotifications, bucketIncidents)...)
		p.PubDeny = append(append(p.PubDeny, dangerous...), durableDeny(user)...)
		p.PubDeny = append(p.PubDeny, "candles.batch.>", "candles.sync.>", "candles.events.>", "candles.jobs.>",
			"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.PURGE.>", "$KV.>")
		p.SubAllow = append(p.SubAllow, "_INBOX.>", "candles.events.>", "$JS.EVENT.>")
	case UserOperator, UserSystem:
		// Everything: the operator administers streams with the nats CLI.
	default:
		return Permissions{}, false
	}
	return p, true
}
