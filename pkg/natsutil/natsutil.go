// Package natsutil connects services to NATS and runs the embedded
// nats-server that `candlekeep up` and the tests use.
package natsutil

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Connect dials url with unlimited reconnects and logs every disconnect,
// reconnect and asynchronous error, so a restarted server is rejoined without
// a human. name shows up in `nats server report connections`.
func Connect(ctx context.Context, c Client, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	creds, err := c.Options()
	if err != nil {
		return nil, err
	}
	url := c.ServerList()
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats async error", "subject", subject, "err", err)
		}),
	}
	opts = append(opts, creds...)
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	// RetryOnFailedConnect returns at once; wait (bounded by ctx) for the
	// first connection so a wrong --nats-url fails loudly instead of hanging.
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w (is the server running? check --nats-url)", url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nc, nil
}

// ServerOptions configures the embedded server.
type ServerOptions struct {
	// Listen is host:port for clients; port -1 picks a free port.
	Listen string
	// StoreDir holds JetStream's file store.
	StoreDir string
	// Name identifies the server in `nats server ls`.
	Name string
	// AuthFile, if set, is a nats-server config fragment with the accounts
	// and users (natsauth's auth.conf): the server then refuses clients
	// without credentials. Empty: no authentication.
	AuthFile string
}

// RunServer starts an embedded nats-server with JetStream and waits until it
// accepts connections. Call Shutdown and WaitForShutdown to stop it.
func RunServer(o ServerOptions) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: want host:port: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: bad port: %w", o.Listen, err)
	}
	if o.Name == "" {
		o.Name = "candlekeep"
	}
	opts := &server.Options{}
	if o.AuthFile != "" {
		if err := opts.ProcessConfigFile(o.AuthFile); err != nil {
			return nil, fmt.Errorf("nats-server: accounts in %s: %w (regenerate them with candlekeep auth init --force --dir %s)", o.AuthFile, err, filepath.Dir(o.AuthFile))
		}
	}
	opts.ServerName, opts.Host, opts.Port = o.Name, host, port
	opts.JetStream, opts.StoreDir = true, o.StoreDir
	opts.NoSigs, opts.MaxPayload = true, 8<<20
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("nats-server did not become ready within 10s (is the port in use?)")
	}
	return ns, nil
}
