package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/lockfile"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/monitor"
	"github.com/candlekeep/candlekeep/services/writer"
)

// The same functions run a service in `candlekeep up` and on its own, so the
// two modes share one code path: each service has its own NATS connection,
// drained when the service stops, and joins the cluster configuration
// before it starts.

// membership is how a process joins the cluster configuration.
type membership struct {
	// seed is the process's settings: written only where the store has none.
	seed cluster.Settings
	// explicit names the settings the operator gave this process.
	explicit map[string]bool
	// authoritative: explicit settings overwrite the stored ones (`up`).
	authoritative bool
	by            string
}

// memberOf is the membership of a caller that configures a fetcher in code
// (tests, benchmarks): every setting as explicit as its options.
func memberOf(o fetcher.Options) membership {
	m := membership{seed: settingsOf(o), explicit: map[string]bool{}, by: "in-process"}
	for _, k := range cluster.KeyNames() {
		m.explicit[k] = true
	}
	return m
}

// joinTimeout bounds joining the configuration at start-up.
const joinTimeout = 30 * time.Second

// joinCluster joins the cluster configuration on nc.
func joinCluster(ctx context.Context, nc *nats.Conn, m membership, log *slog.Logger) (*cluster.Config, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// On a fresh cluster the services start together: a bucket another one
	// just created may not answer reads on every node yet, and streams are
	// still electing leaders. Such moments are waited out, not fatal.
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		cfg, err := cluster.Join(jctx, js, cluster.JoinOptions{Seed: m.seed, Explicit: m.explicit,
			Authoritative: m.authoritative, By: m.by, Logger: log})
		if err == nil {
			return cfg, nil
		}
		if !natsutil.Unavailable(err) {
			return nil, fmt.Errorf("join the cluster configuration: %w", err)
		}
		log.Info("the cluster configuration does not answer yet; trying again", "err", err, "retry_in", wait)
		select {
		case <-jctx.Done():
			return nil, fmt.Errorf("join the cluster configuration: %w", err)
		case <-time.After(wait):
		}
	}
}

// following runs the service fn while cfg follows the cluster
// configuration; both stop when either does.
func following(ctx context.Context, cfg *cluster.Config, fn func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = cfg.Run(ctx) }()
	err := fn(ctx)
	cancel()
	<-done
	return err
}

// serveFetcher connects to natsURL and runs a fetcher until ctx ends. The
// pair set, the schedule and the other cluster settings come from the
// cluster configuration; o supplies the per-process settings.
func serveFetcher(ctx context.Context, nc0 natsutil.Client, o fetcher.Options, m membership, log *slog.Logger) error {
	log = log.With("service", "fetcher")
	return withServiceConn(ctx, nc0, "candlekeep-fetcher", log, func(ctx context.Context, nc *nats.Conn) error {
		cfg, err := joinCluster(ctx, nc, m, log)
		if err != nil {
			return err
		}
		o = withSettings(o, cfg.Current())
		o.Conn, o.Logger, o.Cluster = nc, log, cfg
		f, err := fetcher.New(o)
		if err != nil {
			return err
		}
		return following(ctx, cfg, f.Run)
	})
}

// serveWriter connects to natsURL, joins the cluster configuration and
// runs the writer of the database at dbPath until ctx ends: it stands by
// until it holds the writer lease, then locks the data directory (waiting
// for a dying previous holder on this host to let go), opens the database
// and writes; after losing the lease it closes everything and stands by
// again.
func serveWriter(ctx context.Context, nc0 natsutil.Client, dbPath string, o writer.Options, m membership, log *slog.Logger) error {
	return serveLeasedWriter(ctx, nc0, dbPath, o, m, log, true)
}

// serveLeasedWriter is serveWriter; lockDir is false when the caller
// (`candlekeep up`) holds the data directory's lock already.
func serveLeasedWriter(ctx context.Context, nc0 natsutil.Client, dbPath string, o writer.Options, m membership, log *slog.Logger, lockDir bool) error {
	log = log.With("service", "writer")
	abs, err := filepath.Abs(dbPath)
	if err != nil {
		return fmt.Errorf("database path %s: %w", dbPath, err)
	}
	return withServiceConn(ctx, nc0, "candlekeep-writer", log, func(ctx context.Context, nc *nats.Conn) error {
		cfg, err := joinCluster(ctx, nc, m, log)
		if err != nil {
			return err
		}
		o.Streams = cfg.Current().Streams()
		// The exchange the database is bound to is the cluster's.
		o.Source = cfg.Current().BinanceURL
		lo := writer.DefaultLeaseOptions()
		lo.Conn, lo.Database, lo.Logger, lo.Replicas = nc, abs, log, o.Streams.Replicas
		return writer.RunLeased(ctx, lo, func(ctx context.Context, tk writer.Takeover) error {
			if lockDir {
				dir := filepath.Dir(dbPath)
				lock, err := lockfile.Wait(ctx, dir, lockfile.Self("candlekeep writer", time.Now()), lockPoll,
					func(held *lockfile.HeldError) {
						log.Warn("waiting for the data directory: "+held.Error()+"; stop that process or give this writer another --data-dir",
							"holder_pid", held.Holder.PID, "holder_host", held.Holder.Host)
					})
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				defer lock.Release()
			}
			st, err := store.Open(ctx, dbPath)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return openError(dbPath, err)
			}
			defer st.Close()
			log.Info("database open", "path", dbPath)
			wo := o
			wo.Conn, wo.Store, wo.Logger, wo.Active = nc, st, log, tk.Event()
			wo.DatabasePath = abs
			// A restore swaps a verified copy in under the running writer
			// (candles.api.writer.swap); the writer closes what it reopens.
			wo.Reopen = func(ctx context.Context, path string) (writer.Store, error) { return store.Open(ctx, path) }
			w, err := writer.New(wo)
			if err != nil {
				return err
			}
			return following(ctx, cfg, w.Run)
		})
	})
}

// lockPoll is how often a writer that holds the lease retries the data
// directory's lock.
const lockPoll = 200 * time.Millisecond

// withConn runs fn with a fresh connection and drains it afterwards, so
// acks and publishes in flight reach the server before the process exits.
// The first connection is waited for at most 30s.
func withConn(ctx context.Context, nc0 natsutil.Client, name string, log *slog.Logger, fn func(*nats.Conn) error) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return connected(ctx, cctx, nc0, name, log, func(_ context.Context, nc *nats.Conn) error { return fn(nc) })
}

// withServiceConn is withConn for a long-running service: it waits for its
// server as long as ctx lasts (a service started before NATS), and when
// the server rejects its credentials (at connect or on a reconnect) fn's
// context ends and the error is an *natsutil.AuthError: the service exits
// with natsutil.ExitConfig.
func withServiceConn(ctx context.Context, nc0 natsutil.Client, name string, log *slog.Logger, fn func(context.Context, *nats.Conn) error) error {
	return connected(ctx, ctx, nc0, name, log, fn)
}

func connected(ctx, connectCtx context.Context, nc0 natsutil.Client, name string, log *slog.Logger, fn func(context.Context, *nats.Conn) error) error {
	nc, err := natsutil.Connect(connectCtx, nc0, name, log)
	if err != nil {
		if ctx.Err() != nil && !natsutil.IsAuthError(err) {
			return nil // stopped while waiting for the server
		}
		return err
	}
	defer natsutil.Forget(nc)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	closed := make(chan struct{})
	var closedErr error
	nc.SetClosedHandler(func(c *nats.Conn) {
		closedErr = nc0.Closed(c)
		if closedErr != nil {
			cancel()
		}
		close(closed)
	})
	if nc.IsClosed() { // closed before the handler was set
		if err := nc0.Closed(nc); err != nil {
			return err
		}
	}
	runErr := fn(fctx, nc)
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	select {
	case <-closed:
		if closedErr != nil {
			return closedErr
		}
	case <-time.After(shutdownGrace):
		nc.Close()
	}
	return runErr
}

// serveMonitor connects to natsURL and runs the monitor until ctx ends. It
// reads the cluster configuration and never writes it: a monitor started
// first must not seed settings the other services would then follow.
func serveMonitor(ctx context.Context, nc0 natsutil.Client, ms monitorSettings, log *slog.Logger) error {
	log = log.With("service", "monitor")
	ms.Receivers.logReceivers(log)
	return withServiceConn(ctx, nc0, "candlekeep-monitor", log, func(ctx context.Context, nc *nats.Conn) error {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		lctx, cancel := context.WithTimeout(ctx, joinTimeout)
		s, err := storedSettings(lctx, js)
		cancel()
		if err != nil {
			return fmt.Errorf("read the cluster configuration: %w", err)
		}
		o := monitor.DefaultOptions()
		o.Conn, o.Logger = nc, log
		o.HTTPListen, o.EvalInterval, o.MaxStaleness = ms.HTTPListen, ms.EvalInterval, ms.MaxStaleness
		o.RepeatInterval, o.Receivers, o.Ready = ms.RepeatInterval, ms.Notifiers, ms.Ready
		o.RuleTimeScale, o.SLASchedule = ms.RuleTimeScale, ms.SLASchedule
		o.Replicas = s.StreamReplicas
		if ms.Now != nil {
			o.Now = ms.Now
		}
		m, err := monitor.New(o)
		if err != nil {
			return err
		}
		return m.Run(ctx)
	})
}
