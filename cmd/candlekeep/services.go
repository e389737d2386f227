package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// The same functions run a service in `candlekeep up` and on its own, so the
// two modes share one code path: each service has its own NATS connection,
// drained when the service stops.

// serveFetcher connects to natsURL and runs a fetcher until ctx ends.
func serveFetcher(ctx context.Context, natsURL string, o fetcher.Options, log *slog.Logger) error {
	log = log.With("service", "fetcher")
	return withConn(ctx, natsURL, "candlekeep-fetcher", log, func(nc *nats.Conn) error {
		o.Conn, o.Logger = nc, log
		f, err := fetcher.New(o)
		if err != nil {
			return err
		}
		return f.Run(ctx)
	})
}

// serveWriter opens the database at dbPath, connects to natsURL and runs
// the writer until ctx ends.
func serveWriter(ctx context.Context, natsURL, dbPath string, o writer.Options, log *slog.Logger) error {
	log = log.With("service", "writer")
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		return fmt.Errorf("open database %s: %w", dbPath, err)
	}
	defer st.Close()
	log.Info("database open", "path", dbPath)
	return withConn(ctx, natsURL, "candlekeep-writer", log, func(nc *nats.Conn) error {
		o.Conn, o.Store, o.Logger = nc, st, log
		w, err := writer.New(o)
		if err != nil {
			return err
		}
		return w.Run(ctx)
	})
}

// withConn runs fn with a fresh connection and drains it afterwards, so
// acks and publishes in flight reach the server before the process exits.
func withConn(ctx context.Context, natsURL, name string, log *slog.Logger, fn func(*nats.Conn) error) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	nc, err := natsutil.Connect(cctx, natsURL, name, log)
	cancel()
	if err != nil {
		return err
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	runErr := fn(nc)
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	select {
	case <-closed:
	case <-time.After(shutdownGrace):
		nc.Close()
	}
	return runErr
}
