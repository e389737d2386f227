package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
)

// The monitor's figures (issue 8, "make bench"), printed as the other
// benchmarks print theirs (bench_test.go: report, verdict).

// clockTicks is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// 100 on every Linux ABI Go runs on.
const clockTicks = 100

// procCPU is the CPU time (user + system) process pid has used so far.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count fields after its ")".
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// Monitor CPU and memory: `candlekeep up --monitor=false` backfills 60
// pairs (the 60 shipped symbols x 1m, ten days: 864,000 candles) while a
// separate `candlekeep monitor` process watches, evaluating every second
// (--eval-interval 1s, 15 times the default's rate, so the backfill's few
// seconds hold evaluations and the figure is an upper bound): its CPU
// (utime + stime) over the backfill's wall time, as a share of one core,
// and its peak RSS (VmHWM).
func BenchmarkMonitorBackfill(b *testing.B) {
	for i := 0; i < b.N; i++ {
		simURL := catchUpSim(b)
		natsAddr := freeAddr(b)
		start(b, nil, "up", "--nats-insecure", "--monitor=false", "--data-dir", b.TempDir(), "--nats-listen", natsAddr, "--binance-url", simURL,
			"--intervals", "1m", "--weight-limit", "100000000", "--sync-schedule", "off", "--catch-up=false", "--log-level", "warn")
		natsURL := "nats://" + natsAddr
		nc := dialUntil(b, natsURL)
		waitAnswers(b, nc, candles.SubjectAPICoverage, candles.SubjectAPISync)
		mon := start(b, nil, "monitor", "--nats-url", natsURL, "--http-listen", freeAddr(b), "--eval-interval", "1s", "--log-level", "warn")
		waitAnswers(b, nc, candles.SubjectAPIHealth)
		ev := watchEvents(b, nc)
		pid := mon.cmd.Process.Pid
		cpu0, began := procCPU(b, pid), time.Now()
		acc := requestSync(b, nc, `{"start":"2024-01-01T00:00:00Z","end":"2024-01-11T00:00:00Z"}`)
		var sc candles.SyncCompleted
		ev.wait(b, candles.KindSyncCompleted, acc.RunID, 10*time.Minute, &sc)
		wall, cpu := time.Since(began), procCPU(b, pid)-cpu0
		if sc.PairsOK != 60 {
			b.Fatalf("backfill: %+v, want 60 pairs ok", sc)
		}
		pct := 100 * cpu.Seconds() / wall.Seconds()
		mb := peakRSS(b, pid)
		report("candlekeep monitor (--eval-interval 1s) during a 60-pair backfill (%d candles in %.1f s): CPU %.2f %% of one core (target < 2 %%: %s), peak RSS %.1f MB (target < 50 MB: %s)",
			sc.Candles, wall.Seconds(), pct, verdict(pct < 2), mb, verdict(mb < 50))
		b.ReportMetric(pct, "monitor-cpu-%")
		b.ReportMetric(mb, "monitor-MB")
	}
}

// /metrics with 10,000 pairs configured (625 symbols x the 16 intervals,
// all listed by the simulator), once the start-up catch-up stored one candle
// per pair (--lookback 1), so that every pair has its staleness series and
// its limit: the median of 20 scrapes of the monitor inside `candlekeep up`
// (at its defaults, --memory-limit 64MiB shared with NATS, the fetcher and
// the writer), and of a separate `candlekeep monitor` process on the same
// system, each once it evaluated all the pairs.
func BenchmarkMetricsScrape10000Pairs(b *testing.B) {
	for i := 0; i < b.N; i++ {
		syms := make([]string, 625)
		for j := range syms {
			syms[j] = fmt.Sprintf("SYM%03dUSDT", j)
		}
		_, simURL := startSim(b, sim.Options{Symbols: syms, WeightLimit: 100_000_000})
		natsAddr, httpAddr := freeAddr(b), freeAddr(b)
		began := time.Now()
		up := start(b, nil, "up", "--nats-insecure", "--data-dir", b.TempDir(), "--nats-listen", natsAddr, "--http-listen", httpAddr, "--binance-url", simURL,
			"--symbols", strings.Join(syms, ","), "--intervals", strings.Join(candles.IntervalNames(), ","), "--lookback", "1",
			"--weight-limit", "100000000", "--sync-schedule", "off", "--log-level", "warn")
		waitHTTP(b, "http://"+httpAddr+"/metrics", up)
		sc := waitCatchUp(b, "nats://"+natsAddr, began)
		if sc.PairsOK != 10000 {
			b.Fatalf("catch-up: %+v, want 10,000 pairs ok", sc)
		}
		monAddr := freeAddr(b)
		mon := start(b, nil, "monitor", "--nats-url", "nats://"+natsAddr, "--http-listen", monAddr, "--log-level", "warn")
		waitHTTP(b, "http://"+monAddr+"/metrics", mon)
		for _, tc := range []struct {
			name, addr string
			p          *proc
		}{{"the monitor inside up", httpAddr, up}, {"candlekeep monitor apart", monAddr, mon}} {
			url := "http://" + tc.addr + "/metrics"
			var body string
			checkfor.Check(b, 2*time.Minute, 200*time.Millisecond, func() error {
				body = getMetrics(b, url)
				if n := strings.Count(body, "\ncandlekeep_pair_staleness_seconds{"); n != 10000 {
					return fmt.Errorf("%s has evaluated %d pairs' staleness, not 10,000 yet", tc.name, n)
				}
				return nil
			})
			var took []time.Duration
			for range 20 {
				t0 := time.Now()
				getMetrics(b, url)
				took = append(took, time.Since(t0))
			}
			slices.Sort(took)
			median := (took[9] + took[10]) / 2
			report("GET /metrics with 10,000 pairs configured, %-24s (%d lines, %.1f MB; process peak RSS %.0f MB): median of 20 %6.1f ms, slowest %6.1f ms (target < 100 ms: %s)",
				tc.name, strings.Count(body, "\n"), float64(len(body))/1e6, peakRSS(b, tc.p.cmd.Process.Pid), millis(median), millis(took[19]),
				verdict(median < 100*time.Millisecond))
			b.ReportMetric(millis(median), "scrape-ms-"+strings.Fields(tc.name)[len(strings.Fields(tc.name))-1])
		}
	}
}

// dialUntil connects to natsURL once a server listens there.
func dialUntil(b *testing.B, natsURL string) *nats.Conn {
	var nc *nats.Conn
	checkfor.Check(b, 30*time.Second, 50*time.Millisecond, func() error {
		var err error
		nc, err = nats.Connect(natsURL)
		return err
	})
	b.Cleanup(nc.Close)
	return nc
}

// waitAnswers waits until each subject is answered (a probe gets a 400:
// enough to know the service runs).
func waitAnswers(b *testing.B, nc *nats.Conn, subjects ...string) {
	for _, subj := range subjects {
		checkfor.Check(b, 30*time.Second, 50*time.Millisecond, func() error {
			_, err := nc.Request(subj, []byte(`{"probe":1}`), time.Second)
			return err
		})
	}
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// getMetrics GETs url and returns the body; anything but 200 is fatal.
func getMetrics(b *testing.B, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(body)
}

// From a fault to the Slack message at a local webhook, with the monitor
// inside `candlekeep up` at --eval-interval 1s and the rules' own `for`
// (--rule-time-scale 1): both rules have no `for`, so the bound is the
// evaluation interval + 1 s.
//   - a 418 ban: from the simulator sending the 418 to CandlekeepRateLimitAbuse;
//   - a database file damaged under the running writer: from the damage
//     written to CandlekeepDatabaseCorrupt, and from the writer's detection
//     (integrity.failed) to the message.
func BenchmarkFaultToSlack(b *testing.B) {
	const eval = time.Second
	bound := eval + time.Second
	for i := 0; i < b.N; i++ {
		r := newAlertRig(b, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "5", "--catch-up=false")
		r.eval, r.timeScale = eval.String(), "1"
		r.start()
		r.sim.AddFault(sim.Fault{Kind: sim.FaultBan, Path: "/api/v3/klines", Count: 1, RetryAfter: time.Second})
		r.sync(`{}`)
		msg := r.inbox.waitFor(b, "CandlekeepRateLimitAbuse", "FIRING", time.Minute)
		ban := msg.At.Sub(time.Unix(0, r.firstBan.Load()))
		report("fault to Slack, 418 ban -> CandlekeepRateLimitAbuse: %.2f s (target < eval %v + for 0s + 1s = %v: %s)",
			ban.Seconds(), eval, bound, verdict(ban < bound))
		b.ReportMetric(ban.Seconds(), "s-418-to-slack")

		r = newAlertRig(b, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h", "--lookback", "1000", "--catch-up=false")
		r.eval, r.timeScale = eval.String(), "1"
		r.start()
		r.sync(`{}`)
		ev := watchEventsSince(b, r.nc, time.Now().Add(-time.Second))
		var damaged time.Time
		checkfor.Check(b, 30*time.Second, 50*time.Millisecond, func() error {
			_, err := storetest.CorruptCandles(filepath.Join(r.dataDir, databaseFile), 4)
			damaged = time.Now()
			return err
		})
		msg = r.inbox.waitFor(b, "CandlekeepDatabaseCorrupt", "FIRING", time.Minute)
		var failed candles.IntegrityFailed
		ev.wait(b, candles.KindIntegrityFailed, "", 10*time.Second, &failed)
		fromFault, fromDetection := msg.At.Sub(damaged), msg.At.Sub(failed.DetectedAt)
		report("fault to Slack, database damaged under the writer -> CandlekeepDatabaseCorrupt: %.2f s (of which %.2f s from the writer's detection) (target < eval %v + for 0s + 1s = %v: %s)",
			fromFault.Seconds(), fromDetection.Seconds(), eval, bound, verdict(fromFault < bound))
		b.ReportMetric(fromFault.Seconds(), "s-corrupt-to-slack")
	}
}
