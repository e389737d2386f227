package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/config"
)

// answerWait bounds the wait for candles.api.sync to answer (and for NATS
// to connect): the fetcher answers at once, so silence means it is down.
const answerWait = 10 * time.Second

// progressEvery is how often the progress line is redrawn (at most).
const progressEvery = time.Second

// syncFlagOf names the flag of each sync request field, for errors.
var syncFlagOf = map[string]string{
	"symbols": "--symbols", "intervals": "--intervals", "start": "--start", "end": "--end",
	"lookback": "--lookback", "reason": "--reason", "dry_run": "--dry-run", "confirm": "--confirm",
}

// runSync requests a sync on candles.api.sync, follows the run on EVENTS to
// its end and prints a per-pair report, with the old sync script's exit
// codes: 0 every pair ok, 1 any failed, 124 the run's deadline or --timeout
// passed, 2 bad flags or no answer, 130 interrupted (the run goes on).
func runSync(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("sync", "candlekeep sync [flags]", syncDescription, stderr)
	var nf natsFlags
	nf.register(fs)
	var symbols, intervals config.List
	fs.Var(&symbols, "symbols", "symbols to sync (comma-separated; default: the configured symbols)")
	fs.Var(&intervals, "intervals", "intervals to sync (comma-separated; default: the configured intervals)")
	start := fs.String("start", "", `first open time wanted, RFC 3339 (2024-01-01T00:00:00Z), or "listing" for each pair's full history (default: from the last stored candle)`)
	end := fs.String("end", "", "sync candles opening before this time, RFC 3339 (default: now)")
	lookback := fs.Int("lookback", 0, "bars to fetch for a pair with nothing stored, 1-100000 (0: the configured --lookback)")
	dryRun := fs.Bool("dry-run", false, "print the plan (pairs, requests, weight, estimated time) and fetch nothing")
	confirm := fs.Bool("confirm", false, "run a plan past the size limit (over 1,000,000 requests or a day); see --dry-run first")
	reason := fs.String("reason", "candlekeep sync", "why the run was started, shown in sync.started (at most 200 characters)")
	timeout := fs.Duration("timeout", 0, "stop following after this long, exit 124 (the run goes on); 0: follow until the run ends or its own deadline passes")
	asJSON := fs.Bool("json", false, "print the report (or the --dry-run plan) as JSON")
	var lf logFlags
	lf.register(fs)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "candlekeep sync: "+format+"\n(see candlekeep sync --help)\n", a...)
		return exitSyncUsage
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}
	if *timeout < 0 {
		return bad("--timeout %v: want 0 (the run's own deadline) or a positive duration such as 30m", *timeout)
	}
	req := candles.SyncRequest{Symbols: symbols, Intervals: intervals, Start: *start, End: *end, Lookback: *lookback,
		Reason: *reason, DryRun: *dryRun, Confirm: *confirm}
	if err := req.Validate(); err != nil {
		var fe *candles.FieldError
		if errors.As(err, &fe) && syncFlagOf[fe.Field] != "" {
			return bad("%s: %s", syncFlagOf[fe.Field], fe.Msg)
		}
		return bad("%v", err)
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return bad("%v", err)
	}
	url := nf.c.Redacted()
	nc, err := nf.dial("candlekeep-sync", answerWait, "is candlekeep up running? (check --nats-url)")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sync: %v\n", err)
		return exitSyncUsage
	}
	defer nc.Close()
	wait := answerWait
	if *timeout > 0 {
		wait = min(wait, *timeout)
	}
	if req.DryRun {
		data, code := askSync(ctx, nc, req, wait, stderr)
		if code >= 0 {
			return code
		}
		return printPlan(data, *asJSON, stdout, stderr)
	}

	// Subscribe first: the events of the run are read from the EVENTS
	// position before the request, so none is missed however fast it runs.
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sync: %v\n", err)
		return exitSyncUsage
	}
	events, stopEvents, err := followEvents(ctx, js, wait)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep sync: read the events on %s: %v: is candlekeep up running?\n", url, err)
		return exitSyncUsage
	}
	defer stopEvents()
	data, code := askSync(ctx, nc, req, wait, stderr)
	if code >= 0 {
		return code
	}
	var acc candles.SyncAccepted
	if err := json.Unmarshal(data, &acc); err != nil || acc.RunID == "" {
		fmt.Fprintf(stderr, "candlekeep sync: candles.api.sync answered %q, not a run id (%v)\n", data, err)
		return exitSyncFailed
	}
	requested := time.Now()
	log.Debug("sync requested", "run_id", acc.RunID, "pairs", acc.Pairs)
	fmt.Fprintf(stderr, "candlekeep sync: run %s requested (%s)\n", acc.RunID, plural(acc.Pairs, "pair"))

	report, ok := follow(ctx, followOptions{
		runID: acc.RunID, events: events, timeout: *timeout, stderr: stderr, log: log,
		terminal: isTerminalWriter(stderr),
	})
	if !ok {
		fmt.Fprintf(stderr, "candlekeep sync: the events of run %s stopped arriving (connection to %s lost?); the run goes on\n", acc.RunID, url)
		followHint(stderr, acc.RunID, url, time.Since(requested))
		return exitSyncFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(report)
	} else {
		printSyncReport(stdout, report)
	}
	switch report.Outcome {
	case outcomeInterrupted:
		fmt.Fprintf(stderr, "candlekeep sync: interrupted; run %s goes on without this command.\n", acc.RunID)
		followHint(stderr, acc.RunID, url, time.Since(requested))
	case outcomeDeadline:
		fmt.Fprintf(stderr, "candlekeep sync: --timeout %v passed; run %s goes on.\n", *timeout, acc.RunID)
		followHint(stderr, acc.RunID, url, time.Since(requested))
	case outcomeTimeout:
		fmt.Fprintf(stderr, "candlekeep sync: run %s: %s; what was written stays, the next sync fetches the rest\n", acc.RunID, report.Reason)
	case outcomeFailed:
		fmt.Fprintf(stderr, "candlekeep sync: run %s failed: %s\n", acc.RunID, report.Reason)
	case outcomeSkipped:
		fmt.Fprintf(stderr, "candlekeep sync: %s\n", report.Reason)
	case outcomeCompleted:
		if n := report.Totals.Failed; n > 0 {
			fmt.Fprintf(stderr, "candlekeep sync: %d of %d pairs failed\n", n, report.Totals.Pairs)
		}
	}
	return report.ExitCode
}

const syncDescription = `Requests a sync (candles.api.sync, the same fields as flags), follows the run
on the EVENTS stream to its end and prints a report, one line per pair:
  PAIR  STATUS  NEW  REFETCHED  REPAIRED  REASON
then a TOTAL line. NEW counts candles the database did not hold before,
REFETCHED those fetched again (the last stored candle, a re-synced range),
REPAIRED the new candles that filled holes the gap audit found.

Pair statuses: ok; failed (REASON says why, e.g. the exchange's answer);
open (still running when the run's deadline or --timeout passed, or at
Ctrl-C: the run goes on); skipped (an unfinished run is already syncing the
pair, so this run left it out and that run brings it up to date; skipped
pairs do not make the command fail).

While it runs, progress goes to stderr: on a terminal one line redrawn every
second (pairs done/total, candles, candles/s, ETA), otherwise a plain line
when it changed, at most every second. --json prints the report as JSON
(its shape is in docs/messages.md, "candlekeep sync --json"). --dry-run
prints the plan instead and fetches nothing.

Exit status:
  0    every pair ok (or skipped), or a --dry-run
  1    a pair failed, or the run failed (sync.failed)
  124  the run's deadline (--sync-timeout of the fetchers) passed, or --timeout
  2    bad flags, a request the fetcher refused (400), or no answer
  130  interrupted (Ctrl-C): the run goes on; the command says how to follow it

Examples:
  candlekeep sync
  candlekeep sync --symbols BTCUSDT,ETHUSDT --intervals 1h --start 2024-01-01T00:00:00Z --dry-run
  candlekeep sync --timeout 30m --json > report.json`

// askSync sends the request to candles.api.sync. code is -1 with the reply
// body when it was accepted, or the exit code after saying what went wrong.
func askSync(ctx context.Context, nc *nats.Conn, req candles.SyncRequest, wait time.Duration, stderr io.Writer) (data []byte, code int) {
	body, _ := json.Marshal(req)
	actx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	msg, err := nc.RequestWithContext(actx, candles.SubjectAPISync, body)
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintf(stderr, "candlekeep sync: interrupted before %s answered; the request may have been queued (see `nats stream view SYNC`)\n", candles.SubjectAPISync)
		return nil, exitSyncInterrupted
	case err != nil:
		fmt.Fprintf(stderr, "candlekeep sync: no fetcher answered on %s within %v: is candlekeep up running? (%v)\n", candles.SubjectAPISync, wait, err)
		return nil, exitSyncUsage
	}
	if status := msg.Header.Get(micro.ErrorCodeHeader); status != "" {
		text := msg.Header.Get(micro.ErrorHeader)
		if status == "400" {
			flagName := ""
			for field, f := range syncFlagOf {
				if strings.Contains(text, ": "+field+": ") || strings.HasPrefix(text, field+": ") {
					flagName = f + ": "
				}
			}
			fmt.Fprintf(stderr, "candlekeep sync: %sthe fetcher refused the request: %s\n(see candlekeep sync --help)\n", flagName, text)
			return nil, exitSyncUsage
		}
		fmt.Fprintf(stderr, "candlekeep sync: the fetcher cannot start the run (%s): %s\n", status, text)
		return nil, exitSyncFailed
	}
	return msg.Data, -1
}

// printPlan prints a dry run's plan.
func printPlan(data []byte, asJSON bool, stdout, stderr io.Writer) int {
	var plan candles.SyncPlan
	if err := json.Unmarshal(data, &plan); err != nil {
		fmt.Fprintf(stderr, "candlekeep sync: the dry run's answer %q is not a plan: %v\n", data, err)
		return exitSyncFailed
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(plan)
		return exitSyncOK
	}
	ts := func(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04Z") }
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PAIR\tFROM\tUNTIL\tCANDLES\tREQUESTS\tHOLES TO REPAIR")
	for _, p := range plan.Pairs {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%d\t%d\n", p.Symbol, p.Interval, ts(p.From), ts(p.Until), thousands(p.Candles), p.Requests, len(p.Repair))
	}
	_ = tw.Flush()
	est := time.Duration(plan.EstimatedSecond * float64(time.Second)).Round(100 * time.Millisecond)
	fmt.Fprintf(stdout, "TOTAL %d pairs, %s requests, weight %s (limit %s per %s), estimated %v at %.2fs a request (dry run: nothing fetched)\n",
		len(plan.Pairs), thousands(int64(plan.Requests)), thousands(int64(plan.Weight)), thousands(int64(plan.WeightLimit)),
		plan.WeightWindow, est, plan.RequestSeconds)
	for _, n := range plan.Notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	return exitSyncOK
}

// followEvents reads EVENTS from just after its last message (an ordered
// consumer: it recovers from a lost connection without a gap). stop ends
// the reading and waits for its goroutine.
func followEvents(ctx context.Context, js jetstream.JetStream, wait time.Duration) (<-chan []byte, func(), error) {
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	stream, err := js.Stream(sctx, candles.StreamEvents)
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", candles.StreamEvents, err)
	}
	cons, err := stream.OrderedConsumer(sctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: stream.CachedInfo().State.LastSeq + 1})
	if err != nil {
		return nil, nil, fmt.Errorf("consumer on %s: %w", candles.StreamEvents, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, nil, fmt.Errorf("consume %s: %w", candles.StreamEvents, err)
	}
	out := make(chan []byte, 256)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for {
			m, err := it.Next()
			if err != nil {
				return
			}
			select {
			case out <- m.Data():
			case <-quit:
				return
			}
		}
	}()
	stop := func() {
		close(quit)
		it.Stop()
		<-done
	}
	return out, stop, nil
}

type followOptions struct {
	runID    string
	events   <-chan []byte
	timeout  time.Duration // 0: none
	stderr   io.Writer
	log      *slog.Logger
	terminal bool          // redraw one progress line instead of printing lines
	every    time.Duration // progress at most this often; default progressEvery
	now      func() time.Time
}

// follow folds the run's events into its report until the run ends,
// --timeout passes or ctx is cancelled. ok is false when the events
// stopped arriving before any of those.
func follow(ctx context.Context, o followOptions) (syncReport, bool) {
	if o.now == nil {
		o.now = time.Now
	}
	if o.every <= 0 {
		o.every = progressEvery
	}
	f := newRunFollower(o.runID)
	began := o.now()
	var deadline <-chan time.Time
	if o.timeout > 0 {
		t := time.NewTimer(o.timeout)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(o.every)
	defer tick.Stop()
	var lastWaiting string
	var last progress
	drawn := false
	clear := func() {
		if drawn {
			fmt.Fprint(o.stderr, "\r\033[K")
			drawn = false
		}
	}
	defer clear()
	sawStart, skipped := false, 0
	for !f.done {
		select {
		case data, open := <-o.events:
			if !open {
				return f.final(), false
			}
			if err := f.handle(data); err != nil {
				o.log.Warn("undecodable event skipped", "run_id", o.runID, "err", err)
			}
			if f.started && !sawStart {
				sawStart = true
				clear()
				line := fmt.Sprintf("candlekeep sync: run %s started: %s", o.runID, plural(f.progress().total, "pair"))
				if d := f.report.Deadline; !d.IsZero() {
					line += ", deadline " + d.UTC().Format(time.RFC3339)
				}
				fmt.Fprintln(o.stderr, line)
				for _, n := range f.report.Notes {
					fmt.Fprintf(o.stderr, "candlekeep sync: note: %s\n", n)
				}
			}
			if n := f.count(pairSkipped); n > skipped {
				// Runs coalesce: say so at once, and follow nothing more for them.
				skipped = n
				clear()
				fmt.Fprintf(o.stderr, "candlekeep sync: %s skipped: an unfinished run is already syncing them (%s); this run leaves them out\n",
					plural(n, "pair"), f.skippedBy)
			}
			if f.waiting != "" && f.waiting != lastWaiting {
				lastWaiting = f.waiting
				clear()
				fmt.Fprintf(o.stderr, "candlekeep sync: %s\n", f.waiting)
			}
		case <-tick.C:
			if !f.started {
				continue
			}
			p := f.progress()
			line := progressLine(p, o.now().Sub(began))
			switch {
			case o.terminal:
				fmt.Fprint(o.stderr, "\r\033[K"+line)
				drawn = true
			case p != last:
				// A plain line when the counts changed, not for a new rate alone.
				fmt.Fprintln(o.stderr, line)
			}
			last = p
		case <-deadline:
			f.stop(outcomeDeadline, exitSyncTimeout, fmt.Sprintf("still running when --timeout %v passed", o.timeout), o.now())
		case <-ctx.Done():
			f.stop(outcomeInterrupted, exitSyncInterrupted, "still running when the command was interrupted", o.now())
		}
	}
	return f.final(), true
}

// followHint says how to follow a run without this command: its events
// so far and from now on (the run began at most since ago).
func followHint(w io.Writer, runID, url string, since time.Duration) {
	minutes := int(since.Minutes()) + 1
	fmt.Fprintf(w, "Watch its progress with\n  candlekeep status --nats-url %s\n", url)
	fmt.Fprintf(w, "or follow it with the nats CLI (its events so far, then live):\n  nats --server %s sub --stream EVENTS --since %dm 'candles.events.>' | grep '\"run_id\":\"%s\"'\n",
		url, minutes, runID)
	fmt.Fprintf(w, "It ends with sync.completed (or sync.timeout); then check the data with\n  candlekeep coverage --nats-url %s\n", url)
}

// isTerminalWriter reports whether w is a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
