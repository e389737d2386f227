package natsutil

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/candlekeep/candlekeep/pkg/diskspace"
)

// StoreState is what WatchStore reports: the JetStream store at Path could
// not write (Full) or writes again (!Full), with the bytes free then.
type StoreState struct {
	Full      bool
	Path      string
	FreeBytes uint64
	// Reason is the write error or why JetStream is off (when Full).
	Reason string
	// Since is when the store was found full (when !Full).
	Since time.Time
}

// StoreWatchOptions configures WatchStore.
type StoreWatchOptions struct {
	// StoreDir is the ServerOptions.StoreDir the server runs with.
	StoreDir string
	// Every is how often the store is checked (default 1s).
	Every time.Duration
	// MinFree is how much more space than when its write failed the
	// filesystem must have before a full store is brought back (default
	// 1 MiB).
	MinFree uint64
	// Report receives every change of state; it must not block long.
	Report func(StoreState)
	Logger *slog.Logger
}

// WatchStore keeps the embedded server's JetStream working through a full
// disk, until ctx ends. nats-server does not recover from a failed write by
// itself: a stream whose store failed to write (no space left) refuses
// every later message until it is loaded again, and a permission or
// clustered out-of-space error turns JetStream off altogether. WatchStore
// notices either (the server's health check names the stream's write
// error), reports the store full, waits until the filesystem has MinFree
// bytes again, then restarts JetStream from its store (every stream loaded
// afresh; clients keep their connections and their consumers resume) and
// reports it recovered.
func WatchStore(ctx context.Context, ns *server.Server, o StoreWatchOptions) {
	if o.Every <= 0 {
		o.Every = time.Second
	}
	if o.MinFree == 0 {
		o.MinFree = 1 << 20
	}
	t := time.NewTicker(o.Every)
	defer t.Stop()
	var full *StoreState
	var tried time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		free := diskspace.Free(o.StoreDir)
		if full == nil {
			reason := storeTrouble(ns)
			if reason == "" {
				continue
			}
			full = &StoreState{Full: true, Path: o.StoreDir, FreeBytes: free, Reason: reason, Since: time.Now().UTC()}
			tried = time.Now()
			o.Logger.Error("the NATS store cannot write; JetStream is restarted when space returns",
				"path", o.StoreDir, "free_bytes", free, "reason", reason, "needs_free", o.MinFree)
			o.Report(*full)
			continue
		}
		// Space has returned when there is MinFree more than when the
		// write failed: a store that fails with room to spare (a large
		// allocation) is not restarted into the same failure every second.
		// A store that failed for another reason (a permission error turns
		// JetStream off) is tried again now and then all the same.
		if free < full.FreeBytes+o.MinFree && time.Since(tried) < retryAnyway {
			continue
		}
		tried = time.Now()
		if err := restartJetStream(ns, o.StoreDir); err != nil {
			o.Logger.Error("cannot restart JetStream after the disk was full; retrying", "path", o.StoreDir, "err", err)
			continue
		}
		if reason := storeTrouble(ns); reason != "" {
			o.Logger.Warn("JetStream restarted but the store still cannot write; retrying", "reason", reason)
			continue
		}
		o.Logger.Info("the NATS store writes again; JetStream restarted", "path", o.StoreDir, "free_bytes", free,
			"full_for", time.Since(full.Since).Round(time.Second))
		o.Report(StoreState{Path: o.StoreDir, FreeBytes: free, Since: full.Since})
		full = nil
	}
}

// retryAnyway is how often a store that cannot write is restarted even
// though no space was freed.
const retryAnyway = 30 * time.Second

// storeTrouble says why JetStream cannot store messages, or "" when it can.
func storeTrouble(ns *server.Server) string {
	if !ns.JetStreamEnabled() {
		return "JetStream is disabled (the server turned it off after a store error)"
	}
	h := ns.Healthz(&server.HealthzOptions{Details: true})
	for _, e := range h.Errors {
		if strings.Contains(e.Error, "write error") {
			return e.Error
		}
	}
	return ""
}

// restartJetStream stops JetStream (if it still runs) and starts it again
// from storeDir, which loads every stream afresh and clears their write
// errors. (go test -race reports a data race inside nats-server v2.15.2
// when JetStream is enabled on a running server, in
// setJetStreamExportSubs; it has shown no effect, and restarting the whole
// embedded server is the fallback should it ever matter.)
func restartJetStream(ns *server.Server, storeDir string) error {
	if ns.JetStreamEnabled() {
		if err := ns.ShutdownJetStream(); err != nil {
			return fmt.Errorf("stop JetStream: %w", err)
		}
	}
	if err := ns.EnableJetStream(&server.JetStreamConfig{StoreDir: storeDir}); err != nil {
		return fmt.Errorf("start JetStream: %w", err)
	}
	return nil
}
