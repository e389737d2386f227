// Package natsutil connects services to NATS and runs the embedded
// nats-server that `candlekeep up` and the tests use.
package natsutil

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Reconnect backoff of the services: the first retry after reconnectBase,
// doubling per round over the server list up to reconnectMax, plus up to
// reconnectJitter so a fleet does not reconnect in lockstep.
const (
	reconnectBase   = 250 * time.Millisecond
	reconnectMax    = 5 * time.Second
	reconnectJitter = time.Second
	// retryLogEvery bounds the "still cannot reach NATS" logs of a
	// service waiting for its server.
	retryLogEvery = 30 * time.Second
)

// reconnectDelay is the wait after the attempts-th failed round over the
// server list.
func reconnectDelay(attempts int) time.Duration {
	d := reconnectBase
	for i := 1; i < attempts && d < reconnectMax; i++ {
		d *= 2
	}
	d = min(d, reconnectMax)
	return d + rand.N(reconnectJitter)
}

// Connect dials the servers of c with unlimited reconnects (exponential
// backoff with jitter) and logs every disconnect, reconnect and
// asynchronous error, so a restarted server is rejoined without a human.
// A service started before its server waits (bounded by ctx), logging the
// attempts at most every 30s. When the server rejects the credentials the
// connection closes (nats.go gives up after the same authorization error
// twice) and Connect returns an *AuthError; on a live connection the same
// ends in Closed. name shows up in `nats server report connections`.
func Connect(ctx context.Context, c Client, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	creds, err := c.Options()
	if err != nil {
		return nil, err
	}
	url := c.ServerList()
	st := &connState{}
	var retryMu sync.Mutex
	var lastRetryLog time.Time
	failures := 0
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(nc *nats.Conn) {
			st.connected(nc)
			log.Info("nats connected", "url", redactedURL(nc))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			st.disconnected()
			if err != nil {
				log.Warn("nats disconnected; reconnecting", "url", candles.RedactURL(st.lastURL()), "err", err)
			} else {
				log.Info("nats disconnected", "url", candles.RedactURL(st.lastURL()))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			st.connected(nc)
			retryMu.Lock()
			failures = 0
			retryMu.Unlock()
			log.Info("nats reconnected", "url", redactedURL(nc), "reconnects", nc.Stats().Reconnects)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if IsAuthError(err) {
				return // the closed connection reports it
			}
			retryMu.Lock()
			failures++
			n, now := failures, time.Now()
			logIt := n == 1 || now.Sub(lastRetryLog) >= retryLogEvery
			if logIt {
				lastRetryLog = now
			}
			retryMu.Unlock()
			if logIt {
				log.Warn("cannot reach nats; retrying with backoff (is the server running? check --nats-url)",
					"servers", c.Redacted(), "attempts", n, "err", err)
			}
		}),
		nats.ErrorHandler(errorHandler(log)),
	}
	opts = append(opts, creds...)
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, c.ConnectError(err, "")
	}
	states.Store(nc, st)
	if nc.IsConnected() {
		st.connected(nc) // ConnectHandler logs it
	}
	// RetryOnFailedConnect returns at once; wait (bounded by ctx) for the
	// first connection, or for nats.go giving up on rejected credentials.
	for !nc.IsConnected() {
		if nc.IsClosed() {
			err := nc.LastError()
			if err == nil {
				err = nats.ErrConnectionClosed
			}
			return nil, c.ConnectError(err, "")
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w (is the server running? check --nats-url)", c.Redacted(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nc, nil
}

// Closed is why nc, a connection from Connect, closed: an *AuthError when
// the server rejected its credentials (on reconnect), nil after nc.Close.
func (c Client) Closed(nc *nats.Conn) error {
	if err := nc.LastError(); IsAuthError(err) {
		return c.ConnectError(err, "")
	}
	return nil
}

// Dial connects a short-lived command (health, status, sync...): one
// attempt at each server within timeout, no retries. Its errors say what
// to do: an *AuthError names the credentials, others the servers and hint.
func Dial(c Client, name string, timeout time.Duration, hint string, extra ...nats.Option) (*nats.Conn, error) {
	creds, err := c.Options()
	if err != nil {
		return nil, err
	}
	opts := append([]nats.Option{nats.Name(name), nats.Timeout(timeout), nats.ErrorHandler(commandErrorHandler(c, name))}, creds...)
	nc, err := nats.Connect(c.ServerList(), append(opts, extra...)...)
	if err != nil {
		return nil, c.ConnectError(err, hint)
	}
	return nc, nil
}

// commandErrorHandler reports a short command's asynchronous errors on
// stderr, a permission violation as one line naming the subject and the
// credentials.
func commandErrorHandler(c Client, name string) nats.ErrHandler {
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if op, subject, ok := DeniedSubject(err); ok && subject != "" {
			who := "a connection without credentials"
			if ae := c.authError(err); ae.Flag != "" {
				who = ae.Who
			}
			fmt.Fprintf(os.Stderr, "%s: nats permission denied: %s may not %s %q; give the seed of a user allowed to (--nats-nkey; the operator's for changes)\n",
				name, who, map[string]string{"publish": "publish to", "subscription": "subscribe to"}[op], subject)
			return
		}
		if sub != nil {
			fmt.Fprintf(os.Stderr, "%s: nats: %v (subscription %s)\n", name, err, sub.Subject)
			return
		}
		fmt.Fprintf(os.Stderr, "%s: nats: %v\n", name, err)
	}
}

// redactedURL is the URL nc is connected to, without credentials.
func redactedURL(nc *nats.Conn) string {
	if u := nc.ConnectedUrl(); u != "" {
		return candles.RedactURL(u)
	}
	return ""
}

// State is a connection's state as health reports and metrics show it.
type State struct {
	Connected bool
	// URL is the server connected to, redacted of user info.
	URL string
	// DisconnectedSince is when the connection was lost (zero when connected
	// or never tracked).
	DisconnectedSince time.Time
	// Reconnects counts the reconnections since the connection was made.
	Reconnects uint64
}

// StateOf returns nc's state. Connections made by Connect know when they
// were lost; others report only connected or not.
func StateOf(nc *nats.Conn) State {
	s := State{Connected: nc.IsConnected(), URL: redactedURL(nc), Reconnects: nc.Stats().Reconnects}
	if v, ok := states.Load(nc); ok && !s.Connected {
		s.DisconnectedSince = v.(*connState).since()
	}
	if !s.Connected {
		s.URL = ""
	}
	return s
}

// states holds the connState of each connection Connect made.
var states sync.Map // *nats.Conn → *connState

// Forget drops nc's state; call it after closing a connection from Connect.
func Forget(nc *nats.Conn) { states.Delete(nc) }

// connState tracks when a connection was lost and the server it was on.
type connState struct {
	mu        sync.Mutex
	downSince time.Time
	url       string
}

func (s *connState) connected(nc *nats.Conn) {
	u := nc.ConnectedUrl()
	s.mu.Lock()
	s.downSince = time.Time{}
	if u != "" {
		s.url = u
	}
	s.mu.Unlock()
}

func (s *connState) disconnected() {
	s.mu.Lock()
	if s.downSince.IsZero() {
		s.downSince = time.Now()
	}
	s.mu.Unlock()
}

func (s *connState) since() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.downSince
}

func (s *connState) lastURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
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
