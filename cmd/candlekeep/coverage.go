package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/config"
)

// runCoverage answers "is my data complete?": per pair the first and last
// stored candle, stored vs expected candles, holes, known exchange gaps, the
// last successful sync and whether the newest candle is fresh. Missing counts
// from where the pair's history should start (the earliest start a request
// asked for), not from the first stored candle. Exit 0 only when every pair
// asked about is complete and fresh and no full audit is due, 1 otherwise
// (an empty pair, a pair never synced, missing candles, stale data, a
// replaced stream not audited yet), 2 for bad flags.
func runCoverage(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("coverage", "candlekeep coverage [flags]",
		"Asks the writer (candles.api.coverage) what the database holds, per pair: first\n"+
			"and last candle, stored/expected count, missing candles, known exchange gaps,\n"+
			"the last successful sync and a status. Without --symbols it checks the\n"+
			"configured pair set (candlekeep config get symbols intervals).\n\n"+
			"Exit status: 0 when every pair is complete and fresh; 1 when any pair is\n"+
			"empty, never synced, missing candles (known gaps do not count: the exchange\n"+
			"has no data there) or stale (its newest candle closed longer ago than\n"+
			"--max-staleness, or one interval plus 2h for intervals longer than that),\n"+
			"or when a full gap audit is due (a stream was replaced: stream.replaced);\n"+
			"2 for bad flags.", stderr)
	var nf natsFlags
	nf.register(fs)
	var symbols, intervals config.List
	fs.Var(&symbols, "symbols", "only these symbols (comma-separated; default: the configured symbols)")
	fs.Var(&intervals, "intervals", "only these intervals (comma-separated; default: the configured intervals)")
	asJSON := fs.Bool("json", false, "print the writer's JSON reply instead of a table")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the writer")
	maxStale := fs.Duration("max-staleness", candles.DefaultMaxStaleness, "a pair whose newest candle closed longer ago than this is stale")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "candlekeep coverage: "+format+"\n(see candlekeep coverage --help)\n", a...)
		return 2
	}
	for _, sym := range symbols {
		if !candles.ValidSymbol(sym) {
			return bad("--symbols: %q is not a symbol (2-20 of A-Z and 0-9, such as BTCUSDT)", sym)
		}
	}
	for _, iv := range intervals {
		if _, err := candles.ParseInterval(iv); err != nil {
			return bad("--intervals: %q is not an interval; want one of %s", iv, strings.Join(candles.IntervalNames(), ","))
		}
	}
	if *maxStale <= 0 {
		return bad("--max-staleness %v: want a positive duration such as 26h", *maxStale)
	}
	nc, err := nf.dial("candlekeep-coverage", dialTimeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep coverage: %v\n", err)
		return 1
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if len(symbols) == 0 || len(intervals) == 0 {
		configured, err := configuredPairs(rctx, nc)
		if err != nil {
			fmt.Fprintf(stderr, "candlekeep coverage: %v\n", err)
			return 1
		}
		if len(symbols) == 0 {
			symbols = configured.Symbols
		}
		if len(intervals) == 0 {
			intervals = configured.Intervals
		}
	}
	req := candles.CoverageRequest{Gaps: true}
	for _, s := range symbols {
		for _, iv := range intervals {
			req.Pairs = append(req.Pairs, candles.Pair{Symbol: s, Interval: iv})
		}
	}
	body, _ := json.Marshal(req)
	msg, err := nc.RequestWithContext(rctx, candles.SubjectAPICoverage, body)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep coverage: ask the writer on %s: %v (is a writer running?)\n", candles.SubjectAPICoverage, err)
		return 1
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		fmt.Fprintf(stderr, "candlekeep coverage: the writer answered %s: %s\n", code, msg.Header.Get(micro.ErrorHeader))
		return 1
	}
	var cr candles.CoverageResponse
	if err := json.Unmarshal(msg.Data, &cr); err != nil {
		fmt.Fprintf(stderr, "candlekeep coverage: bad reply: %v\n", err)
		return 1
	}
	now := time.Now()
	if *asJSON {
		out, _ := json.MarshalIndent(cr, "", "  ")
		fmt.Fprintln(stdout, string(out))
	} else {
		printCoverage(stdout, cr.Pairs, now, *maxStale)
	}
	problems := 0
	for _, p := range cr.Pairs {
		if _, ok := p.Status(now, *maxStale); !ok {
			problems++
		}
	}
	if problems > 0 {
		fmt.Fprintf(stderr, "candlekeep coverage: %d of %d pairs not complete and fresh\n", problems, len(cr.Pairs))
	}
	if !cr.FullAuditDue.IsZero() {
		// Batches the database never applied went with a replaced stream;
		// what they held is unknown until a sync audits every pair.
		fmt.Fprintf(stderr, "candlekeep coverage: a full gap audit is due since %s (a stream was replaced; "+
			"see stream.replaced in docs/operations.md): run a sync, e.g. nats pub candles.sync.request '{}'\n",
			cr.FullAuditDue.UTC().Format(time.RFC3339))
		return 1
	}
	if problems > 0 {
		return 1
	}
	return 0
}

// configuredPairs reads the pair set from the cluster configuration.
func configuredPairs(ctx context.Context, nc *nats.Conn) (cluster.Settings, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return cluster.Settings{}, err
	}
	values, _, err := cluster.Load(ctx, js)
	if err != nil {
		return cluster.Settings{}, fmt.Errorf("read the configured pairs: %w", err)
	}
	s := cluster.Defaults()
	for _, name := range []string{"symbols", "intervals"} {
		if v, ok := values[name]; ok {
			k, _ := cluster.KeyByName(name)
			if err := k.Set(&s, v); err != nil {
				return cluster.Settings{}, fmt.Errorf("the configured %s: %w", name, err)
			}
		}
	}
	return s, nil
}

func printCoverage(w io.Writer, pairs []candles.PairCoverage, now time.Time, maxStale time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PAIR\tFIRST\tLAST\tSTORED/EXPECTED\tMISSING\tKNOWN GAPS\tLAST SYNC\tSTATUS")
	ts := func(ms int64) string {
		if ms == 0 {
			return "-"
		}
		return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04Z")
	}
	spans := func(rs []candles.Range) string {
		if len(rs) == 0 {
			return "-"
		}
		var parts []string
		for _, r := range rs {
			parts = append(parts, ts(r.From)+".."+ts(r.Until))
		}
		return strings.Join(parts, ",")
	}
	for _, p := range pairs {
		last := "-"
		if !p.LastSync.IsZero() {
			last = p.LastSync.UTC().Format(time.RFC3339)
		}
		status, _ := p.Status(now, maxStale)
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.Symbol, p.Interval, ts(p.First), ts(p.Last),
			p.Count, p.Expected, spans(p.Missing), spans(p.KnownGaps), last, status)
	}
	tw.Flush()
}
