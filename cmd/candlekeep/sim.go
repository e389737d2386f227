package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/candlekeep/candlekeep/pkg/sim"
)

func runSim(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("sim", "candlekeep sim [flags]",
		"Serves a Binance-compatible REST API (/api/v3/ping, time, exchangeInfo, klines)\n"+
			"with deterministic candles, request weights, 429/418 and switchable faults\n"+
			"(the /sim/ admin endpoints are in docs/simulator.md). For demos and tests.", stderr)
	var lf logFlags
	lf.register(fs)
	listen := fs.String("listen", "127.0.0.1:9100", "host:port to serve on")
	o := sim.Options{}
	fs.DurationVar(&o.Latency, "latency", 0, "delay added to every request, e.g. 50ms")
	fs.IntVar(&o.WeightLimit, "weight-limit", sim.DefaultWeightLimit, "request weight allowed per window before 429")
	fs.DurationVar(&o.WeightWindow, "weight-window", sim.DefaultWeightWindow, "length of a weight window")
	fs.IntVar(&o.BanAfter, "ban-after", sim.DefaultBanAfter, "429 answers in one window before the client is banned (418)")
	fs.DurationVar(&o.BanDuration, "ban-duration", sim.DefaultBanDuration, "length of the first ban")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep sim:", err)
		return 2
	}
	o.Logger = log
	if err := o.Validate(); err != nil {
		fmt.Fprintln(stderr, "candlekeep sim:", err)
		return 2
	}
	s := sim.New(o)
	defer s.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen", "addr", *listen, "err", err)
		return 1
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("simulator serving", "url", "http://"+ln.Addr().String(), "latency", o.Latency, "weight_limit", o.WeightLimit)
	select {
	case err := <-errc:
		log.Error("simulator stopped", "err", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	s.Close()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("simulator shutdown", "err", err)
	}
	return 0
}
