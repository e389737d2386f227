package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// upConfig is everything `candlekeep up` runs with.
type upConfig struct {
	DataDir    string
	NATSListen string
	Fetcher    fetcher.Options
	Writer     writer.Options
	// Ready, if set, is called with the embedded server's client URL once
	// every service runs (tests use it with --nats-listen 127.0.0.1:-1).
	Ready func(natsURL string)
}

func runUp(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("up", "candlekeep up [flags]",
		"Runs an embedded nats-server (JetStream, file store under --data-dir) with the\n"+
			"fetcher and the writer in one process. It installs the sync schedule and, if\n"+
			"stored data is older than one interval, starts a catch-up sync at once.\n"+
			"The database is <data-dir>/candles.db. Stop it with Ctrl-C or SIGTERM: work in\n"+
			"flight is handed back to the streams, nothing is lost.", stderr)
	var lf logFlags
	lf.register(fs)
	var ff fetcherFlags
	ff.register(fs)
	var mf memoryFlag
	mf.register(fs)
	cfg := upConfig{Writer: writer.DefaultOptions()}
	fs.StringVar(&cfg.DataDir, "data-dir", defaultDataDir, "directory of candles.db and the NATS store (created 0700)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", defaultNATSListen, "host:port of the embedded nats-server, for the nats CLI and split services")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep up:", err)
		return 2
	}
	cfg.Fetcher = ff.options()
	if err := cfg.Fetcher.ValidateConfig(); err != nil {
		fmt.Fprintf(stderr, "candlekeep up: %v\n(see candlekeep up --help)\n", err)
		return 2
	}
	mf.apply()
	if err := up(ctx, cfg, log); err != nil {
		log.Error("candlekeep up stopped", "err", err)
		return 1
	}
	return 0
}

// up runs the embedded server and every service until ctx ends.
func up(ctx context.Context, cfg upConfig, log *slog.Logger) error {
	dbPath, err := databasePath(cfg.DataDir)
	if err != nil {
		return err
	}
	ns, err := natsutil.RunServer(natsutil.ServerOptions{Listen: cfg.NATSListen, StoreDir: filepath.Join(cfg.DataDir, "nats"), Name: "candlekeep"})
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		log.Info("embedded nats-server stopped")
	}()
	url := ns.ClientURL()
	log.Info("embedded nats-server ready", "url", url, "store", filepath.Join(cfg.DataDir, "nats"))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveWriter(gctx, url, dbPath, cfg.Writer, log) })
	g.Go(func() error { return serveFetcher(gctx, url, cfg.Fetcher, log) })
	if cfg.Ready != nil {
		cfg.Ready(url)
	}
	return g.Wait()
}
