package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Screen control for --watch on a terminal: home the cursor and clear, so
// each report replaces the last instead of scrolling.
const ansiRedraw = "\x1b[H\x1b[2J"

// barWidth is the width of a run's progress bar, in cells.
const barWidth = 20

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("status", "candlekeep status [flags]",
		"Shows the sync runs in progress (pairs done/total, candles, rate, request\n"+
			"weight, ETA) and the last runs with their outcome, as the monitor\n"+
			"(candles.api.status) knows them. On a terminal it redraws every --interval\n"+
			"with a progress bar per run until Ctrl-C; otherwise it prints plain lines\n"+
			"once (or every --interval with --watch). --json prints the monitor's\n"+
			"StatusReport.\n\n"+
			"Exit status: 0; 2 when no monitor answers or for bad flags.", stderr)
	var nf natsFlags
	nf.register(fs)
	asJSON := fs.Bool("json", false, "print the monitor's JSON report instead of lines")
	terminal := isTerminal(stdout)
	watch := fs.Bool("watch", terminal, "ask again every --interval until interrupted (default: on when stdout is a terminal)")
	interval := fs.Duration("interval", time.Second, "how often --watch asks")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the monitor's answer")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "candlekeep status: "+format+"\n(see candlekeep status --help)\n", a...)
		return exitUnknown
	}
	if *interval <= 0 {
		return bad("--interval %v: want a positive duration such as 1s", *interval)
	}
	if *timeout <= 0 {
		return bad("--timeout %v: want a positive duration such as 5s", *timeout)
	}
	if *asJSON && !flagGiven(fs, "watch") {
		*watch = false // JSON is for scripts: one report unless asked for more
	}
	mc, err := dialMonitor(&nf, "candlekeep-status", *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep status: %v\n", err)
		return exitUnknown
	}
	defer mc.close()
	redraw := terminal && *watch && !*asJSON
	var tick <-chan time.Time
	if *watch {
		t := time.NewTicker(*interval)
		defer t.Stop()
		tick = t.C
	}
	for n := 0; ; n++ {
		var sr candles.StatusReport
		err := mc.ask(ctx, candles.SubjectAPIStatus, &sr)
		switch {
		case ctx.Err() != nil:
			return 0 // interrupted: the watch is over
		case err != nil && n == 0:
			fmt.Fprintf(stderr, "candlekeep status: %v\n", err)
			return exitUnknown
		case err != nil:
			// A monitor restarting mid-watch: say so and keep asking.
			fmt.Fprintf(stderr, "candlekeep status: %s: %v\n", time.Now().UTC().Format(time.TimeOnly), err)
		default:
			var b bytes.Buffer
			if *asJSON {
				out, _ := json.MarshalIndent(sr, "", "  ")
				b.Write(append(out, '\n'))
			} else {
				if redraw {
					b.WriteString(ansiRedraw)
				} else if n > 0 {
					b.WriteString("\n")
				}
				printStatus(&b, sr, terminal)
			}
			_, _ = stdout.Write(b.Bytes())
		}
		if !*watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick:
		}
	}
}

// flagGiven reports whether the flag name was set on the command line or
// from the environment.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// printStatus writes the runs in progress and the last runs. Everything
// shown comes from the report (rates and ETAs against its At), so the same
// report prints the same lines.
func printStatus(w io.Writer, sr candles.StatusReport, terminal bool) {
	at := sr.At
	fmt.Fprintf(w, "RUNS IN PROGRESS (%d)\n", len(sr.Running))
	if len(sr.Running) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RUN\tREASON\tPAIRS\tFAILED\tCANDLES\tRATE\tWEIGHT\tELAPSED\tETA")
		for _, r := range sr.Running {
			pairs := fmt.Sprintf("%d/%d", r.PairsDone, r.PairsTotal)
			if terminal {
				pairs = bar(r.PairsDone, r.PairsTotal) + " " + pairs
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", r.RunID, dash(r.Reason), pairs, r.PairsFailed,
				r.Candles, rate(r.Candles, at.Sub(r.StartedAt)), weight(r.Weight), span(at.Sub(r.StartedAt)), eta(r.ETA, at))
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(w, "\nLAST RUNS (%d)\n", len(sr.Recent))
	if len(sr.Recent) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RUN\tREASON\tOUTCOME\tPAIRS OK\tFAILED\tCANDLES\tDURATION\tFINISHED")
		for _, r := range sr.Recent {
			finished := "-"
			dur := "-"
			if !r.FinishedAt.IsZero() {
				finished = r.FinishedAt.UTC().Format(time.RFC3339)
				dur = span(r.FinishedAt.Sub(r.StartedAt))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\t%s\n", r.RunID, dash(r.Reason),
				paint(terminal, r.Outcome, dash(r.Outcome)), pairsOK(r), r.PairsTotal, r.PairsFailed, r.Candles, dur, finished)
		}
		_ = tw.Flush()
	}
	if !at.IsZero() {
		fmt.Fprintf(w, "\nas of %s\n", at.UTC().Format(time.RFC3339))
	}
}

// pairsOK is the pairs of a run that synced: PairsDone counts every
// finished pair, the failed ones included.
func pairsOK(r candles.RunStatus) int {
	if ok := r.PairsDone - r.PairsFailed; ok > 0 {
		return ok
	}
	return 0
}

// bar draws done of total as a fixed-width bar.
func bar(done, total int) string {
	filled := 0
	if total > 0 {
		filled = min(barWidth, max(0, done*barWidth/total))
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", barWidth-filled) + "]"
}

// rate is candles per second over elapsed.
func rate(n int64, elapsed time.Duration) string {
	if elapsed <= 0 || n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f/s", float64(n)/elapsed.Seconds())
}

func weight(w int64) string {
	if w == 0 {
		return "-"
	}
	return fmt.Sprint(w)
}

// eta is the expected finish as "in 12s" from at.
func eta(t, at time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := t.Sub(at); d > 0 {
		return "in " + span(d)
	}
	return "any moment"
}

// span rounds a duration for reading: 12ms, 1.2s, 42s, 3m10s, 2h5m0s.
func span(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}
