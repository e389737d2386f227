package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/lockfile"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

// upConfig is everything `candlekeep up` runs with.
type upConfig struct {
	DataDir    string
	NATSListen string
	// Insecure runs the embedded server without authentication (the old
	// behaviour, --nats-insecure); only on a loopback --nats-listen.
	// Otherwise every client needs the credentials of <data-dir>/nats-auth
	// (authDir), generated at the first start.
	Insecure bool
	Fetcher  fetcher.Options
	Writer   writer.Options
	// Backup configures the backup service; its zero value runs none
	// (runUp defaults the hot tier to <data-dir>/backups/hot).
	Backup backupConfig
	// Member is how up joins the cluster configuration; zero means "every
	// setting as Fetcher has it" (in-process callers).
	Member membership
	// Monitor, if set, runs the monitor too (nil: not in this process).
	Monitor *monitorSettings
	// Ready, if set, is called with the embedded server's client URL once
	// every service runs (tests use it with --nats-listen 127.0.0.1:-1).
	Ready func(natsURL string)
}

func runUp(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("up", "candlekeep up [flags]",
		"Runs an embedded nats-server (JetStream, file store under --data-dir) with the\n"+
			"fetcher, the writer, the monitor and the backup service in one process.\n"+
			"Settings given here explicitly (flag or CANDLEKEEP_* variable) are written to\n"+
			"the cluster configuration (candlekeep config get); the others keep their stored\n"+
			"values. It keeps the sync schedule in place and, if stored data is older than\n"+
			"one interval, starts a catch-up. The database is <data-dir>/candles.db;\n"+
			"verified backups go to <data-dir>/backups/hot (--backup-hot-dir off for none)\n"+
			"and to --backup-warm-dir / --backup-s3-url when given. The monitor serves\n"+
			"health checks and /metrics on --http-listen and sends alerts to the receivers\n"+
			"below, unless --monitor=false (a deployment that runs candlekeep monitor apart).\n"+
			"Stop it with Ctrl-C or SIGTERM: work in flight is handed back to the streams,\n"+
			"nothing is lost.\n"+
			"The embedded server requires credentials, even on loopback: at the first start\n"+
			"up writes them to <data-dir>/"+authDirName+" (0700, files 0600; the layout of\n"+
			"candlekeep auth init) and every service connects as its own user. The nats CLI\n"+
			"then needs one line of setup, which up logs at start:\n"+
			"  export NATS_CONTEXT=<data-dir>/"+authDirName+"/context/operator.json\n"+
			"--nats-insecure runs the server without credentials (tests, local experiments),\n"+
			"only on a loopback --nats-listen.", stderr)
	var lf logFlags
	lf.register(fs)
	var cf clusterFlags
	cf.register(fs)
	var ff fetcherFlags
	ff.register(fs)
	var mf memoryFlag
	mf.register(fs)
	var monf monitorFlags
	monf.register(fs)
	runMon := fs.Bool("monitor", true, "run the monitor in this process (false when candlekeep monitor runs apart)")
	cfg := upConfig{Writer: writer.DefaultOptions()}
	fs.StringVar(&cfg.DataDir, "data-dir", defaultDataDir, "directory of candles.db and the NATS store (created 0700)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", defaultNATSListen, "host:port of the embedded nats-server, for the nats CLI and split services")
	fs.BoolVar(&cfg.Insecure, "nats-insecure", false, "run the embedded nats-server without credentials (only on a loopback --nats-listen; for tests and local experiments)")
	fs.BoolVar(&cfg.Writer.RebindSource, "rebind-source", false, rebindSourceUsage)
	cfg.Backup.register(fs)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	cfg.Backup.resolve(cfg.DataDir)
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep up:", err)
		return 2
	}
	if err := checkListen(cfg.NATSListen, cfg.Insecure); err != nil {
		fmt.Fprintf(stderr, "candlekeep up: %v\n(see candlekeep up --help)\n", err)
		return 2
	}
	cfg.Fetcher = ff.options(cf.s)
	cfg.Member = cf.membership(true, "up")
	if err := cfg.Fetcher.ValidateConfig(); err != nil {
		fmt.Fprintf(stderr, "candlekeep up: %v\n(see candlekeep up --help)\n", err)
		return 2
	}
	if *runMon {
		ms, err := monf.settings(getenv)
		if err != nil {
			fmt.Fprintf(stderr, "candlekeep up: %v\n(see candlekeep up --help)\n", err)
			return 2
		}
		cfg.Monitor = &ms
	}
	if cfg.Backup.enabled() {
		if err := cfg.Backup.validate(); err != nil {
			fmt.Fprintf(stderr, "candlekeep up: %v\n(see candlekeep up --help)\n", err)
			return 2
		}
	}
	mf.apply()
	if err := up(ctx, cfg, log); err != nil {
		log.Error("candlekeep up stopped", "err", err)
		return 1
	}
	return 0
}

// up runs the embedded server and every service until ctx ends. It first
// takes the data directory's lock, so a second `up` on the same directory
// is refused before it touches the NATS store or the database; then it
// writes its settings to the cluster configuration and checks that the
// database belongs to the exchange configured there, before a fetcher can
// put anything into the streams.
func up(ctx context.Context, cfg upConfig, log *slog.Logger) error {
	dbPath, err := databasePath(cfg.DataDir)
	if err != nil {
		return err
	}
	lock, err := lockfile.Acquire(cfg.DataDir, lockfile.Self("candlekeep up --nats-listen "+cfg.NATSListen, time.Now()))
	var held *lockfile.HeldError
	if errors.As(err, &held) {
		return fmt.Errorf("data directory %s is in use: %w; stop that process first, or give this one another --data-dir", cfg.DataDir, err)
	}
	if err != nil {
		return err
	}
	defer lock.Release()
	if err := checkListen(cfg.NATSListen, cfg.Insecure); err != nil {
		return err
	}
	authDir := filepath.Join(cfg.DataDir, authDirName)
	so := natsutil.ServerOptions{Listen: cfg.NATSListen, StoreDir: filepath.Join(cfg.DataDir, "nats"), Name: "candlekeep"}
	if !cfg.Insecure {
		if err := ensureCredentials(authDir, cfg.NATSListen, log); err != nil {
			return err
		}
		so.AuthFile = filepath.Join(authDir, natsauth.AuthConf)
	}
	ns, err := natsutil.RunServer(so)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		log.Info("embedded nats-server stopped")
	}()
	url := ns.ClientURL()
	// client is how user reaches the embedded server: with its own nkey,
	// so least privilege holds inside up as in a cluster.
	client := func(user string) natsutil.Client {
		c := natsutil.URL(url)
		if !cfg.Insecure {
			c.NKeyFile = natsauth.SeedPath(authDir, user)
		}
		return c
	}
	if cfg.Insecure {
		log.Warn("embedded nats-server ready WITHOUT credentials (--nats-insecure): any local process can read, change or delete the streams",
			"url", url, "store", filepath.Join(cfg.DataDir, "nats"))
	} else {
		abs, err := filepath.Abs(authDir)
		if err != nil {
			return err
		}
		cURL := contextURL(url)
		if err := natsauth.SetContextServers(abs, []string{cURL}); err != nil {
			return err
		}
		// The operator's context names the server and the seed: one
		// variable sets the nats CLI up (checked with natscli v0.5.0).
		log.Info("embedded nats-server ready; it requires credentials. nats CLI setup: export NATS_CONTEXT="+natsauth.ContextPath(abs, natsauth.UserOperator),
			"url", url, "credentials", abs, "operator_nkey", natsauth.SeedPath(abs, natsauth.UserOperator),
			"store", filepath.Join(cfg.DataDir, "nats"))
		if !loopback(cfg.NATSListen) {
			log.Warn("the embedded nats-server listens beyond loopback without TLS: credentials stop strangers, but traffic crosses the network in clear text; "+
				"for remote clients run nats-server with TLS (candlekeep auth init --tls, docs/security.md)", "listen", cfg.NATSListen)
		}
	}

	// up is how an operator changes the cluster configuration: its explicit
	// flags are written once, here, before the services join and follow.
	m := cfg.Member
	if m.seed.Symbols == nil {
		m = memberOf(cfg.Fetcher)
		m.authoritative, m.by = true, "up"
	}
	var settings cluster.Settings
	if err := withConn(ctx, client(natsauth.UserOperator), "candlekeep-up", log, func(nc *nats.Conn) error {
		c, err := joinCluster(ctx, nc, m, log)
		if err == nil {
			settings = c.Current()
		}
		return err
	}); err != nil {
		return err
	}
	m.authoritative = false
	// The database must belong to the exchange the cluster now points at,
	// before a fetcher can put anything into the streams.
	if err := checkSource(ctx, dbPath, settings.BinanceURL, cfg.Writer.RebindSource, log); err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return serveLeasedWriter(gctx, client(natsauth.UserWriter), dbPath, cfg.Writer, m, log, false)
	})
	g.Go(func() error { return serveFetcher(gctx, client(natsauth.UserFetcher), cfg.Fetcher, m, log) })
	// The disk events are the server's own; up publishes them as operator.
	g.Go(func() error {
		return watchStore(gctx, ns, client(natsauth.UserOperator), filepath.Join(cfg.DataDir, "nats"), log)
	})
	if cfg.Monitor != nil {
		g.Go(func() error { superviseMonitor(gctx, client(natsauth.UserMonitor), *cfg.Monitor, log); return nil })
	}
	if cfg.Backup.enabled() {
		g.Go(func() error { return serveBackup(gctx, client(natsauth.UserBackup), dbPath, cfg.Backup, m, log) })
	}
	if cfg.Ready != nil {
		cfg.Ready(url)
	}
	err = g.Wait()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Stopped while a service was still starting: a clean stop.
		return nil
	}
	return err
}

// Backoff of a monitor that stopped inside `up`.
const (
	monitorRestartMin = time.Second
	monitorRestartMax = time.Minute
)

// superviseMonitor runs the monitor inside `up` until ctx ends. The monitor
// only observes: when it stops (its --http-listen port taken, NATS trouble)
// the fetcher and the writer keep going, the error is logged, and the
// monitor starts again after a backoff, so it comes back without a restart
// of the pipeline. Meanwhile `candlekeep health` says no monitor answers.
func superviseMonitor(ctx context.Context, nc natsutil.Client, ms monitorSettings, log *slog.Logger) {
	wait := monitorRestartMin
	for {
		started := time.Now()
		err := serveMonitor(ctx, nc, ms, log)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > monitorRestartMax {
			wait = monitorRestartMin // it ran a good while: a new failure
		}
		log.Error("monitor stopped; the fetcher and the writer keep running; restarting it", "service", "monitor", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, monitorRestartMax)
	}
}

// watchStore keeps the embedded server's JetStream working through a full
// disk (natsutil.WatchStore) and reports it as disk.full and disk.recovered.
// disk.full reaches the subscribers of candles.events.disk.full at once;
// EVENTS stores it only if its own store can still write.
func watchStore(ctx context.Context, ns *server.Server, nc0 natsutil.Client, storeDir string, log *slog.Logger) error {
	log = log.With("service", "nats-server")
	return withConn(ctx, nc0, "candlekeep-up", log, func(nc *nats.Conn) error {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		natsutil.WatchStore(ctx, ns, natsutil.StoreWatchOptions{StoreDir: storeDir, Logger: log, Report: func(s natsutil.StoreState) {
			var ev candles.Event = &candles.DiskRecovered{EventHeader: candles.NewHeader(candles.KindDiskRecovered, ""),
				Path: s.Path, FreeBytes: s.FreeBytes, Service: "nats-server", Since: s.Since}
			if s.Full {
				ev = &candles.DiskFull{EventHeader: candles.NewHeader(candles.KindDiskFull, ""),
					Path: s.Path, FreeBytes: s.FreeBytes, Service: "nats-server", Reason: s.Reason}
			}
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := candles.PublishEvent(pctx, js, ev, "", time.Now()); err != nil {
				log.Debug("disk event not stored in EVENTS (its subscribers had it)", "kind", ev.Head().Kind, "err", err)
			}
		}})
		return nil
	})
}

// checkSource binds the database at dbPath to source (see writer.BindSource).
func checkSource(ctx context.Context, dbPath, source string, rebind bool, log *slog.Logger) error {
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		return openError(dbPath, err)
	}
	defer st.Close()
	err = writer.BindSource(ctx, st, source, rebind, log)
	if store.IsCorrupt(err) {
		return openError(dbPath, err)
	}
	return err
}

// openError is the error of a database that cannot be opened; for a file
// too damaged to open at all it says how to recover.
func openError(dbPath string, err error) error {
	if store.IsCorrupt(err) {
		return fmt.Errorf("open database %s: %w; %s", dbPath, err, fmt.Sprintf(writer.RecoveryHint, dbPath))
	}
	return fmt.Errorf("open database %s: %w", dbPath, err)
}

// authDirName is the directory under --data-dir that holds the embedded
// server's credentials (the layout of candlekeep auth init).
const authDirName = "nats-auth"

// ensureCredentials generates the credentials in dir at the first start;
// later starts reuse the seeds, so the ones handed out stay valid, and
// render auth.conf again with this version's permissions.
func ensureCredentials(dir, listen string, log *slog.Logger) error {
	if natsauth.Exists(dir) {
		if missing := natsauth.Missing(dir); len(missing) > 0 {
			return fmt.Errorf("NATS credentials in %s are incomplete (missing %s); regenerate them with candlekeep auth init --force --dir %s "+
				"(clients holding the old seeds then need the new ones)", dir, strings.Join(missing, ", "), dir)
		}
		// The permissions are this version's; the seeds stay.
		changed, err := natsauth.RefreshAuthConf(dir)
		if err != nil {
			return fmt.Errorf("NATS credentials in %s: %w; regenerate them with candlekeep auth init --force --dir %s", dir, err, dir)
		}
		if changed {
			log.Info("NATS permissions updated to this version's", "file", filepath.Join(dir, natsauth.AuthConf))
		}
		return nil
	}
	res, err := natsauth.Init(natsauth.Options{Dir: dir, Servers: []string{contextURL("nats://" + listen)}})
	if err != nil {
		return fmt.Errorf("generate NATS credentials: %w", err)
	}
	log.Info("generated NATS credentials for the embedded server (one nkey user per service, files 0600)", "dir", res.Dir)
	return nil
}

// contextURL is url as a client on this host dials it: a wildcard listen
// host becomes 127.0.0.1.
func contextURL(url string) string {
	rest, ok := strings.CutPrefix(url, "nats://")
	if !ok {
		return url
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return url
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, port)
}

// loopback reports whether listen's host only accepts connections from
// this machine: localhost or a loopback address (not "", 0.0.0.0, ::, a
// LAN address or another name).
func loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkListen refuses an embedded server without credentials that others
// could reach.
func checkListen(listen string, insecure bool) error {
	if insecure && !loopback(listen) {
		return fmt.Errorf("--nats-insecure with --nats-listen %s: a server without credentials must listen on loopback only "+
			"(127.0.0.1:PORT or localhost:PORT); drop --nats-insecure to have credentials generated into <data-dir>/%s "+
			"(then non-loopback listening is allowed), or listen on 127.0.0.1", listen, authDirName)
	}
	return nil
}

const rebindSourceUsage = "accept a database filled from another exchange URL than --binance-url and record the new one (otherwise it is refused)"
