// Command candlekeep keeps a local SQLite database of Binance spot candles
// complete, fresh and recoverable. One binary, a target per service:
// `candlekeep up` runs everything in one process around an embedded
// nats-server; `candlekeep fetcher` and `candlekeep writer` run one service
// against --nats-url; `candlekeep sim` runs the Binance simulator.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}

// env looks up an environment variable (os.LookupEnv in production).
type env func(string) (string, bool)

// command is one target of the binary.
type command struct {
	name, synopsis string
	run            func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int
}

func commands() []command {
	return []command{
		{"up", "embedded NATS + fetcher + writer in one process (what `make run` starts)", runUp},
		{"fetcher", "the fetcher service, connected to --nats-url", runFetcher},
		{"writer", "the writer service, connected to --nats-url", runWriter},
		{"monitor", "the monitor (health checks, metrics, alerts), connected to --nats-url", runMonitor},
		{"backup", "the backup service (verified hot/warm/S3 copies), connected to --nats-url; backup now | backup ls", runBackup},
		{"restore", "restore the newest verified backup under the running writer (--from hot|warm|cold|PATH, --at TIME); exit 1 if no copy verifies", runRestore},
		{"drill", "restore drill: the newest copy of each tier into a scratch directory, verified and compared with the live database (exit 1 if one fails)", runDrill},
		{"sim", "the Binance-compatible simulator, for demos and tests", runSim},
		{"coverage", "what the database holds per pair: complete, missing, stale, known gaps (exit 1 if not all complete)", runCoverage},
		{"health", "the six health checks and the firing alerts, from the monitor (exit 0 healthy, 1 problems, 2 cannot tell)", runHealth},
		{"status", "sync runs in progress (live on a terminal) and the last runs, from the monitor", runStatus},
		{"sync", "request a sync, follow it and print a per-pair report (exit 0 ok, 1 failed, 124 timeout, 2 bad flags or no answer)", runSync},
		{"sla", "the SLA audit of a window (default the last 30 days) from EVENTS: table, --json or --html page (exit 1 if a target was missed)", runSLA},
		{"auth", "NATS credentials: auth init writes one nkey user per service, route auth, nats CLI contexts, TLS files", runAuth},
		{"ping", "container health check: exit 0 when the service (fetcher, writer, backup, monitor) answers on NATS", runPing},
		{"config", "read or change the cluster-wide settings stored in JetStream (get | set)", runConfig},
	}
}

// run dispatches to a command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		return runVersion(ctx, nil, stdout, stderr, getenv)
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr, getenv)
		}
	}
	fmt.Fprintf(stderr, "candlekeep: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "candlekeep keeps a local SQLite database of Binance spot candles complete and fresh.")
	fmt.Fprintln(w, "\nUsage: candlekeep <command> [flags]    (candlekeep <command> --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.synopsis)
	}
	fmt.Fprintln(w, "\nEvery flag can also be set as CANDLEKEEP_<FLAG>, e.g. --binance-url as CANDLEKEEP_BINANCE_URL.")
	fmt.Fprintln(w, "candlekeep --version (or candlekeep version) prints the version.")
}
