package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/services/monitor/sla"
)

// Exit codes of `candlekeep sla`.
const (
	slaAllMet   = 0
	slaMissed   = 1
	slaNoAnswer = 2
)

// runSLA is `candlekeep sla`: the SLA audit of a window, from EVENTS.
func runSLA(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	return slaCommand(ctx, args, stdout, stderr, getenv, time.Now)
}

// slaCommand is runSLA with its clock passed in (for --since and the
// default --to), so tests can stand anywhere in time.
func slaCommand(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env, now func() time.Time) int {
	fs := flagSet("sla", "candlekeep sla [flags]",
		"Audits a window against the SLA from what EVENTS recorded: availability (the share\n"+
			"of time every configured pair was fresh, from the monitor's freshness.changed\n"+
			"history), freshness per day and pair, sync duration p50/p99, pairs ok per run,\n"+
			"rate-limit hits per hour, the worst backup age, RPO and RTO measured by restores\n"+
			"and drills, and every alert with its duration. Each target is met or missed\n"+
			"(RPO and RTO are \"not measured\" without a restore or drill). Time nobody\n"+
			"recorded (before the history starts, or while no monitor ran) is \"no data\"\n"+
			"and counts against availability.\n\n"+
			"Exit status: 0 when every target is met; 1 when any is missed; 2 for bad flags,\n"+
			"no answer from NATS, or nothing recorded for the window.", stderr)
	var nf natsFlags
	nf.register(fs)
	since := fs.String("since", "30d", "the window ends now (or at --to) and is this long: days (30d), hours (36h) or both (1d12h)")
	fromFlag := fs.String("from", "", "the window's start: RFC 3339 (2026-11-01T00:00:00Z) or a UTC date (2026-11-01); instead of --since")
	toFlag := fs.String("to", "", "the window's end (excluded): RFC 3339 or a UTC date (default: now)")
	asJSON := fs.Bool("json", false, "print the report as JSON instead of tables")
	htmlFile := fs.String("html", "", "also write the report as one self-contained HTML page (figures and a per-day heatmap) to this file")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long reading EVENTS may take")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "candlekeep sla: "+format+"\n(see candlekeep sla --help)\n", a...)
		return slaNoAnswer
	}
	sinceGiven := false
	fs.Visit(func(f *flag.Flag) { // set on the command line or in the environment
		if f.Name == "since" {
			sinceGiven = true
		}
	})
	to := now().UTC()
	if *toFlag != "" {
		t, err := parseWhen(*toFlag)
		if err != nil {
			return bad("--to %q: %v", *toFlag, err)
		}
		to = t
	}
	length, err := parseSince(*since)
	if err != nil {
		return bad("--since %q: %v", *since, err)
	}
	from := to.Add(-length)
	if *fromFlag != "" {
		if sinceGiven {
			return bad("--since and --from: give one of them")
		}
		t, err := parseWhen(*fromFlag)
		if err != nil {
			return bad("--from %q: %v", *fromFlag, err)
		}
		from = t
	}
	if !to.After(from) {
		return bad("--to %s is not after --from %s", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	if *timeout <= 0 {
		return bad("--timeout %v: want a positive duration", *timeout)
	}

	nc, err := nf.dial("candlekeep-sla", dialTimeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sla: %v\n", err)
		return slaNoAnswer
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sla: %v\n", err)
		return slaNoAnswer
	}
	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	loaded, err := sla.Read(rctx, js, from, to)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sla: %v\n", err)
		return slaNoAnswer
	}
	r := sla.Compute(loaded.Events, from, to, sla.DefaultTargets())
	r.Notes = append(r.Notes, loaded.Notes(from)...)

	if *asJSON {
		out, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintln(stdout, string(out))
	} else if err := sla.WriteText(stdout, r); err != nil {
		fmt.Fprintf(stderr, "candlekeep sla: %v\n", err)
		return slaNoAnswer
	}
	if *htmlFile != "" {
		if err := writeHTMLReport(*htmlFile, r); err != nil {
			fmt.Fprintf(stderr, "candlekeep sla: --html %s: %v\n", *htmlFile, err)
			return slaNoAnswer
		}
		fmt.Fprintf(stderr, "candlekeep sla: wrote %s\n", *htmlFile)
	}
	switch {
	case r.NoData:
		fmt.Fprintf(stderr, "candlekeep sla: nothing was recorded for %s .. %s\n", from.Format(time.RFC3339), to.Format(time.RFC3339))
		return slaNoAnswer
	case r.Missed():
		return slaMissed
	}
	return slaAllMet
}

// writeHTMLReport writes the page next to its final name and renames it,
// so a half-written page is never attached to a report.
func writeHTMLReport(path string, r sla.Report) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := sla.WriteHTML(f, r); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// parseSince reads a window's length: whole days ("30d"), a Go duration
// ("36h", "90m") or both ("1d12h").
func parseSince(s string) (time.Duration, error) {
	const want = "want days or hours such as 30d, 36h or 1d12h"
	s = strings.TrimSpace(s)
	var d time.Duration
	if days, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 3660 {
			return 0, errors.New(want)
		}
		d, s = time.Duration(n)*24*time.Hour, rest
	}
	if s != "" {
		more, err := time.ParseDuration(s)
		if err != nil || more < 0 {
			return 0, errors.New(want)
		}
		d += more
	}
	if d <= 0 {
		return 0, errors.New(want)
	}
	return d, nil
}

// parseWhen reads RFC 3339 or a date (UTC midnight).
func parseWhen(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, errors.New("want RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)")
}

// slaScheduleFlag is the monitor's --sla-schedule (for `candlekeep monitor`
// and `candlekeep up`): when the monthly SLA audit runs. Register it with
// the monitor's flags and pass the value to monitor.Options.SLASchedule.
type slaScheduleFlag struct{ value string }

func (f *slaScheduleFlag) register(fs *flag.FlagSet) {
	f.value = sla.DefaultSchedule
	fs.StringVar(&f.value, "sla-schedule", sla.DefaultSchedule,
		`when the monitor runs the monthly SLA audit of the previous month (sla.report and a summary to the receivers), `+
			`installed as a JetStream message schedule: 6-field cron with seconds (UTC), 5-field cron, "@every 1h", "@monthly", or "off"`)
}

// check validates the flag; the error names it and says what is allowed.
func (f *slaScheduleFlag) check() error {
	_, _, err := sla.ParseSchedule(f.value, time.Now())
	return err
}
