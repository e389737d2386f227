// Package natstest runs a real embedded nats-server with JetStream for tests.
package natstest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/natsutil"
)

// RunServer starts a JetStream-enabled server on a free loopback port with
// its store in a temp dir; it is shut down when the test ends.
func RunServer(t testing.TB) *server.Server {
	t.Helper()
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// Connect opens a client connection to ns, closed when the test ends.
func Connect(t testing.TB, ns *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
