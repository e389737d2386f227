package fetcher

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// fetcherStats reads the FetcherStats of the one fetcher on nc from its
// micro service's STATS, as the monitor does.
func fetcherStats(t *testing.T, nc *nats.Conn) candles.FetcherStats {
	t.Helper()
	resp, err := nc.Request("$SRV.STATS."+ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(resp.Data, &st); err != nil {
		t.Fatalf("STATS reply %s: %v", resp.Data, err)
	}
	if len(st.Endpoints) == 0 {
		t.Fatalf("STATS reply %s has no endpoint", resp.Data)
	}
	var fs candles.FetcherStats
	if err := json.Unmarshal(st.Endpoints[0].Data, &fs); err != nil {
		t.Fatalf("STATS data %s: %v", st.Endpoints[0].Data, err)
	}
	return fs
}

// simWeight is the weight the exchange charged in all, and the used weight
// its last answer reported (the last window's total: one client IP).
func simWeight(st sim.Stats) (total int64, last int) {
	for _, w := range st.Windows {
		total += int64(w.Weight)
	}
	if n := len(st.Windows); n > 0 {
		last = st.Windows[n-1].Weight
	}
	return total, last
}

// A fetcher's STATS count what the exchange saw of it, exactly: every
// request, the weight, the last used weight, and the 5xx, 429 and 418
// answers; a ban shows its end while it lasts.
func TestFetcherStatsMatchTheExchange(t *testing.T) {
	from, until := klinesRange(h1, testStart, 2500) // pages of 1000, 1000, 500
	for i, tc := range []struct {
		name  string
		fault *sim.Fault
		// errors, ratelimit and bans are the answers the fault gives.
		errors, ratelimit, bans int64
	}{
		{name: "a clean sync"},
		{name: "a 503", fault: &sim.Fault{Kind: sim.FaultStatus, Status: http.StatusServiceUnavailable, Path: "/api/v3/klines", Count: 1}, errors: 1},
		{name: "a malformed page", fault: &sim.Fault{Kind: sim.FaultMalformed, Path: "/api/v3/klines", Count: 1}, errors: 1},
		{name: "a 429", fault: &sim.Fault{Kind: sim.FaultRateLimit, Path: "/api/v3/klines", Count: 1, RetryAfter: time.Second}, ratelimit: 1},
		{name: "a 418", fault: &sim.Fault{Kind: sim.FaultBan, Path: "/api/v3/klines", Count: 1, RetryAfter: 2 * time.Second}, bans: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, js := natsServer(t)
			s := sim.New(sim.Options{})
			url := serveSim(t, s, nil)
			f := runFetcher(t, testOptions(nc, url))
			if tc.fault != nil {
				s.AddFault(*tc.fault)
			}
			runID := fmt.Sprintf("run-stats-%d", i)
			publishJob(t, js, candles.Job{RunID: runID, Symbol: "BTCUSDT", Interval: "1h", From: from, Until: until})
			if tc.bans > 0 {
				waitFor(t, 10*time.Second, "the ban", func() bool { return !f.pacer.banned().IsZero() })
				end := f.pacer.banned()
				if got := fetcherStats(t, nc); got.Bans != 1 || !got.BannedUntil.Equal(end) {
					t.Errorf("during the ban: bans %d, banned_until %v; want 1 and %v", got.Bans, got.BannedUntil, end)
				}
			}
			waitFor(t, 20*time.Second, "the final page", func() bool { return finished(t, js, runID, btc1h) })

			// The exchange counts an answer once it is written, a moment
			// after the fetcher read it.
			var got candles.FetcherStats
			checkfor.Check(t, 5*time.Second, 20*time.Millisecond, func() error {
				got = fetcherStats(t, nc)
				if want := s.Stats().Requests; got.Requests != want {
					return fmt.Errorf("requests %d; the exchange answered %d", got.Requests, want)
				}
				return nil
			})
			st := s.Stats()
			weight, used := simWeight(st)
			if got.ID != f.id || got.ID == "" {
				t.Errorf("id %q; want the fetcher's budget id %q", got.ID, f.id)
			}
			if got.Errors != tc.errors || got.RateLimitHits != tc.ratelimit || got.Bans != tc.bans {
				t.Errorf("errors %d, ratelimit_hits %d, bans %d; want %d, %d, %d", got.Errors, got.RateLimitHits, got.Bans, tc.errors, tc.ratelimit, tc.bans)
			}
			var want503 int64
			if tc.fault != nil && tc.fault.Kind == sim.FaultStatus {
				want503 = 1
			}
			if st.RateLimited != tc.ratelimit || st.Banned != tc.bans || st.Statuses[http.StatusServiceUnavailable] != want503 {
				t.Errorf("the exchange answered %+v; want the fault once", st.Statuses)
			}
			if got.Weight != weight || got.UsedWeight != used || used == 0 {
				t.Errorf("weight %d, used_weight %d; the exchange charged %d and last reported %d", got.Weight, got.UsedWeight, weight, used)
			}
			if limit, _ := f.pacer.budget(); got.WeightLimit != limit || limit != sim.DefaultWeightLimit {
				t.Errorf("weight_limit %d; want the exchange's %d", got.WeightLimit, sim.DefaultWeightLimit)
			}
			if got.RequestSeconds <= 0 {
				t.Errorf("request_seconds %v for %d requests", got.RequestSeconds, got.Requests)
			}
			if !got.BannedUntil.IsZero() {
				t.Errorf("banned_until %v after the sync; want none", got.BannedUntil)
			}
		})
	}
}
