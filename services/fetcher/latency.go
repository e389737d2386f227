package fetcher

import (
	"sync"
	"time"
)

// defaultRequestLatency is the klines round trip assumed before one has
// been measured: a full page from Binance's public API, typically.
const defaultRequestLatency = 250 * time.Millisecond

// latencyWeight is the weight of a new sample in the moving average: the
// last twenty or so requests count.
const latencyWeight = 0.1

// latencyEWMA is an exponentially weighted moving average of the klines
// round trips this fetcher measured (successful ones: a failure's time says
// little about the next page). Dry runs price requests with it.
type latencyEWMA struct {
	mu      sync.Mutex
	avg     time.Duration
	samples int
}

// observe adds one measured round trip.
func (l *latencyEWMA) observe(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.samples == 0 {
		l.avg = d
	} else {
		l.avg = time.Duration(latencyWeight*float64(d) + (1-latencyWeight)*float64(l.avg))
	}
	l.samples++
}

// estimate is the average, or defaultRequestLatency before any sample.
func (l *latencyEWMA) estimate() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.samples == 0 {
		return defaultRequestLatency
	}
	return l.avg
}
