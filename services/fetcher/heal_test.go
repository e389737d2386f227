package fetcher

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// While the server's JetStream is off, candles.api.sync refuses with a 503
// that says so instead of answering with a run that cannot start; once
// JetStream is back the fetcher takes requests again by itself.
func TestSyncRefusedWhileJetStreamIsUnavailable(t *testing.T) {
	storeDir := t.TempDir()
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: storeDir, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	runFetcher(t, testOptions(nc, serveSim(t, sim.New(sim.Options{}), nil)))
	ask := func() (code, msg string) {
		m, err := nc.Request(candles.SubjectAPISync, []byte(`{"reason":"probe"}`), 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error")
	}
	waitFor(t, 30*time.Second, "the fetcher to take requests", func() bool {
		code, _ := ask()
		return code == ""
	})
	if err := ns.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	if code, msg := ask(); code != "503" || !strings.HasPrefix(msg, "JetStream is unavailable: ") {
		t.Fatalf("sync with JetStream off: code %q, message %q; want 503 JetStream is unavailable", code, msg)
	}
	if err := ns.EnableJetStream(&server.JetStreamConfig{StoreDir: storeDir}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "sync requests accepted again", func() bool {
		code, _ := ask()
		return code == ""
	})
}
