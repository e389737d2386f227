package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/smalldisk"
	"github.com/candlekeep/candlekeep/services/fetcher"
)

// waitRecreated waits for the resource.recreated event of resource.
func waitRecreated(t *testing.T, ev *events, resource string) candles.ResourceRecreated {
	t.Helper()
	var rr candles.ResourceRecreated
	ev.waitMatch(t, candles.KindResourceRecreated, 30*time.Second, &rr, func() bool { return rr.Resource == resource })
	if rr.Service == "" || rr.Reason == "" {
		t.Fatalf("resource.recreated %+v: want the service and the reason", rr)
	}
	return rr
}

// syncRefusal sends a sync request and returns the error code and message
// of a refusal ("" when it was accepted).
func syncRefusal(t *testing.T, nc *nats.Conn, body string) (code, msg string) {
	t.Helper()
	m, err := nc.Request(candles.SubjectAPISync, []byte(body), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error")
}

// With `candlekeep up` running, every stream, consumer and bucket the
// fetcher uses, and the cluster configuration, is deleted with the nats
// CLI: each comes back within seconds with its resource.recreated event,
// the sync schedule is back in SYNC, and a sync afterwards stores exactly
// the truth. While JOBS is missing and cannot be made (another stream holds
// its subjects), candles.api.sync refuses with a 503 that names the problem
// instead of answering with a run that cannot start.
func TestResourcesHealThemselves(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	simAddr, natsAddr := freeAddr(t), freeAddr(t)
	dataDir := t.TempDir()
	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	const schedule = "0 0 1 * * *"
	upProc := start(t, []string{"CANDLEKEEP_BINANCE_URL=http://" + simAddr},
		"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--symbols", "BTCUSDT,ETHUSDT",
		"--intervals", "1h", "--catch-up=false", "--sync-schedule", schedule, "--log-format", "json")
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-fetcher", "micro", "ls")
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cli := func(args ...string) {
		t.Helper()
		if out, err := natsCmd(t, server, args...); err != nil {
			t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// Consumers alone.
	cli("consumer", "rm", "-f", candles.StreamJobs, fetcher.JobConsumer)
	waitRecreated(t, ev, "consumer JOBS > "+fetcher.JobConsumer)
	cli("consumer", "rm", "-f", candles.StreamSync, fetcher.RequestConsumer)
	waitRecreated(t, ev, "consumer SYNC > "+fetcher.RequestConsumer)

	// Streams, with their consumers and the schedule that lived in SYNC.
	before := len(ev.of(candles.KindResourceRecreated, ""))
	cli("stream", "rm", "-f", candles.StreamSync)
	waitRecreated(t, ev, "stream SYNC")
	cli("stream", "rm", "-f", candles.StreamJobs)
	waitRecreated(t, ev, "stream JOBS")
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		var seen []string
		for _, raw := range ev.of(candles.KindResourceRecreated, "")[before:] {
			var rr candles.ResourceRecreated
			_ = json.Unmarshal(raw, &rr)
			seen = append(seen, rr.Resource)
		}
		for _, want := range []string{"consumer SYNC > " + fetcher.RequestConsumer, "consumer JOBS > " + fetcher.JobConsumer} {
			if !strings.Contains(strings.Join(seen, "|"), want) {
				return fmt.Errorf("no resource.recreated for %s after its stream was removed; seen %v", want, seen)
			}
		}
		return nil
	})
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		s, err := js.Stream(ctx, candles.StreamSync)
		if err != nil {
			return err
		}
		m, err := s.GetLastMsgForSubject(ctx, candles.SubjectSyncSchedule)
		if err != nil {
			return fmt.Errorf("no schedule in the recreated SYNC: %w", err)
		}
		if got := m.Header.Get("Nats-Schedule"); got != "0 0 1 * * *" {
			return fmt.Errorf("schedule %q in the recreated SYNC, want %q", got, schedule)
		}
		// The backup service's schedule lives in SYNC too: it puts it back.
		if _, err := s.GetLastMsgForSubject(ctx, candles.SubjectBackupSchedule); err != nil {
			return fmt.Errorf("no backup schedule in the recreated SYNC: %w", err)
		}
		return nil
	})

	// Buckets, the cluster configuration among them.
	for _, bucket := range []string{fetcher.FetchersBucket, fetcher.LockBucket, fetcher.ProgressBucket, cluster.ConfigBucket} {
		cli("kv", "rm", "-f", bucket)
		waitRecreated(t, ev, "kv "+bucket)
	}
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		values, _, err := cluster.Load(ctx, js)
		if err != nil {
			return err
		}
		if values["symbols"] != "BTCUSDT,ETHUSDT" || values["sync-schedule"] != schedule {
			return fmt.Errorf("re-seeded configuration %v: want the settings in force", values)
		}
		return nil
	})

	// The recreated board is watched: a ban written there pauses the
	// fetcher, and deleting it lifts the pause.
	banUntil := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	cli("kv", "put", fetcher.FetchersBucket, fetcher.BanKey, fmt.Sprintf(`{"v":1,"until":%q,"since":%q,"reason":"test"}`, banUntil, banUntil))
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(upProc.out.String(), `"msg":"exchange ban: no requests until it ends"`) {
			return errors.New("the fetcher did not see the ban written to the recreated board")
		}
		return nil
	})
	cli("kv", "del", "-f", fetcher.FetchersBucket, fetcher.BanKey)
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(upProc.out.String(), `"msg":"ban lifted on the board; requests resume"`) {
			return errors.New("the fetcher did not see the ban lifted on the recreated board")
		}
		return nil
	})

	// JOBS missing and impossible to make: a stream of the operator's holds
	// its subjects. The fetcher recreates JOBS as soon as it is removed, so
	// remove it until the blocker is in place and JOBS stays away.
	checkfor.Check(t, 30*time.Second, 10*time.Millisecond, func() error {
		if _, err := js.Stream(ctx, candles.StreamJobs); err == nil {
			if err := js.DeleteStream(ctx, candles.StreamJobs); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return err
			}
			return errors.New("JOBS was still there")
		}
		if _, err := js.Stream(ctx, "BLOCKER"); err != nil {
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BLOCKER", Subjects: []string{candles.SubjectJobPrefix + ">"}}); err != nil {
				return err
			}
			return errors.New("BLOCKER just created")
		}
		return nil
	})
	code, msg := syncRefusal(t, nc, `{"reason":"while JOBS cannot be made"}`)
	if code != "503" || !strings.Contains(msg, "stream JOBS is missing and cannot be recreated") || !strings.Contains(msg, "overlap") {
		t.Fatalf("sync while JOBS cannot be made: code %q, message %q; want 503 naming the problem; output:\n%s", code, msg, tail(upProc.out.String(), 30))
	}
	if err := js.DeleteStream(ctx, "BLOCKER"); err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if _, err := js.Stream(ctx, candles.StreamJobs); err != nil {
			return fmt.Errorf("JOBS not recreated after the blocker went: %w", err)
		}
		return nil
	})

	// Everything works again: a sync stores exactly the truth.
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 20, 0, 0, 0, 0, time.UTC)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q,"reason":"after healing"}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	if done.PairsOK != 2 || done.PairsFailed != 0 {
		t.Fatalf("sync.completed = %+v, want 2 pairs ok", done)
	}
	assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)),
		truth(sim.New(sim.Options{}), []string{"BTCUSDT", "ETHUSDT"}, "1h", from, until))
}

// The data directory of `candlekeep up` on a small filesystem that runs full
// during a backfill: the writer and the NATS store report disk.full once
// each, nothing jams, and when space is freed in the middle of the run both
// report disk.recovered and the run completes with the database exact.
func TestDiskFullIsAState(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	dataDir := smalldisk.Mount(t, 96<<20)
	simAddr, natsAddr := freeAddr(t), freeAddr(t)
	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	symbols := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"}
	up := start(t, []string{"CANDLEKEEP_BINANCE_URL=http://" + simAddr},
		"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--symbols", strings.Join(symbols, ","),
		"--intervals", "1m", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json")
	server := "nats://" + natsAddr
	natsUntil(t, server, "candlekeep-fetcher", "micro", "ls")
	natsUntil(t, server, "candlekeep-writer", "micro", "ls")
	nc := connect(t, server)
	ev := watchEvents(t, nc)

	// About 30 MB of batches and 15 MB of database; 6 MB free when it starts.
	from, until := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 29, 0, 0, 0, 0, time.UTC)
	ballast := filepath.Join(dataDir, "ballast")
	smalldisk.Fill(t, ballast, 6<<20)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q,"reason":"disk full"}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))

	// The NATS store runs full (the fetcher keeps publishing whatever the
	// writer does), and reports it.
	var full candles.DiskFull
	ev.waitMatch(t, candles.KindDiskFull, 3*time.Minute, &full, func() bool { return full.Service == "nats-server" })
	if full.Path != filepath.Join(dataDir, "nats") || full.Reason == "" || full.FreeBytes > 1<<20 {
		t.Fatalf("disk.full = %+v: want the NATS store's path, a reason and next to no space", full)
	}
	if len(ev.of(candles.KindSyncCompleted, acc.RunID)) > 0 {
		t.Fatal("the run completed although the disk was full")
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	var rec candles.DiskRecovered
	ev.waitMatch(t, candles.KindDiskRecovered, time.Minute, &rec, func() bool { return rec.Service == "nats-server" })
	if rec.Path != full.Path || rec.FreeBytes < 1<<20 || rec.Since.IsZero() {
		t.Fatalf("disk.recovered = %+v after disk.full %+v", rec, full)
	}

	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 5*time.Minute, &done)
	if done.PairsOK != len(symbols) || done.PairsFailed != 0 {
		t.Fatalf("sync.completed = %+v, want every pair ok; output:\n%s", done, tail(up.out.String(), 40))
	}
	assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)), truth(sim.New(sim.Options{}), symbols, "1m", from, until))

	// One disk.full and one disk.recovered per service that ran out of
	// space, not one per retry.
	perService := func(kind string) map[string]int {
		n := map[string]int{}
		for _, raw := range ev.of(kind, "") {
			var h struct {
				Service string `json:"service"`
			}
			_ = json.Unmarshal(raw, &h)
			n[h.Service]++
		}
		return n
	}
	var fulls, recs map[string]int
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		fulls, recs = perService(candles.KindDiskFull), perService(candles.KindDiskRecovered)
		for svc, n := range fulls {
			if n != 1 || recs[svc] != 1 {
				return fmt.Errorf("service %s: %d disk.full and %d disk.recovered, want one each (all: full %v, recovered %v)", svc, n, recs[svc], fulls, recs)
			}
		}
		return nil
	})
	t.Logf("disk events: full %v, recovered %v", fulls, recs)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
