package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// runDrill is `candlekeep drill`: one restore drill now.
func runDrill(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("drill", "candlekeep drill [flags]",
		"Asks the backup service (candles.api.drill) for a restore drill now: the newest\n"+
			"copy of each tier is fetched into a scratch directory, verified (sha256 and\n"+
			"integrity_check), compared with the live database's coverage and timed.\n"+
			"Production is not touched. The backup service also runs one on\n"+
			"--drill-schedule (monthly). Exit 0 when every tier restores, 1 otherwise.", stderr)
	var nf natsFlags
	nf.register(fs)
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for the drill")
	asJSON := fs.Bool("json", false, "print the service's JSON reply instead of a table")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	data, ok := backupRequest(ctx, "drill", &nf, candles.SubjectAPIDrill, *timeout, stderr)
	if !ok {
		return 1
	}
	var rep candles.DrillCompleted
	if err := json.Unmarshal(data, &rep); err != nil {
		fmt.Fprintf(stderr, "candlekeep drill: bad reply: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(append(data, '\n'))
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIER\tRESULT\tCOPY\tWATERMARK\tCANDLES\tLIVE\tBEHIND\tMISSING\tRTO\tERROR")
		for _, t := range rep.Tiers {
			result := "failed"
			if t.OK {
				result = "restores"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1fs\t%s\n", t.Tier, result, t.Copy, t.Watermark, t.Candles,
				t.LiveCandles, t.PairsBehind, t.PairsMissing, t.RTOSeconds, t.Error)
		}
		tw.Flush()
		for _, t := range rep.Tiers {
			for _, sk := range t.Skipped {
				fmt.Fprintf(stdout, "skipped %s %s: %s\n", sk.Tier, sk.Name, sk.Reason)
			}
		}
	}
	if !rep.OK {
		return 1
	}
	return 0
}
