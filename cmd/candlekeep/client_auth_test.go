package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/testlog"
)

// authServer runs an embedded nats-server with the auth.conf `candlekeep
// auth init` writes; it returns the server and the directory of the seeds.
func authServer(t *testing.T) (*server.Server, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := natsauth.Init(natsauth.Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\njetstream { store_dir: \""+t.TempDir()+"\" }\ninclude \"auth.conf\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	o.NoSigs, o.Port = true, -1
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server with auth not ready within 10s")
	}
	return ns, dir
}

// totalConns is how many client connections ns accepted so far.
func totalConns(t *testing.T, ns *server.Server) uint64 {
	t.Helper()
	v, err := ns.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	return v.TotalConnections
}

// strangerSeed writes a fresh user seed the server does not know (0600).
func strangerSeed(t *testing.T) (path, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ = kp.PublicKey()
	path = filepath.Join(t.TempDir(), "stranger.nk")
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, pub
}

// A service whose credentials the server rejects exits 78 (EX_CONFIG) at
// once, with one line naming the seed and the fix, instead of retrying.
func TestWrongCredentialsExitClearly(t *testing.T) {
	ns, _ := authServer(t)
	seed, pub := strangerSeed(t)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"writer with an unknown seed", []string{"writer", "--data-dir", t.TempDir(), "--nats-nkey", seed},
			[]string{"authorization violation", seed, pub, "--nats-nkey", "candlekeep auth init"}},
		{"fetcher without credentials", []string{"fetcher"},
			[]string{"authorization violation", "without credentials", "--nats-nkey", "candlekeep auth init"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := totalConns(t, ns)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary(t), append(tc.args, "--nats-url", ns.ClientURL(), "--log-format", "json")...)
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			began := time.Now()
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != natsutil.ExitConfig {
				t.Fatalf("%s: exit %v after %v, want exit %d; output:\n%s", tc.args[0], err, time.Since(began), natsutil.ExitConfig, &out)
			}
			var lines []string
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.Contains(l, `"level":"ERROR"`) {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("want one error line, got %d; output:\n%s", len(lines), &out)
			}
			for _, w := range tc.want {
				if !strings.Contains(strings.ToLower(lines[0]), strings.ToLower(w)) {
					t.Errorf("the error line does not name %q:\n%s", w, lines[0])
				}
			}
			// nats.go gives up after the same authorization error twice.
			if n := totalConns(t, ns) - before; n > 3 {
				t.Errorf("%d connection attempts before exiting, want at most 3 (no retry loop)", n)
			}
			t.Logf("exit 78 after %v, %d connection attempts: %s", time.Since(began).Round(time.Millisecond),
				totalConns(t, ns)-before, lines[0])
		})
	}
}

// The short commands take the same credentials flags (and environment) as
// the services: without them the server refuses with a clear error, with
// them they work.
func TestShortCommandsTakeCredentials(t *testing.T) {
	ns, dir := authServer(t)
	url := ns.ClientURL()
	userConn := func(user string) *nats.Conn {
		opt, err := nats.NkeyOptionFromSeed(natsauth.SeedPath(dir, user))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	// A monitor and a writer as their own users answer the commands.
	hr := healthReport(candles.CheckOK)
	fakeMonitor{health: func() candles.HealthReport { return hr },
		status: func() candles.StatusReport { return candles.StatusReport{V: 1, At: reportAt} }}.serve(t, userConn(natsauth.UserMonitor))
	wc := userConn(natsauth.UserWriter)
	w, err := micro.AddService(wc, micro.Config{Name: "candlekeep-writer", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	if err := wc.Flush(); err != nil {
		t.Fatal(err)
	}

	envOf := func(kv ...string) env {
		return func(k string) (string, bool) {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1], true
				}
			}
			return "", false
		}
	}
	run1 := func(getenv env, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(t.Context(), args, &out, &errb, getenv)
		return code, out.String(), errb.String()
	}
	operator, readonly := natsauth.SeedPath(dir, natsauth.UserOperator), natsauth.SeedPath(dir, natsauth.UserReadonly)
	writerSeed := natsauth.SeedPath(dir, natsauth.UserWriter)
	for _, tc := range []struct {
		args    []string
		refused int
		with    []string // credentials flags that work
	}{
		{[]string{"health", "--json"}, exitUnknown, []string{"--nats-nkey", readonly}},
		{[]string{"status", "--watch=false"}, exitUnknown, []string{"--nats-nkey", readonly}},
		{[]string{"config", "get"}, 1, []string{"--nats-nkey", operator}},
		{[]string{"ping", "writer"}, 1, nil}, // below: from the environment, as compose runs it
	} {
		name := strings.Join(tc.args, " ")
		code, _, stderr := run1(envOf(), append(tc.args, "--nats-url", url)...)
		if code != tc.refused || !strings.Contains(strings.ToLower(stderr), "authorization violation") ||
			!strings.Contains(stderr, "--nats-nkey") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%s without credentials: exit %d (want %d), stderr %q; want one line naming the authorization violation and --nats-nkey",
				name, code, tc.refused, stderr)
		}
		if tc.with == nil {
			continue
		}
		code, stdout, stderr := run1(envOf(), append(tc.args, append([]string{"--nats-url", url}, tc.with...)...)...)
		if code != 0 {
			t.Errorf("%s %s: exit %d, stderr %q", name, strings.Join(tc.with, " "), code, stderr)
		}
		if tc.args[0] == "health" {
			var got candles.HealthReport
			if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.Status != candles.CheckOK {
				t.Errorf("health --json with credentials: %v, %q", err, stdout)
			}
		}
	}
	// A stranger's seed names the seed file in the error.
	stranger, _ := strangerSeed(t)
	if code, _, stderr := run1(envOf(), "health", "--nats-url", url, "--nats-nkey", stranger); code != exitUnknown ||
		!strings.Contains(stderr, stranger) || !strings.Contains(stderr, "candlekeep auth init") {
		t.Errorf("health with an unknown seed: exit %d, stderr %q", code, stderr)
	}
	// ping as compose runs it: URL and seed from the container's environment.
	code, stdout, stderr := run1(envOf("CANDLEKEEP_NATS_URL", url, "CANDLEKEEP_NATS_NKEY", writerSeed), "ping", "writer")
	if code != 0 || !strings.Contains(stdout, "candlekeep-writer") {
		t.Errorf("ping writer with CANDLEKEEP_NATS_URL and CANDLEKEEP_NATS_NKEY: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// The flags may come before the service too.
	if code, _, stderr := run1(envOf(), "ping", "--nats-url", url, "--nats-nkey", writerSeed, "writer"); code != 0 {
		t.Errorf("ping --nats-nkey SEED writer: exit %d, stderr %q", code, stderr)
	}
	// Every command's --help lists the credentials flags.
	for _, c := range [][]string{{"health"}, {"status"}, {"restore"}, {"sync"}, {"backup", "now"}, {"backup", "ls"},
		{"config", "get"}, {"coverage"}, {"drill"}, {"sla"}, {"ping"}} {
		_, _, help := run1(envOf(), append(c, "--help")...)
		for _, f := range []string{"--nats-url", "--nats-nkey", "--nats-creds", "--nats-tls-ca"} {
			if !strings.Contains(help, "  "+f+" ") {
				t.Errorf("candlekeep %s --help does not list %s", strings.Join(c, " "), f)
			}
		}
	}
}

// A service user publishing to a subject its permissions deny logs an
// error naming the subject (the one handler of natsutil.Connect).
func TestPermissionViolationLogged(t *testing.T) {
	ns, dir := authServer(t)
	var logs testlog.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	c := natsutil.Client{URLs: []string{ns.ClientURL()}, NKeyFile: natsauth.SeedPath(dir, natsauth.UserFetcher)}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nc, err := natsutil.Connect(ctx, c, "candlekeep-fetcher", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const denied = "$JS.API.STREAM.DELETE.CANDLES"
	if err := nc.Publish(denied, nil); err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, l := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["level"] == "ERROR" && rec["subject"] == denied {
				return nil
			}
		}
		return fmt.Errorf("no error log with subject %s; logs:\n%s", denied, logs.String())
	})
}

// The monitor's candlekeep_nats_connected goes 1 → 0 when its server stops
// and back to 1 when it restarts (same port, same store), the reconnects
// counter increases, and /healthz carries the connection's state.
func TestMonitorNATSConnectionMetrics(t *testing.T) {
	storeDir, addr := t.TempDir(), freeAddr(t)
	startNATS := func() *server.Server {
		ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: addr, StoreDir: storeDir})
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	ns := startNATS()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	httpAddr := freeAddr(t)
	mon := start(t, nil, "monitor", "--nats-url", "nats://"+addr, "--http-listen", httpAddr, "--eval-interval", "1s", "--log-format", "json")
	metric := func(name string) (float64, error) {
		resp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				return strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
		return 0, fmt.Errorf("%s not on /metrics", name)
	}
	want := func(name string, ok func(float64) bool, what string) {
		t.Helper()
		checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
			if mon.exited() {
				t.Fatalf("the monitor exited: %v\n%s", mon.err, mon.out)
			}
			v, err := metric(name)
			if err != nil {
				return err
			}
			if !ok(v) {
				return fmt.Errorf("%s = %v, want %s", name, v, what)
			}
			return nil
		})
	}
	healthz := func() (candles.HealthReport, error) {
		var hr candles.HealthReport
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return hr, err
		}
		defer resp.Body.Close()
		err = json.NewDecoder(resp.Body).Decode(&hr)
		if err == nil && hr.NATS == nil {
			err = errors.New("/healthz has no nats state")
		}
		return hr, err
	}
	want("candlekeep_nats_connected", func(v float64) bool { return v == 1 }, "1")
	reconnects, err := metric("candlekeep_nats_reconnects_total")
	if err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 10*time.Second, 50*time.Millisecond, func() error {
		hr, err := healthz()
		if err != nil {
			return err
		}
		if !hr.NATS.Connected || hr.NATS.Server != "nats://"+addr {
			return fmt.Errorf("/healthz nats %+v, want connected to nats://%s", *hr.NATS, addr)
		}
		return nil
	})

	ns.Shutdown()
	ns.WaitForShutdown()
	want("candlekeep_nats_connected", func(v float64) bool { return v == 0 }, "0 while the server is down")
	checkfor.Check(t, 10*time.Second, 50*time.Millisecond, func() error {
		hr, err := healthz()
		if err != nil {
			return err
		}
		if hr.NATS.Connected || hr.NATS.DisconnectedSince.IsZero() {
			return fmt.Errorf("/healthz nats %+v, want disconnected with a time", *hr.NATS)
		}
		return nil
	})
	if !strings.Contains(mon.out.String(), "nats disconnected") {
		t.Errorf("the monitor did not log the disconnect:\n%s", mon.out)
	}

	ns = startNATS()
	want("candlekeep_nats_connected", func(v float64) bool { return v == 1 }, "1 after the restart")
	want("candlekeep_nats_reconnects_total", func(v float64) bool { return v > reconnects }, fmt.Sprintf("more than %v", reconnects))
	checkfor.Check(t, 10*time.Second, 50*time.Millisecond, func() error {
		for _, l := range strings.Split(mon.out.String(), "\n") {
			if strings.Contains(l, `"msg":"nats reconnected"`) && strings.Contains(l, `"url":"nats://`+addr+`"`) {
				return nil
			}
		}
		return fmt.Errorf("no reconnect log naming the server; output:\n%s", mon.out)
	})
}

// A service whose credentials the server stops accepting (the server came
// back with new keys) stops with the AuthError at the next reconnect,
// instead of retrying forever: runWriter and the others then exit 78.
func TestRejectedOnReconnectStopsTheService(t *testing.T) {
	addr, store := freeAddr(t), t.TempDir()
	serve := func() (*server.Server, string) {
		dir := t.TempDir()
		if _, err := natsauth.Init(natsauth.Options{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, "server.conf")
		if err := os.WriteFile(conf, []byte("listen: "+addr+"\njetstream { store_dir: \""+store+"\" }\ninclude \"auth.conf\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		o.NoSigs = true
		ns, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server with auth not ready within 10s")
		}
		// The seed of this server's writer, kept apart from the next one's.
		seed := filepath.Join(t.TempDir(), "writer.nk")
		data, err := os.ReadFile(natsauth.SeedPath(dir, natsauth.UserWriter))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(seed, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return ns, seed
	}
	ns, seed := serve()
	var logs testlog.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	c := natsutil.Client{URLs: []string{"nats://" + addr}, NKeyFile: seed}
	running := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- withServiceConn(t.Context(), c, "candlekeep-writer", log, func(ctx context.Context, _ *nats.Conn) error {
			close(running)
			<-ctx.Done()
			return nil
		})
	}()
	select {
	case <-running:
	case err := <-errc:
		t.Fatalf("the service did not start: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("the service did not connect within 20s:\n%s", logs.String())
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	serve() // same address and store, new keys: the old writer seed is unknown
	select {
	case err := <-errc:
		if !natsutil.IsAuthError(err) || !strings.Contains(err.Error(), seed) || !strings.Contains(err.Error(), "candlekeep auth init") {
			t.Fatalf("the service stopped with %v, want the authorization error naming %s and the fix", err, seed)
		}
		t.Logf("stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the service still runs 30s after its credentials were rejected:\n%s", logs.String())
	}
}

// A service started before its NATS server waits for it (logging the
// retries, not every one), then connects and says to which server.
func TestServiceStartedBeforeNATSWaits(t *testing.T) {
	addr := freeAddr(t)
	w := start(t, nil, "writer", "--data-dir", t.TempDir(), "--nats-url", "nats://"+addr, "--log-format", "json")
	checkfor.Check(t, 20*time.Second, 50*time.Millisecond, func() error {
		if w.exited() {
			t.Fatalf("the writer exited without a server: %v\n%s", w.err, w.out)
		}
		if !strings.Contains(w.out.String(), "cannot reach nats; retrying") {
			return errors.New("no retry log yet")
		}
		return nil
	})
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: addr, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if w.exited() {
			t.Fatalf("the writer exited: %v\n%s", w.err, w.out)
		}
		for _, l := range strings.Split(w.out.String(), "\n") {
			if strings.Contains(l, `"msg":"nats connected"`) && strings.Contains(l, `"url":"nats://`+addr+`"`) {
				return nil
			}
		}
		return errors.New("no connected log naming the server")
	})
	if n := strings.Count(w.out.String(), "cannot reach nats; retrying"); n > 2 {
		t.Errorf("%d retry logs while waiting: want the first and then one per 30s\n%s", n, w.out)
	}
	natsUntil(t, ns.ClientURL(), "candlekeep-writer", "micro", "ls")
}
