package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// The container tests drive deploy/compose with docker-compose (1.29 or
// later) and the images `make images` builds: CANDLEKEEP_IMAGE and
// NATS_IMAGE (make test sets them to candlekeep:test and
// candlekeep-nats:test). Without a docker engine they skip, unless
// CANDLEKEEP_REQUIRE_DOCKER=1 (.ci/run sets it): then they fail.
const composeDir = "../../deploy/compose"

// requireDocker skips (or, with CANDLEKEEP_REQUIRE_DOCKER=1, fails) when
// the docker engine, docker-compose or the images are not there.
func requireDocker(t testing.TB) (ckImage, natsImage string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the compose stack; runs without -short")
	}
	miss := func(why string) {
		if os.Getenv("CANDLEKEEP_REQUIRE_DOCKER") == "1" {
			t.Fatalf("CANDLEKEEP_REQUIRE_DOCKER=1 but %s", why)
		}
		t.Skipf("container test skipped: %s (set CANDLEKEEP_REQUIRE_DOCKER=1 to make this a failure)", why)
	}
	if out, err := exec.Command("docker", "info").CombinedOutput(); err != nil {
		miss(fmt.Sprintf("`docker info` failed: %v: %.200s", err, out))
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		miss("docker-compose is not installed")
	}
	ckImage, natsImage = os.Getenv("CANDLEKEEP_IMAGE"), os.Getenv("NATS_IMAGE")
	if ckImage == "" {
		ckImage = "candlekeep:test"
	}
	if natsImage == "" {
		natsImage = "candlekeep-nats:test"
	}
	for _, img := range []string{ckImage, natsImage} {
		if err := exec.Command("docker", "image", "inspect", img).Run(); err != nil {
			miss(fmt.Sprintf("image %s is not built (make images)", img))
		}
	}
	return ckImage, natsImage
}

// stack is one compose project of deploy/compose plus the test override.
type stack struct {
	t        testing.TB
	project  string
	env      []string
	dataDir  string
	secrets  string
	urls     []string // the three nodes as the host reaches them
	seed     string   // the operator's nkey seed ("" without auth)
	monitor  string   // host:port of the monitor's HTTP
	sim      string   // host:port of the simulator (its webhook inbox)
	authDone bool
}

// stackConfig is what a test changes of the stack.
type stackConfig struct {
	symbols, intervals, schedule, simLatency string
	// ruleTimeScale and evalInterval are the monitor's (default 1 and 15s);
	// the container test shortens them so its incidents fire.
	ruleTimeScale, evalInterval string
}

// hasAuthInit reports whether the binary under test has `candlekeep auth
// init` (the credentials of deploy/compose).
func hasAuthInit(t testing.TB) bool {
	return exec.Command(binary(t), "auth", "init", "--help").Run() == nil
}

// newStack writes the secrets and starts the stack; `down -v` at cleanup.
func newStack(t testing.TB, ckImage, natsImage string, c stackConfig) *stack {
	t.Helper()
	s := &stack{t: t, project: fmt.Sprintf("cktest%d", time.Now().UnixNano()%1e9), dataDir: t.TempDir(), secrets: t.TempDir()}
	// The containers run as 65532: the data directory is theirs (the test
	// reads it as root, or through the 0700 mode when it owns the files).
	if err := os.Chown(s.dataDir, 65532, 65532); err != nil {
		t.Logf("chown data dir: %v (needs root; opening it to the containers instead)", err)
		_ = os.Chmod(s.dataDir, 0o777)
	}
	ports := make([]string, 5)
	for i := range ports {
		ports[i] = freeAddr(t)[len("127.0.0.1:"):]
	}
	for i := range 3 {
		s.urls = append(s.urls, "nats://127.0.0.1:"+ports[i])
	}
	s.monitor = "127.0.0.1:" + ports[3]
	s.sim = "127.0.0.1:" + ports[4]
	if c.ruleTimeScale == "" {
		c.ruleTimeScale = "1"
	}
	if c.evalInterval == "" {
		c.evalInterval = "15s"
	}
	envFile := filepath.Join(t.TempDir(), "empty.env") // not the operator's .env
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.env = append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+s.project, "CANDLEKEEP_IMAGE="+ckImage, "NATS_IMAGE="+natsImage,
		"CANDLEKEEP_SECRETS_DIR="+s.secrets, "TEST_DATA_DIR="+s.dataDir,
		"NATS_1_PORT="+ports[0], "NATS_2_PORT="+ports[1], "NATS_3_PORT="+ports[2], "MONITOR_PORT="+ports[3], "SIM_PORT="+ports[4],
		"TEST_RULE_TIME_SCALE="+c.ruleTimeScale, "TEST_EVAL_INTERVAL="+c.evalInterval,
		"TEST_SYMBOLS="+c.symbols, "TEST_INTERVALS="+c.intervals, "TEST_LOOKBACK=10",
		"TEST_SYNC_SCHEDULE="+c.schedule, "SIM_LATENCY="+c.simLatency, "COMPOSE_ENV_FILE="+envFile)
	s.writeSecrets()
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.compose("logs", "--no-color", "--tail", "40")
			t.Logf("compose logs (tail):\n%s", out)
			if dir := os.Getenv("CANDLEKEEP_COMPOSE_LOGS"); dir != "" {
				// The whole logs, for a failure that the tail does not explain.
				all, _ := s.compose("logs", "--no-color", "--timestamps")
				p := filepath.Join(dir, s.project+".log")
				if err := os.WriteFile(p, []byte(all), 0o600); err == nil {
					t.Logf("compose logs in full: %s", p)
				}
			}
		}
		if out, err := s.compose("down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	if out, err := s.compose("up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	return s
}

// writeSecrets runs make secrets' script (candlekeep auth init) when the
// binary has it; before that, stand-in files: no accounts (the cluster
// runs without authentication), routes without a password, empty seeds.
func (s *stack) writeSecrets() {
	t := s.t
	if hasAuthInit(t) {
		cmd := exec.Command(filepath.Join(composeDir, "make-secrets.sh"), binary(t), s.secrets)
		cmd.Env = s.env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make-secrets.sh: %v\n%s", err, out)
		}
		s.seed = filepath.Join(s.secrets, "operator.nk")
		s.authDone = true
		s.slackToInbox()
		return
	}
	t.Log("candlekeep auth init is not in this binary yet: the stack runs without NATS credentials")
	files := map[string]string{
		"auth.conf":    "# no accounts: stand-in until candlekeep auth init\n",
		"cluster.conf": "routes = [\n  nats-route://nats-1:6222\n  nats-route://nats-2:6222\n  nats-route://nats-3:6222\n]\n",
	}
	for _, u := range []string{"fetcher", "writer", "backup", "monitor"} {
		files[u+".nk"] = ""
	}
	files["monitor.env"] = ""
	for name, body := range files {
		p := filepath.Join(s.secrets, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = os.Chown(p, 65532, 65532)
	}
}

// slackToInbox fills in the Slack line of the monitor.env that `make
// secrets` wrote, as an operator does, with the simulator's webhook inbox
// for the workspace.
func (s *stack) slackToInbox() {
	p := filepath.Join(s.secrets, "monitor.env")
	b, err := os.ReadFile(p)
	if err != nil {
		s.t.Fatalf("make secrets wrote no monitor.env: %v", err)
	}
	const line = "#CANDLEKEEP_SLACK_WEBHOOK_URL="
	i := strings.Index(string(b), line)
	if i < 0 {
		s.t.Fatalf("monitor.env has no %s line to fill in:\n%s", line, b)
	}
	end := i + strings.IndexByte(string(b[i:]), '\n')
	filled := string(b[:i]) + "CANDLEKEEP_SLACK_WEBHOOK_URL=http://sim:9100" + slackInboxPath + string(b[end:])
	if err := os.WriteFile(p, []byte(filled), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

// slackInboxPath is where the monitor's Slack messages go in the stack.
const slackInboxPath = "/sim/webhook/slack"

// slackMessages is every message the monitor posted to Slack, in order.
func (s *stack) slackMessages() ([]inboxMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.sim+"/sim/webhook", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var got struct{ Posts []sim.WebhookPost }
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return nil, fmt.Errorf("the webhook inbox: %s: %w", resp.Status, err)
	}
	var msgs []inboxMsg
	for _, p := range got.Posts {
		if p.Path != slackInboxPath {
			continue
		}
		m, err := decodeSlack([]byte(p.Body))
		if err != nil {
			return nil, fmt.Errorf("a Slack message the monitor posted at %s is not Block Kit as it sends: %w: %s", p.At, err, p.Body)
		}
		m.At = p.At
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// compose runs docker-compose on the project with the test override.
func (s *stack) compose(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	envFile := ""
	for _, e := range s.env {
		if v, ok := strings.CutPrefix(e, "COMPOSE_ENV_FILE="); ok {
			envFile = v
		}
	}
	full := append([]string{"--env-file", envFile, "-p", s.project,
		"-f", filepath.Join(composeDir, "docker-compose.yml"), "-f", filepath.Join(composeDir, "docker-compose.test.yml")}, args...)
	cmd := exec.CommandContext(ctx, "docker-compose", full...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *stack) mustCompose(args ...string) {
	s.t.Helper()
	if out, err := s.compose(args...); err != nil {
		s.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// container is the name compose 1.29 gives a service's (first) container.
func (s *stack) container(svc string) string { return s.project + "_" + svc + "_1" }

// docker runs a docker command and fails the test on error.
func (s *stack) docker(args ...string) string {
	s.t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// connect is the operator's connection from the host, to all three nodes,
// reconnecting for as long as the test runs.
func (s *stack) connect() *nats.Conn {
	t := s.t
	t.Helper()
	opts := []nats.Option{nats.Name("compose-test"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.PingInterval(2 * time.Second), nats.MaxPingsOutstanding(2), nats.Timeout(2 * time.Second)}
	if s.seed != "" {
		o, err := nats.NkeyOptionFromSeed(s.seed)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, o)
	}
	var nc *nats.Conn
	checkfor.Check(t, 60*time.Second, 250*time.Millisecond, func() error {
		var err error
		nc, err = nats.Connect(strings.Join(s.urls, ","), opts...)
		return err
	})
	t.Cleanup(nc.Close)
	return nc
}

// waitReady waits until every candlekeep service answers a micro ping.
func (s *stack) waitReady(nc *nats.Conn) {
	s.t.Helper()
	checkfor.Check(s.t, 2*time.Minute, 500*time.Millisecond, func() error {
		for _, svc := range []string{"candlekeep-fetcher", "candlekeep-writer", "candlekeep-backup", "candlekeep-monitor"} {
			if _, err := nc.Request("$SRV.PING."+svc, nil, time.Second); err != nil {
				return fmt.Errorf("%s: %w", svc, err)
			}
		}
		return nil
	})
}

// streamsCurrent reports nil when every stream has a leader and every
// replica is current: a node may then go.
func streamsCurrent(ctx context.Context, js jetstream.JetStream) error {
	lister := js.ListStreams(ctx)
	n := 0
	for info := range lister.Info() {
		n++
		c := info.Cluster
		if c == nil || c.Leader == "" {
			return fmt.Errorf("stream %s has no leader", info.Config.Name)
		}
		if len(c.Replicas) != info.Config.Replicas-1 {
			return fmt.Errorf("stream %s: %d peers besides the leader, want %d", info.Config.Name, len(c.Replicas), info.Config.Replicas-1)
		}
		for _, r := range c.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("stream %s: replica %s is not current", info.Config.Name, r.Name)
			}
		}
	}
	if err := lister.Err(); err != nil {
		return err
	}
	if n < 4 {
		return fmt.Errorf("%d streams", n)
	}
	return nil
}

// leaderOf names the node leading a stream.
func leaderOf(t testing.TB, js jetstream.JetStream, stream string) string {
	t.Helper()
	var leader string
	checkfor.Check(t, 30*time.Second, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("%s has no leader", stream)
		}
		leader = info.Cluster.Leader
		return nil
	})
	return leader
}

// stored counts the candles in the database (0 before it exists).
func stored(path string) int {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return 0
	}
	defer db.Close()
	var n int
	if db.QueryRow(`SELECT count(*) FROM candles`).Scan(&n) != nil {
		return 0
	}
	return n
}

// waitStoredMore waits until the database holds more than n candles and
// returns how long that took.
func waitStoredMore(t testing.TB, path string, n int, timeout time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	checkfor.Check(t, timeout, 50*time.Millisecond, func() error {
		if got := stored(path); got <= n {
			return fmt.Errorf("%d candles stored, waiting for more than %d", got, n)
		}
		return nil
	})
	return time.Since(began)
}

// runLedger checks the EVENTS of the whole test: every started run
// completed exactly once (no run left open, none closed twice).
func runLedger(t testing.TB, ev *events) {
	t.Helper()
	started := map[string]int{}
	for _, raw := range ev.of(candles.KindSyncStarted, "") {
		var h candles.EventHeader
		_ = json.Unmarshal(raw, &h)
		started[h.RunID]++
	}
	completed := map[string]int{}
	for _, raw := range ev.of(candles.KindSyncCompleted, "") {
		var h candles.EventHeader
		_ = json.Unmarshal(raw, &h)
		completed[h.RunID]++
	}
	for id, n := range completed {
		if n != 1 {
			t.Errorf("run %s: %d sync.completed events, want 1", id, n)
		}
		if started[id] == 0 {
			t.Errorf("run %s completed but never started", id)
		}
	}
	for id := range started {
		if completed[id] == 0 && len(ev.of(candles.KindSyncTimeout, id)) == 0 && len(ev.of(candles.KindSyncFailed, id)) == 0 {
			t.Errorf("run %s left open: started, never completed", id)
		}
	}
}

// clusterEvents reads EVENTS afresh on every look: a long-lived consumer
// of the host's connection lives on one node, and these tests stop nodes.
type clusterEvents struct{ js jetstream.JetStream }

// snapshot is every event stored in EVENTS now (nil while the cluster
// cannot tell).
func (c clusterEvents) snapshot() (*events, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	ev := &events{}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return ev, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev.all = append(ev.all, append(json.RawMessage(nil), m.Data()...))
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream >= last {
				return ev, nil
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("EVENTS: read %d events, the stream has up to seq %d", len(ev.all), last)
		}
	}
}

// mustSnapshot is snapshot, retried while the cluster recovers.
func (c clusterEvents) mustSnapshot(t testing.TB) *events {
	t.Helper()
	var ev *events
	checkfor.Check(t, time.Minute, 500*time.Millisecond, func() error {
		var err error
		ev, err = c.snapshot()
		return err
	})
	return ev
}

// wait blocks until an event of kind for runID is stored and decodes it.
func (c clusterEvents) wait(t testing.TB, kind, runID string, timeout time.Duration, v any) {
	t.Helper()
	checkfor.Check(t, timeout, time.Second, func() error {
		ev, err := c.snapshot()
		if err != nil {
			return err
		}
		got := ev.of(kind, runID)
		if len(got) == 0 {
			return fmt.Errorf("no %s event for run %q", kind, runID)
		}
		return json.Unmarshal(got[0], v)
	})
}

// crash kills a service's process from the host with SIGKILL, as a crash
// or the kernel's OOM killer would. `docker kill` would not do: docker
// marks a container it killed as stopped by hand, and its restart policy
// then leaves it down.
func (s *stack) crash(svc string) {
	s.t.Helper()
	pid, err := strconv.Atoi(s.docker("inspect", "-f", "{{.State.Pid}}", s.container(svc)))
	if err != nil || pid <= 0 {
		s.t.Fatalf("%s: no process to kill (pid %d: %v)", svc, pid, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		s.t.Fatalf("kill -9 %d (%s): %v (the container tests run as root, as .ci/run does)", pid, svc, err)
	}
}

// cli runs the real nats CLI with a user's context (deploy/compose's
// secrets/context/<user>.json) and returns its output and error.
func (s *stack) cli(user string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"--context", filepath.Join(s.secrets, "context", user+".json"), "--timeout", "3s"}, args...)
	cmd := exec.CommandContext(ctx, natsCLI(s.t), full...)
	cmd.Env = append(os.Environ(), "HOME="+s.t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// publicKey is the nkey user of a service's seed file, as the servers log it.
func (s *stack) publicKey(user string) string {
	s.t.Helper()
	seed, err := os.ReadFile(filepath.Join(s.secrets, user+".nk"))
	if err != nil {
		s.t.Fatal(err)
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		s.t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		s.t.Fatal(err)
	}
	return pub
}

// violations counts, over the three nodes' logs, the permission violations
// the servers logged for user publishing to subject.
func (s *stack) violations(user, subject string) int {
	s.t.Helper()
	needle := fmt.Sprintf("nkey:%s\" - Publish Violation - Subject %q", s.publicKey(user), subject)
	n := 0
	for _, node := range []string{"nats-1", "nats-2", "nats-3"} {
		out, _ := exec.Command("docker", "logs", s.container(node)).CombinedOutput()
		n += strings.Count(string(out), needle)
	}
	return n
}

// alertsOncePerIncident checks every alert of the whole test, in the
// events and in the Slack messages the monitor posted (the simulator's
// webhook inbox): per rule, firing and resolved alternate, and Slack got
// one FIRING message per alert.firing and one RESOLVED per alert.resolved.
// A monitor restart (or an upgrade) that re-sent a firing alert, resolved
// one it never fired, or lost a message breaks the alternation or the
// count. It fails when no alert fired at all: then it proves nothing.
func (s *stack) alertsOncePerIncident(t testing.TB, cev clusterEvents) {
	t.Helper()
	type counts struct{ firing, resolved int }
	var ev *events
	var slack []inboxMsg
	// The receivers post after the event: wait for Slack to catch up.
	checkfor.Check(t, 2*time.Minute, time.Second, func() error {
		var err error
		if ev, err = cev.snapshot(); err != nil {
			return err
		}
		if slack, err = s.slackMessages(); err != nil {
			return err
		}
		want, got := map[string]counts{}, map[string]counts{}
		for _, raw := range ev.all {
			var a candles.AlertEvent
			if json.Unmarshal(raw, &a) != nil {
				continue
			}
			c := want[a.Alert]
			switch a.Kind {
			case candles.KindAlertFiring:
				c.firing++
			case candles.KindAlertResolved:
				c.resolved++
			default:
				continue
			}
			want[a.Alert] = c
		}
		for _, m := range slack {
			c := got[m.Alert]
			switch m.Kind {
			case "FIRING":
				c.firing++
			case "RESOLVED":
				c.resolved++
			}
			got[m.Alert] = c
		}
		if !maps.Equal(want, got) {
			return fmt.Errorf("alert events (firing, resolved) per rule %v, Slack messages %v", want, got)
		}
		return nil
	})
	alternate := func(source, alert, kind string, at time.Time, state map[string]string) {
		switch {
		case kind == candles.KindAlertFiring && state[alert] == candles.KindAlertFiring:
			t.Errorf("%s: %s fired again at %s without resolving in between (a restart sent it twice)", source, alert, at.UTC())
		case kind == candles.KindAlertResolved && state[alert] != candles.KindAlertFiring:
			t.Errorf("%s: %s resolved at %s without having fired", source, alert, at.UTC())
		}
		state[alert] = kind
	}
	fired, state := 0, map[string]string{}
	for _, raw := range ev.all {
		var a candles.AlertEvent
		if json.Unmarshal(raw, &a) != nil || (a.Kind != candles.KindAlertFiring && a.Kind != candles.KindAlertResolved) {
			continue
		}
		if a.Kind == candles.KindAlertFiring {
			fired++
		}
		alternate("events", a.Alert, a.Kind, a.Time, state)
	}
	state = map[string]string{}
	for _, m := range slack {
		switch m.Kind {
		case "FIRING":
			alternate("Slack", m.Alert, candles.KindAlertFiring, m.At, state)
		case "RESOLVED":
			alternate("Slack", m.Alert, candles.KindAlertResolved, m.At, state)
		}
	}
	if fired == 0 {
		t.Errorf("no alert fired over the test: nothing shows one message per incident")
	}
	t.Logf("%d alert incidents over the test, each fired once, %d Slack messages: %v", fired, len(slack), slack)
}
