package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// make bench-cluster: a full-history backfill of 20 symbols x 1h on the
// 3-node R3 compose cluster, its throughput as a ratio of the same backfill
// on the embedded single server (`candlekeep up`, in-process) measured in
// the same run; then, during a second backfill, the time from stopping the
// CANDLES leader to the next stored batch.
func BenchmarkClusterBackfill(b *testing.B) {
	ckImage, natsImage := requireDocker(b)
	symbols := candles.DefaultSymbols()[:20]
	const body = `{"intervals":["1h"],"start":"listing","end":"2025-01-01T00:00:00Z","reason":"bench"}`

	// The embedded single server.
	_, simURL := startSim(b, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals = symbols, []string{"1h"}
	embedded := startUp(b, b.TempDir(), fo)
	nc := connect(b, embedded)
	ev := watchEvents(b, nc)
	began := time.Now()
	acc := requestSync(b, nc, body)
	var done candles.SyncCompleted
	ev.wait(b, candles.KindSyncCompleted, acc.RunID, 10*time.Minute, &done)
	single := float64(done.Candles) / time.Since(began).Seconds()

	// The compose cluster.
	st := newStack(b, ckImage, natsImage, stackConfig{symbols: strings.Join(symbols, ","), intervals: "1h,4h",
		schedule: "off", simLatency: "0s"})
	cnc := st.connect()
	st.waitReady(cnc)
	js, err := jetstream.New(cnc)
	if err != nil {
		b.Fatal(err)
	}
	checkfor.Check(b, time.Minute, 500*time.Millisecond, func() error { return streamsCurrent(b.Context(), js) })
	cev := clusterEvents{js: js}
	began = time.Now()
	run := requestSync(b, cnc, body).RunID
	var cdone candles.SyncCompleted
	cev.wait(b, candles.KindSyncCompleted, run, 10*time.Minute, &cdone)
	cluster := float64(cdone.Candles) / time.Since(began).Seconds()

	// Node loss: the next stored batch after the leader stops.
	db := filepath.Join(st.dataDir, databaseFile)
	run = requestSync(b, cnc, `{"intervals":["4h"],"start":"listing","end":"2025-01-01T00:00:00Z","reason":"bench"}`).RunID
	waitStoredMore(b, db, stored(db)+5000, 2*time.Minute)
	node := leaderOf(b, js, candles.StreamCandles)
	st.docker("stop", "-t", "5", st.container(node))
	moving := waitStoredMore(b, db, stored(db), 2*time.Minute)
	st.docker("start", st.container(node))
	cev.wait(b, candles.KindSyncCompleted, run, 10*time.Minute, &cdone)

	b.ReportMetric(single, "single-candles/s")
	b.ReportMetric(cluster, "cluster-candles/s")
	b.ReportMetric(cluster/single, "cluster/single")
	b.ReportMetric(moving.Seconds(), "s-node-stop-to-next-batch")
	fmt.Printf("backfill 20 symbols x 1h (%d candles): embedded single server %.0f candles/s, 3-node R3 compose cluster %.0f candles/s: ratio %.2f\n",
		done.Candles, single, cluster, cluster/single)
	fmt.Printf("node stop (%s, the CANDLES leader) to the next stored batch: %v\n", node, moving.Round(10*time.Millisecond))
}
