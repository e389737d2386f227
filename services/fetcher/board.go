package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// FetchersBucket is the JetStream KV bucket every fetcher shares:
//
//   - key "ban" (BanKey): the exchange's current 418 ban, a banRecord such as
//     {"v":1,"until":"2026-11-27T14:32:00Z","since":"2026-11-27T14:30:00Z","run_id":"…","reason":"…"}.
//     Every fetcher watches it and sends no request until "until"; deleting
//     the key (`nats kv del candlekeep_fetchers ban`) lifts the pause.
//   - keys "fetched.<interval>.<SYMBOL>": what the last run that completed
//     the pair fetched, a fetchedRecord such as
//     {"v":1,"run_id":"…","spans":[{"from":1704067200000,"until":1711929600000}]},
//     so a job of another run that was queued while it ran skips that work.
//   - key "weight" (WeightKey): the request weight every fetcher together
//     reserved in the exchange's current weight window (see budget.go).
const FetchersBucket = "candlekeep_fetchers"

// BanKey is the key of the ban in FetchersBucket.
const BanKey = "ban"

// banRecord is the value of BanKey.
type banRecord struct {
	V      int       `json:"v"`
	Until  time.Time `json:"until"`
	Since  time.Time `json:"since"`
	RunID  string    `json:"run_id,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// fetchedRecord is the value of a fetched.<interval>.<SYMBOL> key.
type fetchedRecord struct {
	V     int             `json:"v"`
	RunID string          `json:"run_id"`
	Spans []candles.Range `json:"spans"`
}

// board is this fetcher's view of FetchersBucket.
type board struct {
	kv    jetstream.KeyValue
	pacer *pacer
	log   *slog.Logger
	now   func() time.Time
	// rewatch restarts the ban's watch: a watch on a bucket that was deleted
	// and created again (heal.go) may not see the new bucket's entries.
	rewatch chan struct{}
}

func openBoard(ctx context.Context, js jetstream.JetStream, replicas int, p *pacer, log *slog.Logger, now func() time.Time) (*board, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, boardConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", FetchersBucket, err)
	}
	kv = bounded(kv)
	b := &board{kv: kv, pacer: p, log: log, now: now, rewatch: make(chan struct{}, 1)}
	// Apply a ban in force before the first request; the watch keeps it current.
	if e, err := kv.Get(ctx, BanKey); err == nil {
		b.apply(e)
	}
	return b, nil
}

// boardConfig is the configuration of FetchersBucket.
func boardConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      FetchersBucket,
		Description: "candlekeep: state shared by every fetcher: the exchange's ban (key ban), the weight budget (key weight) and what each pair's last run fetched",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// banSlack: a 418 during a ban whose end is within this of the recorded one
// is the same ban, seen by another request or fetcher (the Retry-After of
// each answer is rounded to whole seconds).
const banSlack = 2 * time.Second

// reportBan records a 418 on the board, so every fetcher pauses until
// until, and pauses this one at once. isNew reports a ban not known before
// (no ban in force), the one the caller announces with ratelimit.banned;
// a 418 during a known ban only extends it.
func (b *board) reportBan(ctx context.Context, until time.Time, runID, reason string) (isNew bool, err error) {
	b.pacer.ban(until)
	now := b.now()
	for range 5 {
		var rev uint64
		var cur banRecord
		e, err := b.kv.Get(ctx, BanKey)
		switch {
		case err == nil:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &cur)
		case errors.Is(err, jetstream.ErrKeyNotFound): // none yet, or deleted: Create handles both
		default:
			return false, fmt.Errorf("read the ban: %w", err)
		}
		active := cur.Until.After(now)
		if active && !until.After(cur.Until.Add(banSlack)) {
			return false, nil // known already
		}
		rec := banRecord{V: candles.Version, Until: until.UTC(), Since: now.UTC(), RunID: runID, Reason: reason}
		if active {
			rec.Since, rec.RunID, rec.Reason = cur.Since, cur.RunID, cur.Reason
		}
		data, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = b.kv.Create(ctx, BanKey, data)
		} else {
			_, err = b.kv.Update(ctx, BanKey, data, rev)
		}
		if err == nil {
			return !active, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, fmt.Errorf("record the ban: %w", err)
		}
		// Another fetcher wrote first; look again.
	}
	return false, errors.New("record the ban: the key keeps changing")
}

// watchBan applies every change of the ban to the pacer until ctx ends.
func (b *board) watchBan(ctx context.Context) error {
	for ctx.Err() == nil {
		w, err := b.kv.Watch(ctx, BanKey)
		if err != nil {
			b.log.Warn("cannot watch the ban; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		b.follow(ctx, w)
		_ = w.Stop()
	}
	return nil
}

// follow applies the watch's entries until it ends, ctx ends or the bucket
// was created again.
func (b *board) follow(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.rewatch:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				b.apply(e)
			}
		}
	}
}

// restartWatch has watchBan watch the bucket afresh.
func restartWatch(rewatch chan struct{}) {
	select {
	case rewatch <- struct{}{}:
	default:
	}
}

// apply hands a ban entry to the pacer.
func (b *board) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		if !b.pacer.banned().IsZero() {
			b.log.Info("ban lifted on the board; requests resume")
		}
		b.pacer.lift()
		return
	}
	var rec banRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		b.log.Warn("unreadable ban on the board; ignored", "value", string(e.Value()), "err", err)
		return
	}
	if rec.Until.After(b.now()) {
		if rec.Until.After(b.pacer.banned()) {
			b.log.Warn("exchange ban: no requests until it ends", "until", rec.Until, "run_id", rec.RunID)
		}
		b.pacer.ban(rec.Until)
	}
}

// fetchedKey is the key of a pair's fetched record.
func fetchedKey(p candles.Pair) string { return "fetched." + p.Interval + "." + p.Symbol }

// recordFetched notes that runID fetched spans of p completely.
func (b *board) recordFetched(ctx context.Context, p candles.Pair, runID string, spans []candles.Range) error {
	if spans == nil {
		spans = []candles.Range{}
	}
	data, _ := json.Marshal(fetchedRecord{V: candles.Version, RunID: runID, Spans: spans})
	if _, err := b.kv.Put(ctx, fetchedKey(p), data); err != nil {
		return fmt.Errorf("record what %s fetched: %w", p, err)
	}
	return nil
}

// fetched returns the last completed run's record of p and when it was
// written (the server's clock); ok is false when there is none.
func (b *board) fetched(ctx context.Context, p candles.Pair) (rec fetchedRecord, at time.Time, ok bool) {
	e, err := b.kv.Get(ctx, fetchedKey(p))
	if err != nil || json.Unmarshal(e.Value(), &rec) != nil || rec.V != candles.Version {
		return fetchedRecord{}, time.Time{}, false
	}
	return rec, e.Created(), true
}
