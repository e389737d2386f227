package notify

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// rewatchDelay is the pause before a receiver's queue watches the bucket
// again after its watch could not start (NATS unreachable).
const rewatchDelay = time.Second

// writeTimeout bounds recording an attempt's outcome, which is done even
// when Run is stopping: a delivered message must be marked so.
const writeTimeout = 5 * time.Second

// item is one key of a receiver's queue as this Dispatcher last saw it.
type item struct {
	key string
	e   entry
	rev uint64
	// order is the key's creation revision: the queue delivers in it.
	order uint64
}

// queue delivers one receiver's notifications, oldest first, one at a
// time: a resolved message never overtakes its firing one. It learns of
// entries by watching its keys, which also hands it, on start, what an
// earlier Dispatcher left undelivered.
type queue struct {
	d     *Dispatcher
	name  string
	n     Notifier
	log   *slog.Logger
	items map[string]*item
}

func (q *queue) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := q.watch(ctx); err != nil {
			q.log.Warn("notification queue watch ended; watching again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(rewatchDelay):
			}
		}
	}
}

// watch runs the queue on one watcher until ctx ends or the watch fails.
func (q *queue) watch(ctx context.Context) error {
	w, err := q.d.kv.Watch(ctx, q.name+".>")
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	// The watcher hands every key afresh; what was seen before may have
	// changed while the watch was down.
	clear(q.items)
	updates := w.Updates()
	loaded := false // the watcher has handed every existing entry
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if loaded {
			// Apply what has arrived before choosing, so the choice sees
			// every entry queued so far.
			for drained := false; !drained; {
				select {
				case u, ok := <-updates:
					if !ok {
						return errors.New("watcher closed")
					}
					q.apply(u)
				default:
					drained = true
				}
			}
			wait := q.step(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if wait == 0 {
				continue
			}
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return errors.New("watcher closed")
			}
			if u == nil {
				loaded = true
				continue
			}
			q.apply(u)
		case <-timer.C:
		}
	}
}

// apply records a watched change of one key.
func (q *queue) apply(u jetstream.KeyValueEntry) {
	if u == nil {
		return
	}
	cur := q.items[u.Key()]
	if cur != nil && u.Revision() <= cur.rev {
		return // our own write, already applied
	}
	if u.Operation() != jetstream.KeyValuePut {
		delete(q.items, u.Key())
		return
	}
	var e entry
	if err := json.Unmarshal(u.Value(), &e); err != nil {
		// Not ours to read; leave it, and say so once per revision.
		q.log.Error("notification queue entry unreadable; skipped", "key", u.Key(), "revision", u.Revision(), "err", err)
		delete(q.items, u.Key())
		return
	}
	order := e.Seq
	if order == 0 {
		order = u.Revision()
	}
	q.items[u.Key()] = &item{key: u.Key(), e: e, rev: u.Revision(), order: order}
}

// step does at most one thing (an attempt, a give-up, expiring sent
// markers) and returns how long to wait before the next step; 0 means go
// on at once.
func (q *queue) step(ctx context.Context) time.Duration {
	now := q.d.o.Now()
	q.expireSent(ctx, now)
	var head *item
	for _, it := range q.items {
		if !it.e.Sent.IsZero() {
			continue
		}
		if head == nil || it.order < head.order {
			head = it
		}
	}
	if head == nil {
		return q.d.o.Tick
	}
	if now.Sub(head.e.Queued) > q.d.o.MaxAge {
		q.giveUp(ctx, head, now)
		return 0
	}
	if wait := head.e.NextAt.Sub(now); wait > 0 {
		return min(wait, q.d.o.Tick)
	}
	q.attempt(ctx, head)
	return 0
}

// attempt delivers the head of the queue once and settles it: the one
// place that decides what a receiver's answer means.
func (q *queue) attempt(ctx context.Context, it *item) {
	n := it.e.Notification
	actx, cancel := context.WithTimeout(ctx, q.d.o.AttemptTimeout)
	retry, err := q.n.Notify(actx, n)
	cancel()
	if err != nil && ctx.Err() != nil {
		// Stopping: the attempt was cut short by us, not by the receiver;
		// the entry stays as it was for the next Dispatcher.
		return
	}
	now := q.d.o.Now().UTC()
	it.e.Attempts++
	switch {
	case err == nil:
		it.e.Sent, it.e.Outcome, it.e.LastError, it.e.NextAt = now, OutcomeSent, "", time.Time{}
		q.d.total.WithLabelValues(q.name, OutcomeSent).Inc()
		q.log.Info("notification sent", "alert", n.Alert, "kind", n.Kind, "id", n.ID, "attempts", it.e.Attempts)
		q.write(ctx, it)
	case retry || errors.Is(err, context.DeadlineExceeded):
		wait := q.backoff(it.e.Attempts)
		var ra *RetryAfterError
		if errors.As(err, &ra) && ra.After > 0 {
			wait = ra.After
		}
		it.e.NextAt, it.e.LastError = now.Add(wait), err.Error()
		q.d.total.WithLabelValues(q.name, OutcomeRetried).Inc()
		q.log.Warn("notification not delivered; will retry", "alert", n.Alert, "kind", n.Kind, "id", n.ID,
			"attempts", it.e.Attempts, "retry_in", wait, "err", err)
		q.write(ctx, it)
	default:
		q.d.total.WithLabelValues(q.name, OutcomeFailed).Inc()
		q.log.Error("notification dropped: receiver rejected it", "alert", n.Alert, "kind", n.Kind, "id", n.ID,
			"attempts", it.e.Attempts, "err", err)
		// Kept as a sent marker all the same: the receiver will never
		// take this message, so sending it again must not retry it.
		it.e.Sent, it.e.Outcome, it.e.LastError = now, OutcomeFailed, err.Error()
		q.write(ctx, it)
	}
}

// giveUp drops a notification that was not delivered within MaxAge.
func (q *queue) giveUp(ctx context.Context, it *item, now time.Time) {
	n := it.e.Notification
	q.d.total.WithLabelValues(q.name, OutcomeFailed).Inc()
	q.log.Error("notification given up: not delivered in time", "alert", n.Alert, "kind", n.Kind, "id", n.ID,
		"attempts", it.e.Attempts, "queued", it.e.Queued, "max_age", q.d.o.MaxAge, "last_err", it.e.LastError)
	it.e.Sent, it.e.Outcome = now.UTC(), OutcomeFailed
	q.write(ctx, it)
}

// backoff is the wait after the attempts-th failure: BackoffInitial
// doubling up to BackoffMax.
func (q *queue) backoff(attempts int) time.Duration {
	d := q.d.o.BackoffInitial
	for i := 1; i < attempts && d < q.d.o.BackoffMax; i++ {
		d *= 2
	}
	return min(d, q.d.o.BackoffMax)
}

// write stores the item's new state, guarded by the revision this queue last
// saw. The local copy is updated at once, so the next step does not
// deliver again what the watcher has not yet echoed back.
func (q *queue) write(ctx context.Context, it *item) {
	it.e.Seq = it.order
	val, err := json.Marshal(it.e)
	if err != nil {
		q.log.Error("notification queue entry not encodable", "key", it.key, "err", err)
		return
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	rev, err := q.d.kv.Update(wctx, it.key, val, it.rev)
	if err != nil {
		// The bucket is unreachable or the key changed under us: keep the
		// local state (so a sent message is not sent again by this queue)
		// and let the watcher bring the truth when it can.
		q.log.Error("notification queue entry not updated", "key", it.key, "err", err)
		return
	}
	it.rev = rev
}

// expireSent deletes sent markers older than SentRetention.
func (q *queue) expireSent(ctx context.Context, now time.Time) {
	for k, it := range q.items {
		if it.e.Sent.IsZero() || now.Sub(it.e.Sent) <= q.d.o.SentRetention {
			continue
		}
		if err := q.d.kv.Delete(ctx, k, jetstream.LastRevision(it.rev)); err != nil {
			q.log.Warn("sent notification marker not expired", "key", k, "err", err)
			continue
		}
		delete(q.items, k)
	}
}
