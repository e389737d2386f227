package natsauth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A real server with the generated auth.conf lets a fetcher publish a batch
// and refuses it deleting a stream or publishing an alert.
func TestFetcherPermissions(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(Options{Dir: dir}); err != nil {
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
		t.Fatal("server not ready")
	}
	errs := make(chan error, 10)
	opt, err := nats.NkeyOptionFromSeed(SeedPath(dir, UserFetcher))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL(), opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subj := range []string{"$JS.API.STREAM.DELETE.CANDLES", "candles.events.alert.firing", "$JS.API.CONSUMER.MSG.NEXT.CANDLES.writer"} {
		if err := nc.Publish(subj, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), subj) {
				t.Errorf("%s: %v", subj, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("publish to %s as fetcher was not refused", subj)
		}
	}
	if err := nc.Publish("candles.batch.1h.BTCUSDT", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Errorf("a batch publish as fetcher was refused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	bad, err := nats.Connect(ns.ClientURL())
	if err == nil {
		bad.Close()
		t.Fatal("a client without credentials connected")
	}
}
