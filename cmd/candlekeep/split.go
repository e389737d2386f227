package main

import (
	"context"
	"fmt"
	"io"

	"github.com/candlekeep/candlekeep/services/writer"
)

func runFetcher(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("fetcher", "candlekeep fetcher [flags]",
		"Runs one fetcher against --nats-url. Run as many as you like: they share the\n"+
			"sync requests, the per-pair jobs and the exchange's weight budget.\n\n"+
			"The cluster settings (pairs, schedule, exchange, retries) come from the\n"+
			"cluster configuration (candlekeep config get). The flags below only seed a\n"+
			"new configuration; a flag that disagrees with the stored value is reported\n"+
			"and the stored value is used (change it with candlekeep config set).", stderr)
	var lf logFlags
	lf.register(fs)
	var cf clusterFlags
	cf.register(fs)
	var ff fetcherFlags
	ff.register(fs)
	var mf memoryFlag
	mf.register(fs)
	var nf natsFlags
	nf.register(fs)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep fetcher:", err)
		return 2
	}
	if err := ff.options(cf.s).ValidateConfig(); err != nil {
		fmt.Fprintf(stderr, "candlekeep fetcher: %v\n(see candlekeep fetcher --help)\n", err)
		return 2
	}
	mf.apply()
	if err := serveFetcher(ctx, nf.c, ff.o, cf.membership(false, "fetcher"), log); err != nil {
		return serviceExit(log, "fetcher", err)
	}
	return 0
}

func runWriter(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("writer", "candlekeep writer [flags]",
		"Runs the writer against --nats-url: the one consumer of the CANDLES stream,\n"+
			"upserting each batch into <data-dir>/candles.db exactly once. A second writer\n"+
			"on the same NATS stands by and takes over within seconds when the first dies.\n"+
			"The database is bound to the exchange of the cluster's binance-url setting.", stderr)
	var lf logFlags
	lf.register(fs)
	var cf clusterFlags
	cf.register(fs)
	dataDir := fs.String("data-dir", defaultDataDir, "directory of candles.db (created 0700)")
	var mf memoryFlag
	mf.register(fs)
	var nf natsFlags
	nf.register(fs)
	o := writer.DefaultOptions()
	fs.BoolVar(&o.RebindSource, "rebind-source", false, rebindSourceUsage)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep writer:", err)
		return 2
	}
	dbPath, err := databasePath(*dataDir)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep writer:", err)
		return 2
	}
	mf.apply()
	if err := serveWriter(ctx, nf.c, dbPath, o, cf.membership(false, "writer"), log); err != nil {
		return serviceExit(log, "writer", err)
	}
	return 0
}
