package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// Issue 10: client and cluster-route TLS, exercised. `candlekeep auth init
// --tls` writes the credentials and the PKI; three nats-servers read node
// configs written as docs/security.md tells an operator to (client TLS
// with verified client certificates, routes over TLS with the route
// password) and form a JetStream cluster; the real fetcher and writer
// processes, each with its own nkey and the TLS flags, sync two symbols
// into R3 streams, and the database equals the simulator's truth. A client
// without the CA, a client without a certificate, a plain-text client and a
// plain-text route are all refused.
func TestTLSClusterPipeline(t *testing.T) {
	root := t.TempDir()
	secrets := filepath.Join(root, "secrets")
	clientPorts, routePorts := make([]string, 3), make([]string, 3)
	var urls []string
	for i := range 3 {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		urls = append(urls, "nats://127.0.0.1:"+clientPorts[i])
	}
	servers := strings.Join(urls, ",")

	out, err := exec.Command(binary(t), "auth", "init", "--dir", secrets, "--tls", "--servers", servers).CombinedOutput()
	if err != nil {
		t.Fatalf("candlekeep auth init --tls: %v\n%s", err, out)
	}
	for _, f := range []string{natsauth.CAFile, natsauth.ServerKey, natsauth.ClientKey} {
		st, err := os.Stat(filepath.Join(secrets, natsauth.TLSDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v; want 0600", f, st.Mode().Perm())
		}
	}
	routes, err := os.ReadFile(filepath.Join(secrets, natsauth.RoutesConf))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`password: "([^"]+)"`).FindSubmatch(routes)
	if m == nil {
		t.Fatalf("no route password in routes.conf:\n%s", routes)
	}
	routePassword := string(m[1])

	nodes := make([]*server.Server, 3)
	for i := range nodes {
		nodes[i] = startTLSNode(t, root, i, clientPorts, routePorts, routePassword)
	}
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		leaders := 0
		for i, ns := range nodes {
			if ns.NumRoutes() == 0 {
				return fmt.Errorf("nats-%d has no route", i+1)
			}
			if !ns.JetStreamIsCurrent() {
				return fmt.Errorf("nats-%d: JetStream meta not current", i+1)
			}
			if ns.JetStreamIsLeader() {
				leaders++
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d JetStream meta leaders", leaders)
		}
		return nil
	})

	// Routes run over TLS: every node requires it of its routes, sees the
	// other two, and a route that speaks plain text is dropped.
	for i, ns := range nodes {
		v, err := ns.Varz(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !v.Cluster.TLSRequired || !v.Cluster.TLSVerify || !v.TLSRequired || !v.TLSVerify {
			t.Errorf("nats-%d: cluster TLS required/verify %v/%v, client TLS required/verify %v/%v; want all true",
				i+1, v.Cluster.TLSRequired, v.Cluster.TLSVerify, v.TLSRequired, v.TLSVerify)
		}
		rz, err := ns.Routez(nil)
		if err != nil {
			t.Fatal(err)
		}
		peers := map[string]bool{}
		for _, r := range rz.Routes {
			peers[r.RemoteName] = true
		}
		if len(peers) != 2 {
			t.Errorf("nats-%d routes to %v; want the two other nodes", i+1, peers)
		}
	}
	if got := plainTextRefused(t, "127.0.0.1:"+routePorts[0],
		fmt.Sprintf(`CONNECT {"user":%q,"pass":%q,"verbose":false,"pedantic":false}`, natsauth.RouteUser, routePassword)); strings.Contains(got, "INFO") {
		t.Errorf("a route port spoke plain text before the TLS handshake: %q", got)
	}

	// Clients: a plain-text client, one without the CA and one without a
	// client certificate are all refused.
	if info := plainTextRefused(t, "127.0.0.1:"+clientPorts[0], `CONNECT {"verbose":false,"pedantic":false}`); !strings.HasPrefix(info, "INFO ") ||
		!strings.Contains(info, `"tls_required":true`) {
		t.Errorf("client port's INFO does not require TLS: %s", info)
	}
	tlsDir := filepath.Join(secrets, natsauth.TLSDir)
	ca, cert, key := filepath.Join(tlsDir, natsauth.CAFile), filepath.Join(tlsDir, natsauth.ClientCert), filepath.Join(tlsDir, natsauth.ClientKey)
	operator := natsutil.Client{URLs: urls, NKeyFile: natsauth.SeedPath(secrets, natsauth.UserOperator), TLSCA: ca, TLSCert: cert, TLSKey: key}
	noCA := operator
	noCA.TLSCA = ""
	if _, err := connectClient(noCA); err == nil || !strings.Contains(err.Error(), "x509") {
		t.Errorf("a client without the CA: %v; want an x509 error", err)
	}
	noCert := operator
	noCert.TLSCert, noCert.TLSKey = "", ""
	if nc, err := connectClient(noCert); err == nil {
		nc.Close()
		t.Error("a client without a client certificate connected; the servers verify clients")
	}

	// The pipeline: fetcher and writer processes, each with its own nkey and
	// the TLS flags, R3 streams.
	s, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	common := []string{"--nats-url", servers, "--nats-tls-ca", ca, "--nats-tls-cert", cert, "--nats-tls-key", key,
		"--binance-url", simURL, "--stream-replicas", "3", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h",
		"--sync-schedule", "off", "--catch-up=false", "--retry-base", "100ms", "--log-format", "json"}
	nc, err := connectClient(operator)
	if err != nil {
		t.Fatalf("the operator over TLS: %v", err)
	}
	t.Cleanup(nc.Close)
	// One after the other: the first provisions the streams and buckets.
	fetcherProc := start(t, nil, append([]string{"fetcher", "--nats-nkey", natsauth.SeedPath(secrets, natsauth.UserFetcher)}, common...)...)
	answers(t, nc, fetcherProc, candles.SubjectAPISync)
	writerProc := start(t, nil, append([]string{"writer", "--nats-nkey", natsauth.SeedPath(secrets, natsauth.UserWriter), "--data-dir", dataDir}, common...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fetcher output:\n%s\nwriter output:\n%s", fetcherProc.out, writerProc.out)
		}
	})
	answers(t, nc, writerProc, candles.SubjectAPICoverage)
	ev := watchEvents(t, nc)
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 8, 0, 0, 0, 0, time.UTC)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q,"reason":"tls"}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 40*time.Second, &done)
	if done.PairsOK != 2 || done.Candles != 2*7*24 {
		t.Fatalf("sync.completed = %+v; want 2 pairs and %d candles", done, 2*7*24)
	}
	assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)), truth(s, []string{"BTCUSDT", "ETHUSDT"}, "1h", from, until))

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	si, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if si.Config.Replicas != 3 || si.Cluster == nil || len(si.Cluster.Replicas) != 2 {
		t.Errorf("CANDLES: %d replicas, cluster %+v; want R3 across the three nodes", si.Config.Replicas, si.Cluster)
	}

	// The operator's nats CLI context auth init wrote carries the TLS files.
	ctl := exec.Command(natsCLI(t), "--context", natsauth.ContextPath(secrets, natsauth.UserOperator), "stream", "info", candles.StreamCandles, "--json")
	ctl.Env = append(os.Environ(), "HOME="+t.TempDir())
	if out, err := ctl.CombinedOutput(); err != nil || !strings.Contains(string(out), `"num_replicas": 3`) {
		t.Errorf("nats --context operator.json stream info CANDLES: %v\n%s", err, out)
	}
}

// startTLSNode writes nats-<i+1>.conf as an operator would (the fragments of
// candlekeep auth init included: accounts, client and route TLS, route
// authorization) and runs a nats-server from it.
func startTLSNode(t *testing.T, root string, i int, clientPorts, routePorts []string, routePassword string) *server.Server {
	t.Helper()
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("    nats-route://%s:%s@127.0.0.1:%s", natsauth.RouteUser, routePassword, p))
	}
	conf := fmt.Sprintf(`server_name: nats-%[1]d
listen: 127.0.0.1:%[2]s
jetstream {
  store_dir: %[3]q
}
include "secrets/auth.conf"
tls {
  include "secrets/tls.conf"
}
cluster {
  name: candlekeep
  listen: 127.0.0.1:%[4]s
  include "secrets/routes.conf"
  tls {
    include "secrets/tls.conf"
  }
  routes = [
%[5]s
  ]
}
`, i+1, clientPorts[i], t.TempDir(), routePorts[i], strings.Join(routes, "\n"))
	path := filepath.Join(root, fmt.Sprintf("nats-%d.conf", i+1))
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects %s: %v\n%s", path, err, conf)
	}
	o.NoSigs = true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("nats-%d: %v", i+1, err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-%d not ready", i+1)
	}
	return ns
}

// answers waits until subj answers a probe request, failing early if p
// exits.
func answers(t *testing.T, nc *nats.Conn, p *proc, subj string) {
	t.Helper()
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("%s exited: %v\n%s", p.cmd.Args[1], p.err, p.out)
		}
		_, err := nc.Request(subj, []byte(`{"probe":1}`), time.Second)
		return err
	})
}

// connectClient connects as c, with its credentials and TLS files.
func connectClient(c natsutil.Client) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	return nats.Connect(c.ServerList(), append(opts, nats.Timeout(5*time.Second), nats.NoReconnect())...)
}

// plainTextRefused speaks the NATS protocol in plain text to addr (a
// client or a route port): it sends connect and a PING and fails the test
// unless the server closes the connection without answering them. It
// returns what the server sent (a client port's INFO; a route port starts
// with the TLS handshake, so nothing readable).
func plainTextRefused(t *testing.T, addr, connect string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(connect + "\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s kept a plain-text connection open (read %q)", addr, got.String())
		}
		if err != nil {
			break
		}
	}
	if strings.Contains(got.String(), "PONG") || strings.Contains(got.String(), "+OK") {
		t.Fatalf("%s answered a plain-text connection: %q", addr, got.String())
	}
	return got.String()
}
