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
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/config"
)

// runCoverage answers "is my data complete?": per pair the first and last
// stored candle, stored vs expected candles, holes, known exchange gaps and
// the last successful sync. Exit 0 when nothing is missing, 1 otherwise.
func runCoverage(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("coverage", "candlekeep coverage [flags]",
		"Asks the writer (candles.api.coverage) what the database holds, per pair: first\n"+
			"and last candle, stored/expected count, missing candles, known exchange gaps\n"+
			"and the last successful sync. Exits 0 when every pair is complete, 1 when any\n"+
			"candle is missing (known gaps do not count: the exchange has no data there).", stderr)
	natsURL := fs.String("nats-url", defaultNATSURL, "NATS server URL")
	var symbols, intervals config.List
	fs.Var(&symbols, "symbols", "only these symbols (comma-separated; default: every stored pair)")
	fs.Var(&intervals, "intervals", "only these intervals (comma-separated)")
	asJSON := fs.Bool("json", false, "print the writer's JSON reply instead of a table")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the writer")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	nc, err := nats.Connect(*natsURL, nats.Name("candlekeep-coverage"))
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep coverage: connect to %s: %v (is candlekeep running? check --nats-url)\n", *natsURL, err)
		return 1
	}
	defer nc.Close()
	req := candles.CoverageRequest{Gaps: true}
	for _, s := range symbols {
		ivs := []string(intervals)
		if len(ivs) == 0 {
			ivs = []string{fetcherDefaultInterval}
		}
		for _, iv := range ivs {
			req.Pairs = append(req.Pairs, candles.Pair{Symbol: s, Interval: iv})
		}
	}
	body, _ := json.Marshal(req)
	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
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
	if len(intervals) > 0 && len(symbols) == 0 {
		keep := cr.Pairs[:0]
		for _, p := range cr.Pairs {
			for _, iv := range intervals {
				if p.Interval == iv {
					keep = append(keep, p)
				}
			}
		}
		cr.Pairs = keep
	}
	if *asJSON {
		out, _ := json.MarshalIndent(cr, "", "  ")
		fmt.Fprintln(stdout, string(out))
	} else {
		printCoverage(stdout, cr.Pairs)
	}
	for _, p := range cr.Pairs {
		if missingCandles(p) > 0 {
			return 1
		}
	}
	return 0
}

// fetcherDefaultInterval is used for --symbols without --intervals.
const fetcherDefaultInterval = "4h"

func missingCandles(p candles.PairCoverage) int64 {
	iv, err := candles.ParseInterval(p.Interval)
	if err != nil {
		return 0
	}
	var n int64
	for _, m := range p.Missing {
		n += iv.Count(iv.Align(m.From), iv.Align(m.Until-1))
	}
	return n
}

func printCoverage(w io.Writer, pairs []candles.PairCoverage) {
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
		status := "complete"
		switch m := missingCandles(p); {
		case p.Count == 0:
			status = "empty"
		case m > 0:
			status = fmt.Sprintf("%d missing", m)
		case len(p.KnownGaps) > 0:
			status = "complete except known gaps"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.Symbol, p.Interval, ts(p.First), ts(p.Last),
			p.Count, p.Expected, spans(p.Missing), spans(p.KnownGaps), last, status)
	}
	tw.Flush()
}
