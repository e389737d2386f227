package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/term"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Exit codes of the operator commands that report a state: the old
// health_check.py's 0 healthy / 1 problems, plus 2 for "cannot tell" (no
// monitor answers, bad flags), so a script never reads silence as health.
const (
	exitHealthy  = 0
	exitProblems = 1
	exitUnknown  = 2
)

// maxDetails bounds the detail lines printed under one check; --json has all.
const maxDetails = 10

func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("health", "candlekeep health [flags]",
		"Asks the monitor (candles.api.health; run by candlekeep up or candlekeep monitor)\n"+
			"for the six health checks: freshness, coverage, integrity, size, backup and\n"+
			"activity, each with its status, measured value, threshold and reason, then\n"+
			"the alerts firing now. A table (coloured on a terminal) or, with --json, the\n"+
			"monitor's HealthReport as docs/monitoring.md describes it.\n\n"+
			"Exit status: 0 healthy (every check ok); 1 problems (a check warns or fails);\n"+
			"2 cannot tell (a check is unknown, no monitor answers) or bad flags.", stderr)
	var nf natsFlags
	nf.register(fs)
	asJSON := fs.Bool("json", false, "print the monitor's JSON report instead of a table")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the monitor's answer")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "candlekeep health: --timeout %v: want a positive duration such as 5s\n(see candlekeep health --help)\n", *timeout)
		return exitUnknown
	}
	var hr candles.HealthReport
	if err := askMonitor(ctx, &nf, "candlekeep-health", candles.SubjectAPIHealth, *timeout, &hr); err != nil {
		fmt.Fprintf(stderr, "candlekeep health: %v\n", err)
		return exitUnknown
	}
	if *asJSON {
		out, _ := json.MarshalIndent(hr, "", "  ")
		fmt.Fprintln(stdout, string(out))
	} else {
		printHealth(stdout, hr, isTerminal(stdout))
	}
	return healthExit(hr.Status)
}

// healthExit maps the report's overall status to the exit code.
func healthExit(s candles.CheckStatus) int {
	switch s {
	case candles.CheckOK:
		return exitHealthy
	case candles.CheckWarn, candles.CheckFail:
		return exitProblems
	default: // unknown, or a status this binary does not know: cannot tell
		return exitUnknown
	}
}

// askMonitor sends one request to a monitor endpoint on natsURL and decodes
// the answer into v. Its errors say what an operator checks next.
func askMonitor(ctx context.Context, nf *natsFlags, name, subject string, timeout time.Duration, v any) error {
	mc, err := dialMonitor(nf, name, timeout)
	if err != nil {
		return err
	}
	defer mc.close()
	return mc.ask(ctx, subject, v)
}

// monitorClient asks the monitor's endpoints over one connection.
type monitorClient struct {
	nc      *nats.Conn
	timeout time.Duration
}

func dialMonitor(nf *natsFlags, name string, timeout time.Duration) (*monitorClient, error) {
	nc, err := nf.dial(name, timeout, "")
	if err != nil {
		return nil, err
	}
	return &monitorClient{nc: nc, timeout: timeout}, nil
}

func (mc *monitorClient) close() { mc.nc.Close() }

// ask sends one request to subject and decodes the answer into v.
func (mc *monitorClient) ask(ctx context.Context, subject string, v any) error {
	rctx, cancel := context.WithTimeout(ctx, mc.timeout)
	defer cancel()
	msg, err := mc.nc.RequestWithContext(rctx, subject, nil)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("no monitor answered on %s: is candlekeep up or candlekeep monitor running?", subject)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("no monitor answered on %s within %v: is candlekeep up or candlekeep monitor running?", subject, mc.timeout)
	case err != nil:
		return fmt.Errorf("ask the monitor on %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return fmt.Errorf("the monitor answered %s on %s: %s", code, subject, msg.Header.Get(micro.ErrorHeader))
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		return fmt.Errorf("the monitor's answer on %s is not a report: %w", subject, err)
	}
	return nil
}

// isTerminal reports whether w is a terminal: colour, bars and redraws are
// for people, plain text for scripts and files.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ANSI colours of the statuses. Every colour code has the same length, so a
// coloured column still lines up in a tabwriter.
const (
	ansiReset  = "\x1b[0m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiGrey   = "\x1b[90m"
)

func statusColour(s string) string {
	switch s {
	case string(candles.CheckOK), "completed":
		return ansiGreen
	case string(candles.CheckWarn), "warning", "running":
		return ansiYellow
	case string(candles.CheckFail), "critical", "failed", "timeout":
		return ansiRed
	default:
		return ansiGrey
	}
}

// paint colours s by the status key when colour is on.
func paint(colour bool, key, s string) string {
	if !colour {
		return s
	}
	return statusColour(key) + s + ansiReset
}

// printHealth writes the report as a table: one row per check, its details
// indented under the reason, then the firing alerts and the verdict.
func printHealth(w io.Writer, hr candles.HealthReport, colour bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tVALUE\tTHRESHOLD\tREASON")
	for _, c := range hr.Checks {
		reason := c.Reason
		if !c.AsOf.IsZero() && !hr.At.IsZero() && hr.At.Sub(c.AsOf) >= time.Minute {
			// Last known values: say how old they are.
			reason += fmt.Sprintf(" (as of %s, %s ago)", c.AsOf.UTC().Format(time.RFC3339), hr.At.Sub(c.AsOf).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, paint(colour, string(c.Status), string(c.Status)),
			dash(c.Value), dash(c.Threshold), dash(reason))
		for i, d := range c.Details {
			if i == maxDetails {
				fmt.Fprintf(tw, "\t\t\t\t  … and %d more (candlekeep health --json lists them all)\n", len(c.Details)-maxDetails)
				break
			}
			fmt.Fprintf(tw, "\t\t\t\t  %s\n", d)
		}
	}
	_ = tw.Flush()
	if len(hr.Firing) > 0 {
		fmt.Fprintf(w, "\nFIRING ALERTS (%d)\n", len(hr.Firing))
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ALERT\tSEVERITY\tSINCE\tVALUE\tTHRESHOLD\tSUMMARY")
		for _, a := range hr.Firing {
			since := "-"
			if !a.FiringSince.IsZero() {
				since = a.FiringSince.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Alert, paint(colour, a.Severity, a.Severity), since,
				dash(a.Value), dash(a.Threshold), dash(a.Summary))
			if len(a.Members) > 0 {
				fmt.Fprintf(tw, "\t\t\t\t\t  %s\n", membersLine(a.Members))
			}
			if a.Runbook != "" {
				fmt.Fprintf(tw, "\t\t\t\t\t  runbook: %s\n", a.Runbook)
			}
		}
		_ = tw.Flush()
	}
	if n := hr.NATS; n != nil {
		if n.Connected {
			fmt.Fprintf(w, "\nmonitor's NATS connection: connected to %s (%d reconnects)\n", n.Server, n.Reconnects)
		} else {
			fmt.Fprintf(w, "\nmonitor's NATS connection: disconnected since %s\n", n.DisconnectedSince.UTC().Format(time.RFC3339))
		}
	}
	at := ""
	if !hr.At.IsZero() {
		at = " at " + hr.At.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "\n%s%s\n", paint(colour, string(hr.Status), healthVerdict(hr.Status)), at)
}

// healthVerdict is the one line an operator reads first.
func healthVerdict(s candles.CheckStatus) string {
	switch s {
	case candles.CheckOK:
		return "healthy"
	case candles.CheckWarn, candles.CheckFail:
		return "problems (" + string(s) + ")"
	default:
		return "cannot tell (" + dash(string(s)) + "): the monitor has not heard what a check needs"
	}
}

func membersLine(ms []string) string {
	if len(ms) > maxDetails {
		return strings.Join(ms[:maxDetails], ", ") + fmt.Sprintf(", … and %d more", len(ms)-maxDetails)
	}
	return strings.Join(ms, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
