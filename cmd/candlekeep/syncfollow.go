package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Exit codes of `candlekeep sync`, those of the sync script it replaces
// (0, 1, 124) plus the usual ones for bad usage and an interrupt.
const (
	exitSyncOK          = 0
	exitSyncFailed      = 1
	exitSyncUsage       = 2
	exitSyncTimeout     = 124
	exitSyncInterrupted = 130
)

// Pair statuses of a sync report.
const (
	pairPending = "pending" // in the run, not resolved yet (only while following)
	pairOK      = "ok"
	pairFailed  = "failed"
	// pairOpen: still running when the run's deadline or --timeout passed,
	// or when the command was interrupted.
	pairOpen = "open"
	// pairSkipped: left out of this run because an unfinished run is
	// already syncing it (sync.skipped); that run brings it up to date.
	pairSkipped = "skipped"
)

// Outcomes of a followed run.
const (
	outcomeCompleted   = "completed"   // sync.completed
	outcomeFailed      = "failed"      // sync.failed: the run could not be planned or was refused
	outcomeTimeout     = "timeout"     // sync.timeout: the run's deadline passed
	outcomeDeadline    = "deadline"    // --timeout passed; the run goes on
	outcomeSkipped     = "skipped"     // every pair was skipped; no run started
	outcomeInterrupted = "interrupted" // Ctrl-C; the run goes on
)

// syncReport is what `candlekeep sync` prints at the end, as a table or,
// with --json, as this JSON object (documented in docs/messages.md).
type syncReport struct {
	RunID    string `json:"run_id"`
	Outcome  string `json:"outcome"`
	ExitCode int    `json:"exit_code"`
	// Reason says why the run failed (sync.failed) or timed out.
	Reason     string       `json:"reason,omitempty"`
	Notes      []string     `json:"notes,omitempty"`
	StartedAt  time.Time    `json:"started_at,omitzero"`
	Deadline   time.Time    `json:"deadline,omitzero"`
	FinishedAt time.Time    `json:"finished_at,omitzero"`
	Pairs      []pairReport `json:"pairs"`
	Totals     syncTotals   `json:"totals"`
}

// pairReport is one pair's line. The counts come from its pair.completed
// event (zero for a pair that did not complete).
type pairReport struct {
	Symbol           string `json:"symbol"`
	Interval         string `json:"interval"`
	Status           string `json:"status"`
	Candles          int64  `json:"candles"`
	CandlesNew       int64  `json:"candles_new"`
	CandlesRefetched int64  `json:"candles_refetched"`
	Repaired         int64  `json:"repaired"`
	Reason           string `json:"reason,omitempty"`
}

// syncTotals sums the pair lines.
type syncTotals struct {
	Pairs            int   `json:"pairs"`
	OK               int   `json:"ok"`
	Failed           int   `json:"failed"`
	Open             int   `json:"open"`
	Skipped          int   `json:"skipped"`
	Candles          int64 `json:"candles"`
	CandlesNew       int64 `json:"candles_new"`
	CandlesRefetched int64 `json:"candles_refetched"`
	Repaired         int64 `json:"repaired"`
}

// runFollower folds the events of one run into its report. It is fed the
// events in stream order; done is set by the event that ends the run.
type runFollower struct {
	runID   string
	pairs   map[candles.Pair]*pairReport
	started bool
	done    bool
	report  syncReport
	// waiting is the latest sync.waiting reason, until the run starts.
	waiting string
	// skippedBy names the runs syncing the skipped pairs.
	skippedBy string
}

func newRunFollower(runID string) *runFollower {
	return &runFollower{runID: runID, pairs: map[candles.Pair]*pairReport{}, report: syncReport{RunID: runID}}
}

func (f *runFollower) pair(p candles.Pair) *pairReport {
	pr, ok := f.pairs[p]
	if !ok {
		pr = &pairReport{Symbol: p.Symbol, Interval: p.Interval, Status: pairPending}
		f.pairs[p] = pr
	}
	return pr
}

// handle applies one event. It returns an error only for an event of this
// run that cannot be decoded; events of other runs are ignored.
func (f *runFollower) handle(data []byte) error {
	var h candles.EventHeader
	if err := json.Unmarshal(data, &h); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	if h.RunID != f.runID || f.done {
		return nil
	}
	decode := func(v any) error {
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("decode %s event: %w", h.Kind, err)
		}
		return nil
	}
	switch h.Kind {
	case candles.KindSyncSkipped:
		var ev candles.SyncSkipped
		if err := decode(&ev); err != nil {
			return err
		}
		reason := ev.Reason
		if len(ev.SyncingRuns) > 0 {
			f.skippedBy = "run " + strings.Join(ev.SyncingRuns, ", ")
			reason += " (" + f.skippedBy + ")"
		}
		for _, p := range ev.Pairs {
			pr := f.pair(p)
			pr.Status, pr.Reason = pairSkipped, reason
		}
		if ev.PairsStarted == 0 {
			f.finish(outcomeSkipped, exitSyncOK, ev.Time)
			f.report.Reason = "every pair is already being synced by an unfinished run; no run started"
		}
	case candles.KindSyncWaiting:
		var ev candles.SyncWaiting
		if err := decode(&ev); err != nil {
			return err
		}
		f.waiting = fmt.Sprintf("waiting to start (attempt %d of %d, again in %s): %s", ev.Attempt, ev.MaxAttempts,
			time.Duration(ev.RetryIn*float64(time.Second)).Round(time.Millisecond), ev.Reason)
	case candles.KindSyncStarted:
		var ev candles.SyncStarted
		if err := decode(&ev); err != nil {
			return err
		}
		f.started, f.waiting = true, ""
		f.report.StartedAt, f.report.Deadline, f.report.Notes = ev.Time, ev.Deadline, ev.Notes
		for _, p := range ev.Pairs {
			f.pair(p)
		}
	case candles.KindPairCompleted:
		var ev candles.PairCompleted
		if err := decode(&ev); err != nil {
			return err
		}
		pr := f.pair(candles.Pair{Symbol: ev.Symbol, Interval: ev.Interval})
		// The writer announces only pairs it resolved as ok: a pair.failed
		// seen first is overruled, as in the database.
		pr.Status, pr.Reason = pairOK, ""
		pr.Candles, pr.CandlesNew, pr.CandlesRefetched, pr.Repaired = ev.Candles, ev.CandlesNew, ev.CandlesRefetched, ev.Repaired
	case candles.KindPairFailed:
		var ev candles.PairFailed
		if err := decode(&ev); err != nil {
			return err
		}
		// A pair's first resolution stands, as in the writer.
		if pr := f.pair(candles.Pair{Symbol: ev.Symbol, Interval: ev.Interval}); pr.Status == pairPending {
			pr.Status, pr.Reason = pairFailed, ev.Reason
		}
	case candles.KindSyncCompleted:
		var ev candles.SyncCompleted
		if err := decode(&ev); err != nil {
			return err
		}
		// The writer's list of failed pairs is the database's word.
		for _, pf := range ev.Failed {
			pr := f.pair(candles.Pair{Symbol: pf.Symbol, Interval: pf.Interval})
			pr.Status, pr.Reason = pairFailed, pf.Reason
		}
		for _, pr := range f.pairs {
			if pr.Status == pairPending { // its pair.completed was not seen: it is ok all the same
				pr.Status, pr.Reason = pairOK, "pair.completed not received; counts unknown"
			}
		}
		code := exitSyncOK
		if ev.PairsFailed > 0 || f.count(pairFailed) > 0 {
			code = exitSyncFailed
		}
		f.report.StartedAt = ev.StartedAt
		f.finish(outcomeCompleted, code, ev.FinishedAt)
	case candles.KindSyncTimeout:
		var ev candles.SyncTimeout
		if err := decode(&ev); err != nil {
			return err
		}
		// A pair the writer completed after the deadline (its
		// pair.completed came first) stays ok: its candles are all written.
		for _, p := range ev.OpenPairs {
			f.pair(p)
		}
		f.report.Reason = "the run's deadline " + ev.Deadline.UTC().Format(time.RFC3339) + " passed with pairs still open"
		f.openPending("not done by the run's deadline " + ev.Deadline.UTC().Format(time.RFC3339))
		f.finish(outcomeTimeout, exitSyncTimeout, ev.Time)
	case candles.KindSyncFailed:
		var ev candles.SyncFailed
		if err := decode(&ev); err != nil {
			return err
		}
		f.report.Reason = ev.Reason
		for _, pr := range f.pairs {
			if pr.Status == pairPending {
				pr.Status, pr.Reason = pairFailed, "the run failed: "+ev.Reason
			}
		}
		f.finish(outcomeFailed, exitSyncFailed, ev.Time)
	}
	return nil
}

// openPending marks every unresolved pair open, with reason.
func (f *runFollower) openPending(reason string) {
	for _, pr := range f.pairs {
		if pr.Status == pairPending {
			pr.Status, pr.Reason = pairOpen, reason
		}
	}
}

func (f *runFollower) finish(outcome string, code int, at time.Time) {
	f.done = true
	f.report.Outcome, f.report.ExitCode, f.report.FinishedAt = outcome, code, at
}

// stop ends following before the run ended (--timeout, Ctrl-C).
func (f *runFollower) stop(outcome string, code int, reason string, at time.Time) {
	f.report.Reason = reason
	f.openPending(reason)
	f.finish(outcome, code, at)
}

func (f *runFollower) count(status string) int {
	n := 0
	for _, pr := range f.pairs {
		if pr.Status == status {
			n++
		}
	}
	return n
}

// progress is the state a progress line shows.
type progress struct {
	done, total int
	candles     int64
}

func (f *runFollower) progress() progress {
	var p progress
	for _, pr := range f.pairs {
		if pr.Status == pairSkipped {
			continue
		}
		p.total++
		if pr.Status != pairPending {
			p.done++
		}
		p.candles += pr.Candles
	}
	return p
}

// final returns the report, pairs sorted and totals summed.
func (f *runFollower) final() syncReport {
	r := f.report
	r.Pairs = make([]pairReport, 0, len(f.pairs))
	for _, pr := range f.pairs {
		r.Pairs = append(r.Pairs, *pr)
	}
	sort.Slice(r.Pairs, func(i, j int) bool {
		a, b := r.Pairs[i], r.Pairs[j]
		if a.Symbol != b.Symbol {
			return a.Symbol < b.Symbol
		}
		return a.Interval < b.Interval
	})
	t := syncTotals{Pairs: len(r.Pairs)}
	for _, p := range r.Pairs {
		switch p.Status {
		case pairOK:
			t.OK++
		case pairFailed:
			t.Failed++
		case pairOpen, pairPending:
			t.Open++
		case pairSkipped:
			t.Skipped++
		}
		t.Candles += p.Candles
		t.CandlesNew += p.CandlesNew
		t.CandlesRefetched += p.CandlesRefetched
		t.Repaired += p.Repaired
	}
	r.Totals = t
	return r
}

// printSyncReport writes the per-pair table and a totals line.
func printSyncReport(w io.Writer, r syncReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PAIR\tSTATUS\tNEW\tREFETCHED\tREPAIRED\tREASON")
	for _, p := range r.Pairs {
		n, rf, rp := "-", "-", "-"
		if p.Status == pairOK {
			n, rf, rp = thousands(p.CandlesNew), thousands(p.CandlesRefetched), thousands(p.Repaired)
		}
		reason := p.Reason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", p.Symbol, p.Interval, p.Status, n, rf, rp, reason)
	}
	_ = tw.Flush()
	t := r.Totals
	took := ""
	if !r.StartedAt.IsZero() && !r.FinishedAt.IsZero() && !r.FinishedAt.Before(r.StartedAt) {
		word := " after "
		if r.Outcome == outcomeCompleted {
			word = " in "
		}
		took = word + r.FinishedAt.Sub(r.StartedAt).Round(100*time.Millisecond).String()
	}
	fmt.Fprintf(w, "TOTAL %d pairs: %d ok, %d failed, %d open, %d skipped; candles %s new, %s re-fetched, %s repaired; run %s %s%s\n",
		t.Pairs, t.OK, t.Failed, t.Open, t.Skipped, thousands(t.CandlesNew), thousands(t.CandlesRefetched), thousands(t.Repaired),
		r.RunID, r.Outcome, took)
}

// progressLine is "12/60 pairs, 34,000 candles", with the rate and an ETA
// once some pairs are done.
func progressLine(p progress, elapsed time.Duration) string {
	line := fmt.Sprintf("%d/%d pairs, %s candles", p.done, p.total, thousands(p.candles))
	if secs := elapsed.Seconds(); secs >= 1 {
		line += fmt.Sprintf(", %s candles/s", thousands(int64(float64(p.candles)/secs)))
		if p.done > 0 && p.done < p.total {
			eta := time.Duration(float64(elapsed) / float64(p.done) * float64(p.total-p.done))
			line += ", ETA " + eta.Round(time.Second).String()
		}
	}
	return line
}

// thousands writes n with comma separators: 34,000.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// plural is "1 pair", "60 pairs".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}
