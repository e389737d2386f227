package sla

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes r as the tables `candlekeep sla` prints.
func WriteText(w io.Writer, r Report) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "SLA audit %s .. %s (%s)\n\n", r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), windowLength(r))

	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tSTATUS\tFIGURE\tTARGET\tNOTE")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, strings.ToUpper(string(t.Status)), t.Figure, t.Target, dash(t.Note))
	}
	tw.Flush()
	if len(r.Notes) > 0 {
		fmt.Fprintln(ew, "\nNotes:")
		for _, n := range r.Notes {
			fmt.Fprintln(ew, "  - "+n)
		}
	}

	fmt.Fprintln(ew, "\nPer day (share of the day every pair was fresh / some pair was stale / nobody recorded):")
	tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DAY\tFRESH\tSTALE\tNO DATA\tPAIRS NOT FRESH (worst state)")
	for _, d := range r.Days {
		var bad []string
		for i, s := range d.Pairs {
			if s != CellFresh {
				bad = append(bad, r.Pairs[i]+" "+s)
			}
		}
		fmt.Fprintf(tw, "%s\t%.1f %%\t%.1f %%\t%.1f %%\t%s\n", d.Date, d.Fresh*100, d.Stale*100, d.NoData*100, dash(strings.Join(abbreviate(bad, 6), ", ")))
	}
	tw.Flush()

	s := r.Sync
	fmt.Fprintf(ew, "\nSync runs: %d finished, %d timed out; duration p50 %s, p99 %s, max %s; %d over target\n",
		s.Runs, s.Timeouts, Duration(secs(s.P50Seconds)), Duration(secs(s.P99Seconds)), Duration(secs(s.MaxSeconds)), s.Slow)
	fmt.Fprintf(ew, "Pairs ok per run: min %d, mean %.2f, last %d of %d; %d of %d runs all ok\n",
		s.PairsOKMin, s.PairsOKMean, s.PairsOKLast, s.PairsTotalLast, s.RunsAllOK, s.Runs)
	rl := r.RateLimit
	fmt.Fprintf(ew, "Rate-limit hits (429): %d, mean %.3f/h, max %d in one hour, in %d hours; bans (418): %d\n",
		rl.Hits, rl.MeanPerHour, rl.MaxPerHour, rl.HoursWithHits, rl.Bans)
	b := r.Backups
	if b.WorstTo.IsZero() {
		fmt.Fprintf(ew, "Backups: no backups recorded; %d failed\n", b.Failed)
	} else {
		fmt.Fprintf(ew, "Backups: %d, last %s; worst age %s (%s .. %s); %d failed\n", b.Count, timeOrDash(b.Last),
			Duration(secs(b.WorstAgeSeconds)), b.WorstFrom.Format(time.RFC3339), b.WorstTo.Format(time.RFC3339), b.Failed)
	}
	rc := r.Recovery
	fmt.Fprintf(ew, "Recovery: %s, %s (%d failed); worst RTO %s, worst RPO %s\n",
		plural(rc.Restores, "restore"), plural(rc.Drills, "drill"), rc.DrillsFailed, Duration(secs(rc.RTOSeconds)), Duration(secs(rc.RPOSeconds)))

	fmt.Fprintf(ew, "\nAlerts (%d):\n", len(r.Alerts))
	if len(r.Alerts) > 0 {
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ALERT\tSEVERITY\tSTART\tEND\tDURATION\tSUMMARY")
		for _, a := range r.Alerts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Alert, a.Severity, a.Start.Format(time.RFC3339), AlertEnd(a),
				Duration(secs(a.DurationSeconds)), a.Summary)
		}
		tw.Flush()
	}
	return ew.err
}

// AlertEnd is an alert's end as a report shows it.
func AlertEnd(a Alert) string {
	if a.StillFiring {
		return "still firing"
	}
	return a.End.Format(time.RFC3339)
}

// Summary is the report as one message: a headline counting the verdicts
// and a line per target with its figure. It names nothing private.
func Summary(r Report) (headline string, lines []string) {
	var met, missed, unmeasured int
	for _, t := range r.Targets {
		switch t.Status {
		case Met:
			met++
		case Missed:
			missed++
		default:
			unmeasured++
		}
		line := fmt.Sprintf("%s %s: %s (target %s)", statusMark(t.Status), t.Name, t.Figure, t.Target)
		if t.Note != "" {
			line += "; " + t.Note
		}
		lines = append(lines, line)
	}
	headline = fmt.Sprintf("%d met, %d missed, %d not measured (%s .. %s)", met, missed, unmeasured,
		r.From.Format(time.RFC3339), r.To.Format(time.RFC3339))
	if len(r.Alerts) > 0 {
		headline += fmt.Sprintf("; %d alerts", len(r.Alerts))
	}
	if r.NoData {
		headline += "; nothing was recorded"
	}
	return headline, lines
}

func statusMark(s Status) string {
	switch s {
	case Met:
		return "met"
	case Missed:
		return "MISSED"
	}
	return "n/a"
}

func windowLength(r Report) string {
	d := r.To.Sub(r.From)
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return Duration(d)
}

func abbreviate(l []string, n int) []string {
	if len(l) <= n {
		return l
	}
	return append(l[:n:n], fmt.Sprintf("and %d more", len(l)-n))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// errWriter keeps the first write error so the printing stays linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
