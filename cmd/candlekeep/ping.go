package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// pingServices are the services `candlekeep ping` knows, by the target name
// that runs them.
var pingServices = map[string]string{
	"fetcher": "candlekeep-fetcher",
	"writer":  "candlekeep-writer",
	"backup":  "candlekeep-backup",
	"monitor": "candlekeep-monitor",
}

// runPing is a container health check: the service answers on NATS
// ($SRV.PING.<name>, the micro discovery every service serves). The
// containers have no shell, so compose runs ["CMD", "/candlekeep", "ping",
// "writer"]; the container's own environment gives the URLs and credentials.
func runPing(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("ping", "candlekeep ping [flags] fetcher|writer|backup|monitor",
		"Exits 0 when at least one instance of the service answers a micro ping\n"+
			"($SRV.PING.candlekeep-<service>) through --nats-url, 1 when none answers in\n"+
			"--timeout, 2 for bad flags. A container health check (the images have no shell).", stderr)
	natsURL := fs.String("nats-url", "nats://127.0.0.1:4222", "NATS server URL (several: comma-separated)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for an answer")
	var svc string
	// The service is the first or the last argument.
	switch {
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		svc, args = args[0], args[1:]
	case len(args) > 1 && !strings.HasPrefix(args[len(args)-1], "-") && !strings.HasPrefix(args[len(args)-2], "--nats-url") && !strings.HasPrefix(args[len(args)-2], "--timeout"):
		svc, args = args[len(args)-1], args[:len(args)-1]
	}
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	name, ok := pingServices[svc]
	if !ok {
		fmt.Fprintf(stderr, "candlekeep ping: want a service: fetcher, writer, backup or monitor (got %q)\n", svc)
		return 2
	}
	nc, err := nats.Connect(*natsURL, nats.Name("candlekeep-ping"), nats.Timeout(*timeout))
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep ping %s: connect to %s: %v\n", svc, candles.RedactURL(*natsURL), err)
		return 1
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, fmt.Sprintf("%s.%s.%s", micro.APIPrefix, micro.PingVerb, name), nil)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		fmt.Fprintf(stderr, "candlekeep ping %s: no %s is running\n", svc, name)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "candlekeep ping %s: %v\n", svc, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", msg.Data)
	return 0
}
