package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/fetcher"
)

// Faults from the exchange, each in its own test, through the whole
// pipeline: every run ends complete and exact, or with pair.failed naming
// the cause; no candle is lost or duplicated; the services keep running and
// a follow-up sync is exact.

var faultEnd = rangeStart.AddDate(0, 0, 60) // 1440 1h candles: two pages per pair

func TestFaultTimeouts(t *testing.T) {
	rig := startFaultRig(t, sim.Options{}, func(o *fetcher.Options) { o.RequestTimeout = 300 * time.Millisecond })
	hang := func(sym string, n int) sim.Fault {
		return sim.Fault{Kind: sim.FaultTimeout, Path: "/api/v3/klines", Symbol: sym, Count: n, Delay: 10 * time.Second}
	}
	rig.s.AddFault(hang("ETHUSDT", 1))
	rig.s.AddFault(hang("BNBUSDT", 3)) // asked again in place: the fourth request gets through
	rig.s.AddFault(hang("SOLUSDT", 0)) // never answers: 4 attempts of 4 requests, then pair.failed
	run := rig.sync(t, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"})
	rig.check(t, run, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}, map[string][]string{
		"SOLUSDT": {"gave up after 4 attempts", "timeout"},
	})
	rig.followUp(t)
}

func TestFaultServerErrorBurst(t *testing.T) {
	rig := startFaultRig(t, sim.Options{}, nil)
	status := func(sym string, st, n int) sim.Fault {
		return sim.Fault{Kind: sim.FaultStatus, Path: "/api/v3/klines", Symbol: sym, Status: st, Count: n}
	}
	rig.s.AddFault(status("BTCUSDT", 503, 2))
	rig.s.AddFault(status("ETHUSDT", 502, 2)) // an HTML page, as from a proxy
	rig.s.AddFault(status("BNBUSDT", 504, 3))
	rig.s.AddFault(status("SOLUSDT", 500, 0))
	run := rig.sync(t, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"})
	rig.check(t, run, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}, map[string][]string{
		"SOLUSDT": {"gave up after 4 attempts", "HTTP 500"},
	})
	rig.followUp(t)
}

func TestFaultRateLimitStormHonoursRetryAfter(t *testing.T) {
	rig := startFaultRig(t, sim.Options{}, nil)
	limit := func(sym string, n int) sim.Fault {
		return sim.Fault{Kind: sim.FaultRateLimit, Path: "/api/v3/klines", Symbol: sym, Count: n, RetryAfter: time.Second}
	}
	rig.s.AddFault(limit("BTCUSDT", 3)) // retried three times, then through
	rig.s.AddFault(limit("ETHUSDT", 1))
	rig.s.AddFault(limit("XRPUSDT", 0)) // a storm that does not pass
	run := rig.sync(t, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"})
	rig.check(t, run, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}, map[string][]string{
		"XRPUSDT": {"gave up after 4 attempts", "429"},
	})
	const storm = 3 + 1 + 4
	if got := rig.s.Stats().RateLimited; got != storm {
		t.Errorf("the exchange answered %d 429s, want the %d the faults caused", got, storm)
	}
	if got := len(rig.ev.of(candles.KindRateLimitHit, run.RunID)); got != storm {
		t.Errorf("%d ratelimit.hit events, want %d", got, storm)
	}
	// After a 429 no request was sent for its Retry-After; only requests
	// already on their way may arrive just after it.
	var last429 time.Time
	for _, r := range rig.reqs.All() {
		if d := r.At.Sub(last429); d > 150*time.Millisecond && d < time.Second {
			t.Fatalf("%s sent %v after a 429 with Retry-After: 1", r.Path+"?"+r.Query, d)
		}
		if r.Status == http.StatusTooManyRequests {
			last429 = r.At
		}
	}
	rig.followUp(t)
}

func TestFaultBanPausesEveryRequest(t *testing.T) {
	rig := startFaultRig(t, sim.Options{}, nil)
	rig.s.AddFault(sim.Fault{Kind: sim.FaultBan, Path: "/api/v3/klines", Count: 1, RetryAfter: 2 * time.Second})
	run := rig.sync(t, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"})
	rig.check(t, run, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}, nil)

	banned := rig.ev.of(candles.KindRateLimitBanned, "")
	if len(banned) != 1 {
		t.Fatalf("%d ratelimit.banned events, want one for the one ban", len(banned))
	}
	var ev candles.RateLimitBanned
	if err := json.Unmarshal(banned[0], &ev); err != nil || ev.Until.IsZero() || ev.RunID != run.RunID {
		t.Fatalf("ratelimit.banned = %s", banned[0])
	}
	var first418 time.Time
	for _, r := range rig.reqs.All() {
		if r.Status == http.StatusTeapot && first418.IsZero() {
			first418 = r.At
		}
		// Requests already on their way when the ban began may still arrive.
		if !first418.IsZero() && r.At.After(first418.Add(200*time.Millisecond)) && r.At.Before(ev.Until) {
			t.Fatalf("%s reached the exchange %v into the ban (until %v)", r.Path+"?"+r.Query, r.At.Sub(first418), ev.Until)
		}
	}
	if first418.IsZero() {
		t.Fatal("no request was banned; the fault did not act")
	}
	if st := rig.s.Stats(); st.Banned > 4 {
		t.Fatalf("%d requests answered 418; only the ones in flight when the ban began may be", st.Banned)
	}
	rig.followUp(t)
}

func TestFaultMalformedAndTruncatedBodies(t *testing.T) {
	rig := startFaultRig(t, sim.Options{}, nil)
	body := func(kind sim.FaultKind, sym string, n int) sim.Fault {
		return sim.Fault{Kind: kind, Path: "/api/v3/klines", Symbol: sym, Count: n}
	}
	rig.s.AddFault(body(sim.FaultMalformed, "ETHUSDT", 2))
	rig.s.AddFault(body(sim.FaultTruncate, "BNBUSDT", 3))
	rig.s.AddFault(body(sim.FaultInvalid, "XRPUSDT", 1))
	rig.s.AddFault(body(sim.FaultTruncate, "SOLUSDT", 0))
	run := rig.sync(t, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "SOLUSDT"})
	rig.check(t, run, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"}, map[string][]string{
		"SOLUSDT": {"gave up after 4 attempts", "bad page from the exchange"},
	})
	rejected := map[string]int{}
	for _, raw := range rig.ev.of(candles.KindBatchRejected, run.RunID) {
		var br candles.BatchRejected
		_ = json.Unmarshal(raw, &br)
		if br.Source != "exchange" {
			t.Fatalf("batch.rejected = %s", raw)
		}
		rejected[br.Symbol]++
	}
	// Every bad page is rejected once; SOLUSDT's never comes right: 4
	// attempts, each asking the page 4 times (pageRetries in place).
	if want := map[string]int{"ETHUSDT": 2, "BNBUSDT": 3, "XRPUSDT": 1, "SOLUSDT": 16}; !maps.Equal(rejected, want) {
		t.Fatalf("batch.rejected per symbol = %v, want %v", rejected, want)
	}
	rig.followUp(t)
}

// Two requests for the same pairs at once. An explicit range: the second
// waits for the first run's locks and skips what it fetched, so the
// exchange serves each pair's pages once, and both runs complete. From the
// last stored candle: the second finds every pair being synced by the first
// and starts no run at all (sync.skipped).
func TestConcurrentRequestsFetchEachPairOnce(t *testing.T) {
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}
	for _, tt := range []struct {
		name      string
		body      string
		pages     int64 // klines requests one run needs per pair
		coalesces bool  // the second request is skipped, not run
	}{
		{"explicit range", fmt.Sprintf(`{"symbols":%s,"intervals":["1h"],"start":%q,"end":%q}`, jsonList(symbols),
			rangeStart.Format(time.RFC3339), rangeStart.AddDate(0, 0, 90).Format(time.RFC3339)), 3, false},
		{"incremental from the last stored candle", fmt.Sprintf(`{"symbols":%s,"intervals":["1h"],"lookback":1500}`, jsonList(symbols)), 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rig := startFaultRig(t, sim.Options{Latency: 100 * time.Millisecond}, nil) // the first run is still in flight when the second is planned
			a := requestSync(t, rig.nc, tt.body)
			b := requestSync(t, rig.nc, tt.body)
			runs := []candles.SyncAccepted{a, b}
			if tt.coalesces {
				runs = runs[:1]
				var sk candles.SyncSkipped
				rig.ev.wait(t, candles.KindSyncSkipped, b.RunID, 30*time.Second, &sk)
				if sk.PairsStarted != 0 || len(sk.Pairs) != len(symbols) || len(sk.SyncingRuns) != 1 || sk.SyncingRuns[0] != a.RunID {
					t.Fatalf("sync.skipped = %+v, want every pair skipped for run %s", sk, a.RunID)
				}
				if n := len(rig.ev.of(candles.KindSyncStarted, b.RunID)); n != 0 {
					t.Fatalf("the skipped request started a run")
				}
			}
			for _, run := range runs {
				var done candles.SyncCompleted
				rig.ev.wait(t, candles.KindSyncCompleted, run.RunID, 30*time.Second, &done)
				if done.PairsOK != len(symbols) || done.PairsFailed != 0 {
					t.Fatalf("run %s: %+v", run.RunID, done)
				}
			}
			st := rig.s.Stats()
			for _, sym := range symbols {
				if got := st.Klines[sym+"/1h"]; got != tt.pages {
					t.Errorf("%s: %d klines requests for two runs, want %d (one run's pages)", sym, got, tt.pages)
				}
			}
			stored := readDB(t, rig.dbPath)
			for _, sym := range symbols {
				p := candles.Pair{Symbol: sym, Interval: "1h"}
				cs := stored[p]
				if len(cs) == 0 {
					t.Fatalf("%s: nothing stored", p)
				}
				want := truth(rig.s, []string{sym}, "1h", time.UnixMilli(cs[0].OpenTime), time.UnixMilli(cs[len(cs)-1].OpenTime+1))
				assertSame(t, map[candles.Pair][]candles.Candle{p: cs}, want)
			}
		})
	}
}

// faultRig is `candlekeep up` against a simulator whose requests are logged.
type faultRig struct {
	s      *sim.Sim
	reqs   *sim.RequestLog
	nc     *nats.Conn
	ev     *events
	dbPath string
	synced []string // symbols of the first sync, for the follow-up
}

func startFaultRig(t *testing.T, so sim.Options, tune func(*fetcher.Options)) *faultRig {
	t.Helper()
	s := sim.New(so)
	rig := &faultRig{s: s, reqs: &sim.RequestLog{}}
	srv := httptest.NewServer(rig.reqs.Wrap(s))
	t.Cleanup(func() { s.Close(); srv.Close() })
	o := testFetcherOptions(srv.URL)
	o.RetryBase = 100 * time.Millisecond
	if tune != nil {
		tune(&o)
	}
	dataDir := t.TempDir()
	rig.nc = connect(t, startUp(t, dataDir, o))
	for deadline := time.Now().Add(10 * time.Second); ; { // startUp waits for the writer only
		if _, err := rig.nc.Request("$SRV.PING."+fetcher.ServiceName, nil, time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fetcher does not answer")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rig.ev = watchEvents(t, rig.nc)
	rig.dbPath = filepath.Join(dataDir, databaseFile)
	return rig
}

// sync requests symbols × 1h over [rangeStart, faultEnd) and waits for
// sync.completed.
func (r *faultRig) sync(t *testing.T, symbols []string) candles.SyncAccepted {
	t.Helper()
	r.synced = symbols
	return requestSync(t, r.nc, fmt.Sprintf(`{"symbols":%s,"intervals":["1h"],"start":%q,"end":%q,"reason":"faults"}`,
		jsonList(symbols), rangeStart.Format(time.RFC3339), faultEnd.Format(time.RFC3339)))
}

// check waits for the run's end and checks that the ok symbols are stored
// exactly and counted once, and that each failed symbol has one pair.failed
// whose reason says every string listed for it.
func (r *faultRig) check(t *testing.T, run candles.SyncAccepted, ok []string, failed map[string][]string) {
	t.Helper()
	var done candles.SyncCompleted
	r.ev.wait(t, candles.KindSyncCompleted, run.RunID, 45*time.Second, &done)
	want := truth(r.s, ok, "1h", rangeStart, faultEnd)
	if done.PairsOK != len(ok) || done.PairsFailed != len(failed) || done.Candles != int64(count(want)) {
		t.Fatalf("sync.completed = %+v, want %d ok, %d failed, %d candles", done, len(ok), len(failed), count(want))
	}
	got := map[string]string{}
	for _, raw := range r.ev.of(candles.KindPairFailed, run.RunID) {
		var pf candles.PairFailed
		_ = json.Unmarshal(raw, &pf)
		if _, dup := got[pf.Symbol]; dup {
			t.Fatalf("two pair.failed events for %s", pf.Symbol)
		}
		got[pf.Symbol] = pf.Reason
	}
	for sym, says := range failed {
		reason, found := got[sym]
		if !found {
			t.Fatalf("no pair.failed for %s (got %v)", sym, got)
		}
		for _, s := range says {
			if !strings.Contains(reason, s) {
				t.Fatalf("pair.failed reason for %s = %q, want it to say %q", sym, reason, s)
			}
		}
		delete(got, sym)
	}
	if len(got) > 0 {
		t.Fatalf("unexpected pair.failed: %v", got)
	}
	assertSame(t, readDB(t, r.dbPath), want)
}

// followUp clears the faults and checks that the services still run: the
// same sync again completes every pair, and the database equals the truth.
func (r *faultRig) followUp(t *testing.T) {
	t.Helper()
	r.s.ClearFaults()
	run := r.sync(t, r.synced)
	var done candles.SyncCompleted
	r.ev.wait(t, candles.KindSyncCompleted, run.RunID, 30*time.Second, &done)
	if done.PairsOK != len(r.synced) || done.PairsFailed != 0 {
		t.Fatalf("follow-up sync: %+v", done)
	}
	assertSame(t, readDB(t, r.dbPath), truth(r.s, r.synced, "1h", rangeStart, faultEnd))
}

func jsonList(ss []string) string {
	b, _ := json.Marshal(ss)
	return string(b)
}
