package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// The staging stack of deploy/compose, with real containers: a 3-node
// JetStream cluster with R3 streams, two fetchers, the writer and the
// backup on one data volume, the monitor; the simulator as a container.
// One stack serves the scenarios in turn (each adds pairs the others do
// not touch, and the database is compared with the simulator's truth of
// every pair after each):
//   - node loss: during a full-history backfill of 20 symbols x 1h the
//     leader of CANDLES is stopped, later started again;
//   - a partitioned node: during a full-history backfill x 4h a node is
//     paused for 60 s;
//   - service restarts: during a 2-year backfill x 30m the writer's
//     process is killed (kill -9: its restart policy brings it back), a
//     fetcher's killed, the monitor restarted; every alert fired once per
//     incident;
//   - rolling upgrade: with a schedule running syncs, every container is
//     replaced one by one by a newly built image.
//
// Before them, least privilege: each service's user tries, with the real
// nats CLI, what it must not do. During the node-loss backfill the attacks
// of issue 10 are replayed with the fetcher's credentials.
//
// Throughout: one sync.completed per run and no run left open.
func TestComposeStackSurvivesNodeLossRestartsAndUpgrades(t *testing.T) {
	ckImage, natsImage := requireDocker(t)
	symbols := candles.DefaultSymbols()[:20]
	st := newStack(t, ckImage, natsImage, stackConfig{symbols: strings.Join(symbols, ","), intervals: "1h,4h,30m",
		schedule: "off", simLatency: "100ms", ruleTimeScale: "0.01", evalInterval: "1s"})
	nc := st.connect()
	st.waitReady(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, time.Minute, 500*time.Millisecond, func() error { return streamsCurrent(t.Context(), js) })
	ev := clusterEvents{js: js}
	truthSim := sim.New(sim.Options{})
	t.Cleanup(truthSim.Close)
	db := filepath.Join(st.dataDir, databaseFile)
	end := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	want := map[candles.Pair][]candles.Candle{}
	addTruth := func(iv string, from time.Time) {
		for p, cs := range truth(truthSim, symbols, iv, from, end) {
			want[p] = cs
		}
	}
	backfill := func(t *testing.T, body string) string {
		t.Helper()
		return requestSync(t, nc, body).RunID
	}
	completed := func(t *testing.T, runID string, timeout time.Duration) candles.SyncCompleted {
		t.Helper()
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, runID, timeout, &done)
		if done.PairsOK != len(symbols) || done.PairsFailed != 0 {
			t.Fatalf("run %s: %+v; want %d pairs ok", runID, done, len(symbols))
		}
		return done
	}
	// recovered: after a node came back, the run completes, every stream is
	// current on all three nodes and the database equals the exchange.
	recovered := func(t *testing.T, runID, iv string) candles.SyncCompleted {
		t.Helper()
		done := completed(t, runID, 5*time.Minute)
		checkfor.Check(t, 2*time.Minute, 500*time.Millisecond, func() error { return streamsCurrent(t.Context(), js) })
		addTruth(iv, time.Unix(0, 0))
		assertSame(t, readDB(t, db), want)
		return done
	}

	// forge replays the attacks of issue 10 with the fetcher's own
	// credentials (the one user allowed to publish batches), through the
	// real nats CLI, while runID is backfilling 1h: a stored candle
	// overwritten (open=1.0), FAKEUSDT, a candle three days ahead, an
	// empty final batch carrying the live run's run_id. The writer refuses
	// each with batch.rejected naming why.
	forge := func(t *testing.T, runID string) {
		t.Helper()
		forgeries := forgedBatches("1h", truthSim.Klines("BTCUSDT", candles.MustInterval("1h"), 0, end.UnixMilli())[0], runID)
		if len(ev.mustSnapshot(t).of(candles.KindSyncCompleted, runID)) != 0 {
			t.Fatal("the run completed before the forgeries were sent; the backfill is too short for this test")
		}
		for _, b := range forgeries {
			data, err := b.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if out, err := st.cli("fetcher", "pub", "--jetstream", candles.BatchSubject(b.Interval, b.Symbol), string(data)); err != nil {
				t.Fatalf("the fetcher user may publish batches (the writer is what refuses forged ones): %v\n%s", err, out)
			}
		}
		checkfor.Check(t, time.Minute, 500*time.Millisecond, func() error {
			if n := len(ev.mustSnapshot(t).of(candles.KindBatchRejected, "")); n != len(forgeries) {
				return fmt.Errorf("%d batch.rejected, want %d", n, len(forgeries))
			}
			return nil
		})
		assertForgeriesRejected(t, ev.mustSnapshot(t).of(candles.KindBatchRejected, ""))
	}

	t.Run("docs/deploy.md commands", func(t *testing.T) { st.runDocCommands(t, "../../docs/deploy.md") })

	t.Run("least privilege", func(t *testing.T) {
		// Each service's user tries, with the real nats CLI, what it must
		// not do: every attempt fails, and the servers log the violation
		// for that user and subject.
		for _, c := range []struct {
			user    string
			args    []string
			subject string
		}{
			{"fetcher", []string{"stream", "rm", "CANDLES", "-f"}, "$JS.API.STREAM.DELETE.CANDLES"},
			{"fetcher", []string{"stream", "purge", "CANDLES", "-f"}, "$JS.API.STREAM.PURGE.CANDLES"},
			{"fetcher", []string{"pub", "candles.events.alert.firing", `{"v":1}`}, "candles.events.alert.firing"},
			{"fetcher", []string{"consumer", "next", "CANDLES", "writer"}, "$JS.API.CONSUMER.MSG.NEXT.CANDLES.writer"},
			{"writer", []string{"stream", "rm", "CANDLES", "-f"}, "$JS.API.STREAM.DELETE.CANDLES"},
			{"writer", []string{"pub", "candles.batch.1h.BTCUSDT", `{"v":1}`}, "candles.batch.1h.BTCUSDT"},
			{"backup", []string{"stream", "purge", "CANDLES", "-f"}, "$JS.API.STREAM.PURGE.CANDLES"},
			{"backup", []string{"consumer", "next", "CANDLES", "writer"}, "$JS.API.CONSUMER.MSG.NEXT.CANDLES.writer"},
			{"monitor", []string{"stream", "rm", "EVENTS", "-f"}, "$JS.API.STREAM.DELETE.EVENTS"},
			{"monitor", []string{"pub", "candles.batch.1h.BTCUSDT", `{"v":1}`}, "candles.batch.1h.BTCUSDT"},
			{"readonly", []string{"pub", "candles.sync.request", `{}`}, "candles.sync.request"},
			{"readonly", []string{"stream", "rm", "CANDLES", "-f"}, "$JS.API.STREAM.DELETE.CANDLES"},
		} {
			t.Run(c.user+" "+strings.Join(c.args[:2], " "), func(t *testing.T) {
				before := st.violations(c.user, c.subject)
				if out, err := st.cli(c.user, c.args...); err == nil {
					t.Errorf("nats %s as %s succeeded:\n%s", strings.Join(c.args, " "), c.user, out)
				}
				checkfor.Check(t, 20*time.Second, 250*time.Millisecond, func() error {
					if st.violations(c.user, c.subject) <= before {
						return fmt.Errorf("no server logged a publish violation of %s to %s", c.user, c.subject)
					}
					return nil
				})
			})
		}
		// Nothing changed: the streams and the writer's consumer are there,
		// and the operator can still do what the others could not.
		checkfor.Check(t, 30*time.Second, 500*time.Millisecond, func() error { return streamsCurrent(t.Context(), js) })
		if _, err := js.Consumer(t.Context(), candles.StreamCandles, "writer"); err != nil {
			t.Fatalf("the writer's consumer: %v", err)
		}
		if out, err := st.cli("operator", "stream", "info", "CANDLES"); err != nil {
			t.Fatalf("the operator reads CANDLES: %v\n%s", err, out)
		}
	})

	t.Run("node loss", func(t *testing.T) {
		run := backfill(t, `{"intervals":["1h"],"start":"listing","end":"2025-01-01T00:00:00Z","reason":"full history"}`)
		waitStoredMore(t, db, 20000, 2*time.Minute)
		forge(t, run)
		node := leaderOf(t, js, candles.StreamCandles)
		before := stored(db)
		st.docker("stop", "-t", "5", st.container(node))
		moving := waitStoredMore(t, db, stored(db), 2*time.Minute)
		t.Logf("stopped %s (the CANDLES leader) at %d candles; the next batch was stored %v later", node, before, moving.Round(10*time.Millisecond))
		waitStoredMore(t, db, stored(db)+20000, 2*time.Minute)
		st.docker("start", st.container(node))
		done := recovered(t, run, "1h")
		var total int64
		for p, cs := range want {
			if p.Interval == "1h" {
				total += int64(len(cs))
			}
		}
		if done.Candles != total {
			t.Errorf("sync.completed counts %d candles, want all %d (a run closed early by the forged final batch has fewer)", done.Candles, total)
		}
	})

	t.Run("paused node", func(t *testing.T) {
		run := backfill(t, `{"intervals":["4h"],"start":"listing","end":"2025-01-01T00:00:00Z","reason":"full history"}`)
		n0 := stored(db)
		waitStoredMore(t, db, n0+5000, 2*time.Minute)
		node := leaderOf(t, js, candles.StreamCandles)
		st.docker("pause", st.container(node))
		pausedAt := time.Now()
		moving := waitStoredMore(t, db, stored(db), 2*time.Minute)
		t.Logf("paused %s (the CANDLES leader); the next batch was stored %v later", node, moving.Round(10*time.Millisecond))
		time.Sleep(time.Until(pausedAt.Add(60 * time.Second))) // the partition lasts 60 s, whatever the run does
		st.docker("unpause", st.container(node))
		recovered(t, run, "4h")
	})

	t.Run("service restarts", func(t *testing.T) {
		from := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
		run := backfill(t, `{"intervals":["30m"],"start":"2023-01-01T00:00:00Z","end":"2025-01-01T00:00:00Z","reason":"restarts"}`)
		n0 := stored(db)
		waitStoredMore(t, db, n0+20000, 2*time.Minute)
		st.crash("writer")
		waitStoredMore(t, db, stored(db), 2*time.Minute) // the restarted writer stores again
		st.crash("fetcher-1")
		st.docker("restart", "-t", "5", st.container("monitor"))
		completed(t, run, 5*time.Minute)
		addTruth("30m", from)
		assertSame(t, readDB(t, db), want)
		if n := st.docker("inspect", "-f", "{{.RestartCount}}", st.container("writer")); n == "0" {
			t.Errorf("the writer's restart count is 0: its restart policy did not bring it back")
		}
		runLedger(t, ev.mustSnapshot(t))
		st.alertsOncePerIncident(t, ev)
	})

	t.Run("rolling upgrade", func(t *testing.T) {
		// The new release: the same binaries under new tags and labels.
		next := map[string]string{"CANDLEKEEP_IMAGE": ckImage + "-next", "NATS_IMAGE": natsImage + "-next"}
		for _, b := range []struct{ kind, tag, bin string }{
			{"candlekeep", next["CANDLEKEEP_IMAGE"], binary(t)},
			{"nats", next["NATS_IMAGE"], natsServerBinary(t)},
		} {
			out, err := exec.Command("../../deploy/images/build.sh", b.kind, b.tag, b.bin, "next").CombinedOutput()
			if err != nil {
				t.Fatalf("build %s: %v\n%s", b.tag, err, out)
			}
		}
		upgradeFrom := time.Now()
		configSet(t, st, "sync-schedule=@every 10s")
		checkfor.Check(t, time.Minute, time.Second, func() error {
			for _, raw := range ev.mustSnapshot(t).of(candles.KindSyncStarted, "") {
				var tick candles.SyncStarted
				if json.Unmarshal(raw, &tick) == nil && tick.Reason == "schedule" {
					return nil
				}
			}
			return fmt.Errorf("no scheduled run started")
		})
		for _, e := range []string{"CANDLEKEEP_IMAGE=" + next["CANDLEKEEP_IMAGE"], "NATS_IMAGE=" + next["NATS_IMAGE"]} {
			st.env = append(st.env, e)
		}
		for _, svc := range []string{"nats-1", "nats-2", "nats-3", "writer", "fetcher-1", "fetcher-2", "backup", "monitor"} {
			st.mustCompose("up", "-d", "--no-deps", svc)
			img := st.docker("inspect", "-f", "{{.Config.Image}}", st.container(svc))
			if !strings.HasSuffix(img, "-next") {
				t.Fatalf("%s runs %s after the upgrade", svc, img)
			}
			if strings.HasPrefix(svc, "nats-") {
				checkfor.Check(t, 2*time.Minute, 500*time.Millisecond, func() error { return streamsCurrent(t.Context(), js) })
			} else {
				st.waitReady(nc)
			}
		}
		configSet(t, st, "sync-schedule=off")
		// Every run the schedule started ends; none is left open.
		checkfor.Check(t, 5*time.Minute, time.Second, func() error {
			all, err := ev.snapshot()
			if err != nil {
				return err
			}
			for _, raw := range all.of(candles.KindSyncStarted, "") {
				var h candles.EventHeader
				_ = json.Unmarshal(raw, &h)
				if len(all.of(candles.KindSyncCompleted, h.RunID)) == 0 && len(all.of(candles.KindSyncTimeout, h.RunID)) == 0 {
					return fmt.Errorf("run %s is still open", h.RunID)
				}
			}
			return nil
		})
		runLedger(t, ev.mustSnapshot(t))
		st.alertsOncePerIncident(t, ev)
		// Every pair is exact up to its newest candle, and caught up to
		// the time the upgrade began.
		got := readDB(t, db)
		for _, sym := range symbols {
			for _, iv := range []string{"1h", "4h", "30m"} {
				p := candles.Pair{Symbol: sym, Interval: iv}
				cs := got[p]
				if len(cs) == 0 {
					t.Fatalf("%s: nothing stored", p)
				}
				last := cs[len(cs)-1]
				d := candles.MustInterval(iv).Duration()
				if time.UnixMilli(last.OpenTime).Add(2 * d).Before(upgradeFrom) {
					t.Errorf("%s: newest candle opens %s, the schedule did not catch up to %s", p, time.UnixMilli(last.OpenTime).UTC(), upgradeFrom.UTC())
				}
				from := time.Unix(0, 0)
				if iv == "30m" {
					from = time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
				}
				want[p] = truthSim.Klines(sym, candles.MustInterval(iv), from.UnixMilli(), last.OpenTime+1)
			}
		}
		assertSame(t, got, want)
	})
}

// natsServerBinary is bin/nats-server beside the binary under test (make
// nats-server builds it).
func natsServerBinary(t testing.TB) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(binary(t)), "nats-server")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v (make images builds it)", p, err)
	}
	return p
}

// configSet runs `candlekeep config set` from the host as the operator.
func configSet(t testing.TB, st *stack, kv string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "config", "set", kv, "--nats-url", strings.Join(st.urls, ","))
	cmd.Env = os.Environ()
	if st.seed != "" {
		cmd.Env = append(cmd.Env, "CANDLEKEEP_NATS_NKEY="+st.seed)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("candlekeep config set %s: %v\n%s", kv, err, out)
	}
}

// A compose file whose secret file is missing does not start: compose
// names the file.
func TestComposeMissingSecretFailsNamingIt(t *testing.T) {
	ckImage, natsImage := requireDocker(t)
	st := &stack{t: t, project: fmt.Sprintf("cktestmiss%d", time.Now().UnixNano()%1e9), dataDir: t.TempDir(), secrets: t.TempDir()}
	envFile := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st.env = append(os.Environ(), "CANDLEKEEP_IMAGE="+ckImage, "NATS_IMAGE="+natsImage, "CANDLEKEEP_SECRETS_DIR="+st.secrets,
		"TEST_DATA_DIR="+st.dataDir, "COMPOSE_ENV_FILE="+envFile,
		"NATS_1_PORT="+freePort(t), "NATS_2_PORT="+freePort(t), "NATS_3_PORT="+freePort(t), "MONITOR_PORT="+freePort(t))
	st.writeSecrets()
	if err := os.Remove(filepath.Join(st.secrets, "writer.nk")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = st.compose("down", "-v", "--remove-orphans", "-t", "1") })
	out, err := st.compose("up", "-d", "--no-deps", "writer")
	if err == nil {
		t.Fatalf("docker-compose up started the writer without its secret:\n%s", out)
	}
	if !strings.Contains(out, filepath.Join(st.secrets, "writer.nk")) {
		t.Fatalf("the error does not name the missing secret file:\n%s", out)
	}
}

func freePort(t testing.TB) string { return freeAddr(t)[len("127.0.0.1:"):] }

// runDocCommands runs the sh blocks of a deploy document against the stack,
// from a directory where deploy/compose/secrets is the stack's secrets and
// bin/candlekeep the binary under test. Before candlekeep auth init exists
// the stack has no credentials: the commands then run without --context
// and --nats-nkey (NATS_URL names the nodes), and the ones that need the
// system account (nats server ...) are left out.
func (s *stack) runDocCommands(t *testing.T, doc string) {
	cmds := runbookCommands(t, doc)
	if len(cmds) < 5 {
		t.Fatalf("only %d commands in %s", len(cmds), doc)
	}
	work := t.TempDir()
	for _, d := range []string{"bin", "deploy/compose"} {
		if err := os.MkdirAll(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(binary(t), filepath.Join(work, "bin", "candlekeep")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(s.secrets, filepath.Join(work, "deploy/compose/secrets")); err != nil {
		t.Fatal(err)
	}
	natsCLI(t)
	noAuth := regexp.MustCompile(` --(context|nats-nkey) \S+`)
	for _, line := range cmds {
		if !s.authDone {
			if strings.Contains(line, " server ") {
				continue
			}
			line = noAuth.ReplaceAllString(line, "")
		}
		line = strings.NewReplacer("127.0.0.1:4222", s.urls[0][len("nats://"):], "127.0.0.1:4223", s.urls[1][len("nats://"):],
			"127.0.0.1:4224", s.urls[2][len("nats://"):]).Replace(line)
		t.Run(line, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "sh", "-c", line)
			cmd.Dir = work
			cmd.Env = append(os.Environ(), "NATS_URL="+strings.Join(s.urls, ","), "HOME="+t.TempDir())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}
