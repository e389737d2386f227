package main

import (
	"context"
	"fmt"
	"io"

	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/fetcher"
	"github.com/candlekeep/candlekeep/services/writer"
)

func runFetcher(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("fetcher", "candlekeep fetcher [flags]",
		"Runs one fetcher against --nats-url. Run as many as you like: they share the\n"+
			"sync requests and the per-pair jobs.", stderr)
	var lf logFlags
	lf.register(fs)
	var ff fetcherFlags
	ff.register(fs)
	natsURL := fs.String("nats-url", defaultNATSURL, "NATS server URL")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep fetcher:", err)
		return 2
	}
	if err := ff.options().ValidateConfig(); err != nil {
		fmt.Fprintf(stderr, "candlekeep fetcher: %v\n(see candlekeep fetcher --help)\n", err)
		return 2
	}
	if err := serveFetcher(ctx, *natsURL, ff.options(), log); err != nil {
		log.Error("fetcher stopped", "err", err)
		return 1
	}
	return 0
}

func runWriter(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("writer", "candlekeep writer [flags]",
		"Runs the writer against --nats-url: the one consumer of the CANDLES stream,\n"+
			"upserting each batch into <data-dir>/candles.db exactly once. A second writer\n"+
			"on the same NATS stands by and takes over within seconds when the first dies.", stderr)
	var lf logFlags
	lf.register(fs)
	dataDir := fs.String("data-dir", defaultDataDir, "directory of candles.db (created 0700)")
	natsURL := fs.String("nats-url", defaultNATSURL, "NATS server URL")
	o := writer.DefaultOptions()
	fs.StringVar(&o.Source, "binance-url", fetcher.DefaultOptions().BinanceURL, "the exchange URL the fetchers use; the database is bound to it")
	fs.BoolVar(&o.RebindSource, "rebind-source", false, rebindSourceUsage)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep writer:", err)
		return 2
	}
	if _, err := store.CanonicalSource(o.Source); err != nil {
		fmt.Fprintf(stderr, "candlekeep writer: --binance-url: %v\n(see candlekeep writer --help)\n", err)
		return 2
	}
	dbPath, err := databasePath(*dataDir)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep writer:", err)
		return 2
	}
	if err := serveWriter(ctx, *natsURL, dbPath, o, log); err != nil {
		log.Error("writer stopped", "err", err)
		return 1
	}
	return 0
}
