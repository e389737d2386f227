package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
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
			"($SRV.PING.candlekeep-<service>) through --nats-url with the service's\n"+
			"credentials (--nats-nkey or CANDLEKEEP_NATS_NKEY), 1 when none answers in\n"+
			"--timeout, 2 for bad flags. A container health check (the images have no shell).", stderr)
	var nf natsFlags
	nf.register(fs)
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for an answer")
	var svc string
	// The service is the first or the last argument (not the value of the
	// flag before it).
	switch {
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		svc, args = args[0], args[1:]
	case len(args) > 1 && !strings.HasPrefix(args[len(args)-1], "-") && !takesValue(fs, args[len(args)-2]):
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
	nc, err := nf.dial("candlekeep-ping", *timeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep ping %s: %v\n", svc, err)
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

// takesValue reports whether arg is a flag of fs that takes the next
// argument as its value (--nats-nkey FILE, not --flag=value or a bool).
func takesValue(fs *flag.FlagSet, arg string) bool {
	if !strings.HasPrefix(arg, "-") || strings.Contains(arg, "=") {
		return false
	}
	f := fs.Lookup(strings.TrimLeft(arg, "-"))
	if f == nil {
		return false
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return false
	}
	return true
}
