package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// The writer lease: whoever holds it is the one writer, and only it touches
// the durable consumers ConsumerBatches and ConsumerRuns. It is one key in a
// JetStream KV bucket, taken with Create (which fails while someone holds
// it), refreshed with Update at the revision last written (which fails once
// someone else took it), and dropped by the bucket's TTL when the holder
// stops refreshing, e.g. after kill -9: a standby then takes it within
// about TTL + LeaseRefresh.
//
// The lease is keyed by what it protects, the durable consumers, which are
// named once per NATS system: two writers on one NATS system, whatever
// databases they write, would otherwise delete each other's consumers. The
// value names the holder's database, so a standby says which one is active.
const (
	// LeaseBucket is the KV bucket of the lease (`nats kv get
	// candlekeep_writer_lease writer` shows the holder).
	LeaseBucket = "candlekeep_writer_lease"
	// LeaseKey is the key of the writer lease.
	LeaseKey = "writer"
	// DefaultLeaseTTL is how long the lease outlives its last refresh.
	DefaultLeaseTTL = 5 * time.Second
	// DefaultLeaseRefresh is how often the holder refreshes the lease and
	// a standby tries to take it.
	DefaultLeaseRefresh = time.Second
)

// ErrLeaseLost is the cause of the context passed to serve when the lease
// was taken by another writer or could not be refreshed in time.
var ErrLeaseLost = errors.New("writer lease lost")

// LeaseHolder is the value of the lease key.
type LeaseHolder struct {
	// ID is unique per process and acquisition.
	ID   string `json:"id"`
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// Database is the absolute path of the holder's database.
	Database string    `json:"database"`
	Since    time.Time `json:"since"`
}

func (h LeaseHolder) String() string {
	return fmt.Sprintf("pid %d on host %s (database %s), since %s", h.PID, h.Host, h.Database, h.Since.UTC().Format(time.RFC3339))
}

// LeaseOptions configure RunLeased.
type LeaseOptions struct {
	// Conn is a connected NATS connection, owned by the caller.
	Conn *nats.Conn
	// Database is the absolute path of the database this writer would write.
	Database string
	// TTL and Refresh: see DefaultLeaseTTL and DefaultLeaseRefresh.
	TTL, Refresh time.Duration
	// Replicas of the lease bucket (0: 1).
	Replicas int
	Logger   *slog.Logger
	Now      func() time.Time
}

// DefaultLeaseOptions returns LeaseOptions with the defaults; Conn and
// Database must still be set.
func DefaultLeaseOptions() LeaseOptions {
	return LeaseOptions{TTL: DefaultLeaseTTL, Refresh: DefaultLeaseRefresh,
		Logger: slog.New(slog.DiscardHandler), Now: time.Now}
}

func (o LeaseOptions) validate() error {
	switch {
	case o.Conn == nil:
		return errors.New("writer lease: Conn is required")
	case o.Database == "":
		return errors.New("writer lease: Database is required")
	case o.Logger == nil || o.Now == nil:
		return errors.New("writer lease: Logger and Now are required")
	case o.Refresh <= 0 || o.TTL < 3*o.Refresh:
		return fmt.Errorf("writer lease: TTL %s must be at least three refresh periods (%s)", o.TTL, o.Refresh)
	}
	return nil
}

// Takeover is what serve learns when this process became the writer.
type Takeover struct {
	Holder LeaseHolder
	// Previous is the holder seen while standing by (nil if none was).
	Previous *LeaseHolder
}

// Event is the writer.active event announcing the takeover.
func (t Takeover) Event() *candles.WriterActive {
	ev := &candles.WriterActive{
		EventHeader: candles.NewHeader(candles.KindWriterActive, ""),
		Holder:      t.Holder.ID, Host: t.Holder.Host, PID: t.Holder.PID,
		Database: t.Holder.Database, Since: t.Holder.Since,
	}
	if t.Previous != nil {
		ev.Previous = t.Previous.String()
	}
	return ev
}

// RunLeased stands by until it holds the writer lease, then runs serve with
// a context that ends when ctx ends or the lease is lost (its cause is then
// ErrLeaseLost). serve must stop consuming as soon as that context ends.
// After a loss it stands by again; when serve returns for any other reason
// the lease is released (a standby takes over at once) and RunLeased
// returns serve's error. It returns nil when ctx ends.
func RunLeased(ctx context.Context, o LeaseOptions, serve func(context.Context, Takeover) error) error {
	if err := o.validate(); err != nil {
		return err
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return fmt.Errorf("writer lease: %w", err)
	}
	kv, err := ensureLeaseBucket(ctx, js, o)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	l := &lease{kv: kv, js: js, o: o, log: o.Logger}
	for {
		t, data, rev, sent, err := l.acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		l.log.Info("writer lease taken: this process is the writer", "holder", t.Holder.ID, "database", o.Database)
		sctx, cancel := context.WithCancelCause(ctx)
		held := make(chan uint64, 1)
		go func() { held <- l.hold(sctx, cancel, data, rev, sent) }()
		err = serve(sctx, t)
		cause := context.Cause(sctx)
		cancel(nil)
		rev = <-held
		if errors.Is(cause, ErrLeaseLost) {
			l.log.Warn("writer lease lost: stopped consuming; standing by", "holder", t.Holder.ID, "cause", cause, "err", err)
			continue
		}
		l.release(rev)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// ensureLeaseBucket creates or updates the lease bucket.
func ensureLeaseBucket(ctx context.Context, js jetstream.JetStream, o LeaseOptions) (jetstream.KeyValue, error) {
	replicas := max(o.Replicas, 1)
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "candlekeep: who is the one writer (refreshed every second, expires when not)",
		History:     1,
		TTL:         o.TTL,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("writer lease: create bucket %s: %w", LeaseBucket, err)
	}
	return kv, nil
}

type lease struct {
	kv  jetstream.KeyValue
	js  jetstream.JetStream
	o   LeaseOptions
	log *slog.Logger
	// last is the holder ID this process last wrote into the key.
	last string
}

// acquire tries to create the lease key every Refresh until it succeeds,
// logging once per holder it finds in the way.
func (l *lease) acquire(ctx context.Context) (t Takeover, data []byte, rev uint64, sent time.Time, err error) {
	var seen *LeaseHolder
	host, _ := os.Hostname()
	for {
		now := l.o.Now().UTC()
		me := LeaseHolder{ID: host + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(now.UnixNano(), 36),
			Host: host, PID: os.Getpid(), Database: l.o.Database, Since: now}
		data, err = json.Marshal(me)
		if err != nil {
			return Takeover{}, nil, 0, time.Time{}, err
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.o.TTL)
		rev, err := l.kv.Create(rctx, LeaseKey, data)
		cancel()
		switch {
		case err == nil:
			l.last = me.ID
			return Takeover{Holder: me, Previous: seen}, data, rev, sent, nil
		case errors.Is(err, jetstream.ErrKeyExists):
			h, hrev, ok := l.current(ctx)
			if ok && h.ID == l.last {
				// Our own key from before a refresh went wrong: nobody
				// else has taken it, so take it back without waiting for
				// it to expire.
				rctx, cancel := context.WithTimeout(ctx, l.o.TTL)
				rev, err := l.kv.Update(rctx, LeaseKey, data, hrev)
				cancel()
				if err == nil {
					l.last = me.ID
					return Takeover{Holder: me, Previous: seen}, data, rev, sent, nil
				}
			} else if ok && (seen == nil || seen.ID != h.ID) {
				l.log.Info("standing by: writer lease held by "+h.String(),
					"holder", h.ID, "holder_host", h.Host, "holder_pid", h.PID, "holder_database", h.Database)
				seen = &h
			}
		case ctx.Err() != nil:
			return Takeover{}, nil, 0, time.Time{}, ctx.Err()
		case l.bucketGone(ctx):
			if err := l.recreateBucket(ctx); err != nil {
				l.log.Warn("writer lease: the bucket is gone and cannot be created again; retrying", "err", err)
			} else {
				continue // take the lease in the new bucket at once
			}
		default:
			l.log.Warn("writer lease: cannot reach the bucket; retrying", "err", err)
		}
		if !sleep(ctx, l.o.Refresh) {
			return Takeover{}, nil, 0, time.Time{}, ctx.Err()
		}
	}
}

// current reads the lease holder and the revision of its value.
func (l *lease) current(ctx context.Context) (LeaseHolder, uint64, bool) {
	var h LeaseHolder
	rctx, cancel := context.WithTimeout(ctx, l.o.TTL)
	defer cancel()
	e, err := l.kv.Get(rctx, LeaseKey)
	if err != nil || json.Unmarshal(e.Value(), &h) != nil {
		return h, 0, false
	}
	return h, e.Revision(), true
}

// hold refreshes the lease every Refresh until ctx ends, and cancels it
// with ErrLeaseLost when someone else holds the key or when no refresh
// succeeded for TTL-Refresh: past that the key may have expired and been
// taken, so this process must assume it was. The deadline counts from when
// a successful refresh was sent, which is before the server stamped it, so
// this process always gives up before its key can expire. It returns the
// last revision written.
func (l *lease) hold(ctx context.Context, lost context.CancelCauseFunc, data []byte, rev uint64, lastOK time.Time) uint64 {
	t := time.NewTicker(l.o.Refresh)
	defer t.Stop()
	for {
		fence := lastOK.Add(l.o.TTL - l.o.Refresh)
		if !time.Now().Before(fence) {
			lost(fmt.Errorf("%w: not refreshed for %s", ErrLeaseLost, time.Since(lastOK).Round(time.Millisecond)))
			return rev
		}
		deadline := time.NewTimer(time.Until(fence))
		select {
		case <-ctx.Done():
			deadline.Stop()
			return rev
		case <-deadline.C:
			lost(fmt.Errorf("%w: not refreshed for %s", ErrLeaseLost, time.Since(lastOK).Round(time.Millisecond)))
			return rev
		case <-t.C:
			deadline.Stop()
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, fence)
		next, err := l.kv.Update(rctx, LeaseKey, data, rev)
		cancel()
		switch {
		case err == nil:
			rev, lastOK = next, sent
		case ctx.Err() != nil:
			return rev
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
			lost(fmt.Errorf("%w: %s holds it now: %w", ErrLeaseLost, l.describeCurrent(), err))
			return rev
		case l.bucketGone(ctx):
			// The key went with the bucket: another writer may create
			// both again and take it, so stop serving now; acquire puts
			// the bucket back.
			lost(fmt.Errorf("%w: the bucket %s was deleted", ErrLeaseLost, LeaseBucket))
			return rev
		default:
			// The deadline timer decides when this becomes a loss.
			l.log.Warn("writer lease: refresh failed; retrying", "err", err)
		}
	}
}

// bucketGone reports whether the lease bucket no longer exists (deleted by
// hand, or a server that lost its store), as opposed to being unreachable.
func (l *lease) bucketGone(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, l.o.Refresh)
	defer cancel()
	_, err := l.js.KeyValue(rctx, LeaseBucket)
	return errors.Is(err, jetstream.ErrBucketNotFound)
}

// recreateBucket creates the lost lease bucket again with this writer's
// settings and says so with resource.recreated, so a deleted bucket costs a
// moment instead of a writer that retries forever.
func (l *lease) recreateBucket(ctx context.Context) error {
	kv, err := ensureLeaseBucket(ctx, l.js, l.o)
	if err != nil {
		return err
	}
	l.kv = kv
	instance := ""
	if s, err := l.js.Stream(ctx, "KV_"+LeaseBucket); err == nil {
		instance = s.CachedInfo().Created.UTC().Format(time.RFC3339Nano)
	}
	l.log.Warn("writer lease: the bucket was gone; created it again", "bucket", LeaseBucket)
	ev := &candles.ResourceRecreated{EventHeader: candles.NewHeader(candles.KindResourceRecreated, ""),
		Resource: "kv " + LeaseBucket, Service: ServiceName, Reason: "bucket not found while the writer ran"}
	pctx, cancel := context.WithTimeout(ctx, sideEffectTimeout)
	defer cancel()
	if err := candles.PublishEvent(pctx, l.js, ev, "resource.recreated:kv::"+LeaseBucket+":"+instance, l.o.Now()); err != nil {
		l.log.Warn("publish resource.recreated", "bucket", LeaseBucket, "err", err)
	}
	return nil
}

func (l *lease) describeCurrent() string {
	ctx, cancel := context.WithTimeout(context.Background(), l.o.Refresh)
	defer cancel()
	if h, _, ok := l.current(ctx); ok {
		return h.String()
	}
	return "another writer (or nobody yet)"
}

// release deletes the key if it is still ours, so a standby takes over at
// once instead of after the TTL.
func (l *lease) release(rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), sideEffectTimeout)
	defer cancel()
	if err := l.kv.Delete(ctx, LeaseKey, jetstream.LastRevision(rev)); err != nil {
		l.log.Warn("writer lease: release failed; a standby takes over when it expires", "err", err)
		return
	}
	l.log.Info("writer lease released")
}
