package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// setupLineRE is the nats CLI setup `up` logs at start.
var setupLineRE = regexp.MustCompile(`nats CLI setup: export NATS_CONTEXT=([^\s"]+)`)

// natsWith runs the real nats CLI with env (its setup) and no user contexts.
func natsWith(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natsCLI(t), args...)
	cmd.Env = append(os.Environ(), append([]string{"HOME=" + t.TempDir(), "NATS_URL=", "NATS_CONTEXT=", "NATS_NKEY="}, env...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// connectAs connects to url as the user whose nkey seed is seedFile.
func connectAs(t testing.TB, url, seedFile string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	o, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(opts, o)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", seedFile, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// setupContext waits for up's start line and returns the operator context
// it names.
func setupContext(t *testing.T, p *proc) string {
	t.Helper()
	waitLog(t, p, "nats CLI setup: export NATS_CONTEXT=")
	m := setupLineRE.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("no setup line in:\n%s", p.out)
	}
	return m[1]
}

// `candlekeep up` without --nats-insecure generates credentials into
// <data-dir>/nats-auth at its first start (files 0600, directories 0700)
// and its server refuses clients without them; the nats CLI works after the
// one line of setup up logs; every service runs as its own user: a sync
// completes with no permission violation, the fetcher's seed cannot delete
// CANDLES and a batch it forges is still rejected by the writer. A second
// start reuses the same keys and points the contexts at its new address.
func TestUpRequiresCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	natsCLI(t)
	_, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	authDir := filepath.Join(dataDir, "nats-auth")
	httpAddr := freeAddr(t)
	upArgs := func(listen string) []string {
		return []string{"up", "--data-dir", dataDir, "--nats-listen", listen, "--http-listen", httpAddr, "--binance-url", simURL,
			"--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "50", "--catch-up=false", "--sync-schedule", "off",
			"--log-format", "json"}
	}
	listen := freeAddr(t)
	url := "nats://" + listen
	p := start(t, nil, upArgs(listen)...)
	ctxFile := setupContext(t, p)
	if want := filepath.Join(authDir, "context", "operator.json"); ctxFile != want {
		t.Errorf("setup names %s, want %s", ctxFile, want)
	}

	// Without credentials: refused.
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected to up's server")
	} else if !strings.Contains(err.Error(), "Authorization Violation") {
		t.Fatalf("connect without credentials: %v, want an Authorization Violation", err)
	}
	if out, err := natsWith(t, nil, "--server", url, "stream", "ls"); err == nil || !strings.Contains(out, "Authorization Violation") {
		t.Fatalf("nats stream ls without credentials: %v\n%s", err, out)
	}

	// With the setup line: the real nats CLI lists the streams.
	setup := []string{"NATS_CONTEXT=" + ctxFile}
	checkfor.Check(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, err := natsWith(t, setup, "stream", "ls", "--names")
		if err != nil || !strings.Contains(out, "CANDLES") {
			return fmt.Errorf("nats stream ls with the operator context: %v\n%s", err, out)
		}
		return nil
	})

	// The files are private.
	err := filepath.WalkDir(authDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := natsauth.PublicKeys(authDir)
	if err != nil {
		t.Fatal(err)
	}

	// A sync under least privilege: every service as its own user.
	op := connectAs(t, url, natsauth.SeedPath(authDir, natsauth.UserOperator))
	ev := watchEvents(t, op)
	acc := requestSync(t, op, `{}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	if done.PairsOK != 2 || done.PairsFailed != 0 || done.Candles != 100 {
		t.Errorf("sync.completed = %+v, want 2 pairs ok with 100 candles", done)
	}
	if n := rowCount(t, filepath.Join(dataDir, databaseFile)); n != 100 {
		t.Errorf("%d candles stored, want 100", n)
	}
	// The backup service (its own user) backs the run up and drills it;
	// the monitor (its own user) evaluates health.
	var bc json.RawMessage
	ev.wait(t, candles.KindBackupCompleted, "", time.Minute, &bc)
	if out, err := natsWith(t, setup, "req", "candles.api.drill", "{}", "--timeout", "30s"); err != nil || !strings.Contains(out, `"ok":true`) {
		t.Errorf("drill as operator: %v\n%s", err, out)
	}
	checkfor.Check(t, 30*time.Second, 100*time.Millisecond, func() error {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var hr candles.HealthReport
		if err := json.NewDecoder(resp.Body).Decode(&hr); err != nil || len(hr.Checks) == 0 {
			return fmt.Errorf("healthz: %d %v %+v", resp.StatusCode, err, hr)
		}
		return nil
	})

	// The fetcher's seed cannot delete CANDLES.
	fetcherSeed := natsauth.SeedPath(authDir, natsauth.UserFetcher)
	out, err := natsWith(t, nil, "--server", url, "--nkey", fetcherSeed, "stream", "rm", "-f", "CANDLES")
	if err == nil || !strings.Contains(out, `Permissions Violation for Publish to "$JS.API.STREAM.DELETE.CANDLES"`) {
		t.Errorf("nats stream rm CANDLES as fetcher: %v, want a permissions violation:\n%s", err, out)
	}
	if out, err := natsWith(t, setup, "stream", "info", "CANDLES", "--json"); err != nil || !strings.Contains(out, `"messages"`) {
		t.Errorf("CANDLES after the fetcher's stream rm: %v\n%s", err, out)
	}

	// A batch forged with the fetcher's seed is still rejected by the writer.
	fnc := connectAs(t, url, fetcherSeed)
	fjs, err := jetstream.New(fnc)
	if err != nil {
		t.Fatal(err)
	}
	forged := candles.Batch{V: candles.Version, Symbol: "FAKEUSDT", Interval: "4h", Candles: []candles.Candle{{
		OpenTime: 0, CloseTime: 4*3600*1000 - 1, Open: 1, High: 1, Low: 1, Close: 1, Volume: 1, QuoteVolume: 1, Trades: 1}}}
	data, err := forged.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fjs.Publish(context.Background(), candles.BatchSubject("4h", "FAKEUSDT"), data); err != nil {
		t.Fatalf("publish a batch as fetcher: %v", err)
	}
	checkfor.Check(t, 20*time.Second, 20*time.Millisecond, func() error {
		if len(ev.of(candles.KindBatchRejected, "")) == 0 {
			return fmt.Errorf("no batch.rejected for the forged FAKEUSDT batch")
		}
		return nil
	})
	var rej candles.BatchRejected
	if err := json.Unmarshal(ev.of(candles.KindBatchRejected, "")[0], &rej); err != nil {
		t.Fatal(err)
	}
	if rej.Symbol != "FAKEUSDT" {
		t.Errorf("batch.rejected %+v, want the FAKEUSDT forgery", rej)
	}
	if n := rowCount(t, filepath.Join(dataDir, databaseFile)); n != 100 {
		t.Errorf("%d candles stored after the forgery, want 100", n)
	}
	if strings.Contains(p.out.String(), "Permissions Violation") {
		t.Errorf("a service of up was denied something:\n%s", p.out)
	}

	// A second start on another port reuses the keys; the context follows.
	op.Close()
	fnc.Close()
	stopProc(t, p)
	listen2 := freeAddr(t)
	p2 := start(t, nil, upArgs(listen2)...)
	if got := setupContext(t, p2); got != ctxFile {
		t.Errorf("second start names %s, want %s", got, ctxFile)
	}
	if strings.Contains(p2.out.String(), "generated NATS credentials") {
		t.Error("the second start generated new credentials")
	}
	keys2, err := natsauth.PublicKeys(authDir)
	if err != nil {
		t.Fatal(err)
	}
	for u, k := range keys {
		if keys2[u] != k {
			t.Errorf("%s: public key %s after the restart, was %s", u, keys2[u], k)
		}
	}
	out, err = natsWith(t, setup, "server", "check", "connection")
	if err != nil || !strings.Contains(out, "connected to nats://"+listen2) {
		t.Errorf("nats CLI with the context after the restart on %s: %v\n%s", listen2, err, out)
	}
	if out, err := natsWith(t, setup, "stream", "ls", "--names"); err != nil || !strings.Contains(out, "CANDLES") {
		t.Errorf("nats stream ls after the restart: %v\n%s", err, out)
	}
	if strings.Contains(p2.out.String(), "Permissions Violation") {
		t.Errorf("a service of the restarted up was denied something:\n%s", p2.out)
	}
}

// With credentials, up may listen on every interface: it warns that the
// traffic is not encrypted, and its context dials 127.0.0.1.
func TestUpWithCredentialsMayListenBeyondLoopback(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	natsCLI(t)
	_, simURL := startSim(t, sim.Options{})
	addr := freeAddr(t)
	port := addr[strings.LastIndex(addr, ":")+1:]
	p := start(t, nil, "up", "--data-dir", t.TempDir(), "--nats-listen", "0.0.0.0:"+port, "--http-listen", freeAddr(t),
		"--binance-url", simURL, "--symbols", "BTCUSDT", "--intervals", "4h", "--catch-up=false", "--sync-schedule", "off",
		"--log-format", "json")
	ctxFile := setupContext(t, p)
	waitLog(t, p, "listens beyond loopback without TLS")
	waitLog(t, p, "candlekeep auth init --tls")
	checkfor.Check(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, err := natsWith(t, []string{"NATS_CONTEXT=" + ctxFile}, "micro", "ls")
		if err != nil || !strings.Contains(out, "candlekeep-writer") || !strings.Contains(out, "candlekeep-backup") {
			return fmt.Errorf("services not all up: %v\n%s", err, out)
		}
		return nil
	})
	out, err := natsWith(t, []string{"NATS_CONTEXT=" + ctxFile}, "server", "check", "connection")
	if err != nil || !strings.Contains(out, "connected to nats://127.0.0.1:"+port) {
		t.Errorf("nats CLI with the context of an up on 0.0.0.0:%s: %v\n%s", port, err, out)
	}
	if nc, err := nats.Connect("nats://127.0.0.1:" + port); err == nil {
		nc.Close()
		t.Error("a client without credentials connected")
	}
}

// --nats-insecure with a listen address others can reach is refused at
// start with exit 2 and a message saying how to get credentials; nothing
// listens and nothing is written.
func TestUpRefusesInsecureNonLoopback(t *testing.T) {
	addr := freeAddr(t)
	port := addr[strings.LastIndex(addr, ":")+1:]
	for _, host := range []string{"0.0.0.0", "[::]", "", "192.168.1.10", "candlekeep.example.com"} {
		t.Run("host="+host, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			code, out := runToExit(t, nil, "up", "--nats-insecure", "--nats-listen", host+":"+port, "--data-dir", dataDir,
				"--binance-url", "http://127.0.0.1:9", "--log-format", "json")
			if code != 2 {
				t.Fatalf("exit %d, want 2:\n%s", code, out)
			}
			for _, want := range []string{"--nats-insecure", "loopback", "drop --nats-insecure"} {
				if !strings.Contains(out, want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
			}
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
				c.Close()
				t.Errorf("something listens on %s", port)
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Errorf("%s was created", dataDir)
			}
		})
	}
}

// loopback accepts only addresses that other machines cannot reach.
func TestLoopbackListen(t *testing.T) {
	for listen, want := range map[string]bool{
		"127.0.0.1:4222": true, "localhost:4222": true, "[::1]:4222": true, "127.0.0.2:4222": true,
		"0.0.0.0:4222": false, "[::]:4222": false, ":4222": false, "10.0.0.5:4222": false, "nats.internal:4222": false,
		"bad": false,
	} {
		if got := loopback(listen); got != want {
			t.Errorf("loopback(%q) = %v, want %v", listen, got, want)
		}
	}
}
