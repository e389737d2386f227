package fetcher

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/fetcher/binance"
)

// exchangeStats counts this process's requests to the exchange for the
// monitor, which reads them as the custom data of the micro service's
// STATS ($SRV.STATS.candlekeep-fetcher). Atomics only: nothing on the
// request path waits for a reader of the figures.
type exchangeStats struct {
	requests    atomic.Int64
	errors      atomic.Int64
	rateLimited atomic.Int64 // 429 answers
	bans        atomic.Int64 // 418 answers
	nanos       atomic.Int64 // summed round trips
}

// sent counts one request to the exchange that took d and ended with err
// (nil: answered and parsed). A 429 and a 418 have counters of their own
// and are not errors; every other failure is one: no answer, a 5xx, a
// rejected request, a page that did not parse.
func (s *exchangeStats) sent(d time.Duration, err error) {
	s.requests.Add(1)
	s.nanos.Add(int64(d))
	switch {
	case err == nil:
	case errors.Is(err, binance.ErrRateLimited):
		s.rateLimited.Add(1)
	case errors.Is(err, binance.ErrBanned):
		s.bans.Add(1)
	default:
		s.errors.Add(1)
	}
}

// Stats reports this fetcher's requests to the exchange since it started
// and the weight budget as it stands: what its micro service's STATS carry.
func (f *Fetcher) Stats() candles.FetcherStats {
	limit, _ := f.pacer.budget()
	return candles.FetcherStats{
		ID:             f.id,
		Requests:       f.stats.requests.Load(),
		Errors:         f.stats.errors.Load(),
		RequestSeconds: time.Duration(f.stats.nanos.Load()).Seconds(),
		Weight:         f.pacer.reserved.Load(),
		UsedWeight:     int(f.pacer.lastUsed.Load()),
		WeightLimit:    limit,
		RateLimitHits:  f.stats.rateLimited.Load(),
		Bans:           f.stats.bans.Load(),
		BannedUntil:    f.pacer.banned().UTC(),
	}
}

// statsHandler is the micro.Config StatsHandler: every endpoint's stats
// carry the process's FetcherStats as their data.
func (f *Fetcher) statsHandler(*micro.Endpoint) any { return f.Stats() }
