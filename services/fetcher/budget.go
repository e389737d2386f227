package fetcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// WeightKey is the key in FetchersBucket that holds the request weight every
// fetcher together has reserved in the exchange's current weight window, a
// weightRecord such as
//
//	{"v":1,"start":"2026-11-27T14:30:00Z","window_ms":60000,"limit":6000,"used":2410,"by":{"host-4711-3f9a0c1d":1200,…}}
//
// One key, rewritten when a new window starts, rather than a key per window:
// nothing has to be cleaned up and `nats kv get candlekeep_fetchers weight`
// always shows the window in force.
const WeightKey = "weight"

// weightRecord is the value of WeightKey.
type weightRecord struct {
	V int `json:"v"`
	// Start is the window's start by the exchange's clock.
	Start    time.Time `json:"start"`
	WindowMS int64     `json:"window_ms"`
	Limit    int       `json:"limit"`
	// Used is the weight reserved by fetchers in this window, or the
	// exchange's X-MBX-USED-WEIGHT-1M when that was higher (weight used by
	// other clients behind the same IP).
	Used int `json:"used"`
	// By is the weight each fetcher reserved in this window; how many there
	// are sizes the share a fetcher keeps to when the board is unreachable.
	By map[string]int `json:"by,omitempty"`
}

// sharedBudget reserves request weight on WeightKey with compare-and-set, so
// every fetcher's request is counted before it is sent.
type sharedBudget struct {
	kv jetstream.KeyValue
	id string // this fetcher in weightRecord.By
}

// grant is the board's answer to a reservation.
type grant struct {
	took  int       // weight reserved for this fetcher; 0 when the window is spent
	used  int       // the window's shared figure afterwards
	peers int       // fetchers that reserved in this window
	ahead time.Time // the board is on a later window (our clock is behind): wait until then
}

// casAttempts bounds one reservation's compare-and-set retries; each retry
// means another fetcher's write went in, so the budget is moving.
const casAttempts = 50

// errContended: other fetchers won every compare-and-set of a reservation.
// The board works; the caller simply tries again.
var errContended = errors.New("the shared weight budget keeps changing")

// backOff sleeps a random moment, longer after each lost compare-and-set,
// so fetchers that all reserve at a window's start do not keep colliding.
func backOff(ctx context.Context, attempt int) {
	d := time.Duration(mrand.Int64N(int64(time.Millisecond << min(attempt, 4))))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// maxSkew is how far another fetcher's estimate of the exchange's clock may
// run ahead of ours: a record that far into a later window is waited for.
// A record further ahead comes from a clock that jumped or is wrong (or was
// written by hand) and is replaced, so it cannot stall every fetcher.
const maxSkew = time.Second

// reserve takes up to want weight (at least least) in the window starting
// at start, keeping the window's total at or under free; xnow is the
// exchange's time now by our estimate.
func (s *sharedBudget) reserve(ctx context.Context, xnow, start time.Time, window time.Duration, limit, free, least, want int) (grant, error) {
	skew := min(maxSkew, window/4)
	for attempt := range casAttempts {
		if attempt > 0 {
			backOff(ctx, attempt)
		}
		rec, rev, err := s.read(ctx)
		if err != nil {
			return grant{}, err
		}
		switch {
		case rec.Start.After(start) && !rec.Start.After(xnow.Add(skew)):
			return grant{ahead: rec.Start, used: rec.Used, peers: len(rec.By)}, nil
		case rec.Start.After(start):
			rec = weightRecord{Start: start}
		case rec.Start.Before(start) || rev == 0:
			rec = weightRecord{Start: start}
		}
		rec.V, rec.WindowMS, rec.Limit = candles.Version, window.Milliseconds(), limit
		take := min(want, free-rec.Used)
		if take < least {
			return grant{used: rec.Used, peers: len(rec.By)}, nil
		}
		if rec.By == nil {
			rec.By = map[string]int{}
		}
		rec.Used += take
		rec.By[s.id] += take
		ok, err := s.write(ctx, rec, rev)
		if err != nil {
			return grant{}, err
		}
		if ok {
			return grant{took: take, used: rec.Used, peers: len(rec.By)}, nil
		}
	}
	return grant{}, fmt.Errorf("reserve request weight: %w", errContended)
}

// raise lifts the window's shared figure to used, the weight the exchange
// reported, when that is higher than what the fetchers reserved. It returns
// the figure afterwards.
func (s *sharedBudget) raise(ctx context.Context, start time.Time, window time.Duration, limit, used int) (int, error) {
	for attempt := range casAttempts {
		if attempt > 0 {
			backOff(ctx, attempt)
		}
		rec, rev, err := s.read(ctx)
		if err != nil {
			return 0, err
		}
		switch {
		case rec.Start.After(start):
			return rec.Used, nil // a later window already: the report is stale
		case rec.Start.Before(start) || rev == 0:
			rec = weightRecord{Start: start, By: map[string]int{}}
		}
		if used <= rec.Used {
			return rec.Used, nil
		}
		rec.V, rec.WindowMS, rec.Limit, rec.Used = candles.Version, window.Milliseconds(), limit, used
		ok, err := s.write(ctx, rec, rev)
		if err != nil {
			return 0, err
		}
		if ok {
			return rec.Used, nil
		}
	}
	return 0, fmt.Errorf("record the used weight: %w", errContended)
}

// read returns the record and its revision; revision 0 means there is none
// (or it was deleted, or is unreadable: it is then replaced).
func (s *sharedBudget) read(ctx context.Context) (weightRecord, uint64, error) {
	e, err := s.kv.Get(ctx, WeightKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return weightRecord{}, 0, nil
	}
	if err != nil {
		return weightRecord{}, 0, fmt.Errorf("read the shared weight budget: %w", err)
	}
	var rec weightRecord
	if json.Unmarshal(e.Value(), &rec) != nil || rec.V != candles.Version {
		rec = weightRecord{} // replaced by the next write
	}
	return rec, e.Revision(), nil
}

// write stores rec if the key is still at rev (0: absent or deleted);
// ok is false when another fetcher wrote first.
func (s *sharedBudget) write(ctx context.Context, rec weightRecord, rev uint64) (ok bool, err error) {
	data, _ := json.Marshal(rec)
	if rev == 0 {
		_, err = s.kv.Create(ctx, WeightKey, data)
	} else {
		_, err = s.kv.Update(ctx, WeightKey, data, rev)
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return false, nil
	default:
		return false, fmt.Errorf("reserve request weight: %w", err)
	}
}

// fetcherID names this process in weightRecord.By: host, pid and a random
// suffix, so fetchers in one process (tests, `up`) are told apart too.
func fetcherID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
