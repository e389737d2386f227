package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// consumerDrill reads the drill schedule's ticks from SYNC.
const consumerDrill = "backup-drill"

// DrillReport is the outcome of a drill: the reply of candles.api.drill
// and the content of drill.completed / drill.failed.
type DrillReport = candles.DrillCompleted

// Drill proves that each tier restores: for every tier it fetches the
// newest copy that verifies (sha256 of the object and of the database)
// into a scratch directory, runs integrity_check on it, compares its
// coverage with the live database's and measures the time this took (the
// RTO of a restore from that tier, before the replay). Production is not
// touched: the live database is only read, the writer is not paused, and
// the scratch copy is removed. It publishes drill.completed when every
// tier restored, drill.failed otherwise.
func (s *Service) Drill(ctx context.Context, reason string) DrillReport {
	s.run.Lock()
	defer s.run.Unlock()
	began := s.o.Now()
	rep := DrillReport{Recovery: candles.Recovery{StartedAt: began.UTC()}, OK: true}
	live := s.liveCoverage(ctx)
	var problems []string
	for _, tc := range s.o.Tiers {
		dt := s.drillTier(ctx, tc.Tier, live)
		if !dt.OK {
			rep.OK = false
			problems = append(problems, dt.Tier+": "+dt.Error)
		}
		if rep.Tier == "" && dt.OK {
			rep.Tier, rep.Backup = dt.Tier, dt.Copy
		}
		rep.Tiers = append(rep.Tiers, dt)
	}
	rep.FinishedAt = s.o.Now().UTC()
	rep.RTOSeconds = rep.FinishedAt.Sub(rep.StartedAt).Seconds()
	kind := candles.KindDrillCompleted
	if !rep.OK {
		kind = candles.KindDrillFailed
		rep.Reason = strings.Join(problems, "; ")
		s.log.Error("restore drill failed", "trigger", reason, "problems", rep.Reason)
	} else {
		s.log.Info("restore drill passed: every tier restores", "trigger", reason, "tiers", len(rep.Tiers), "seconds", rep.RTOSeconds)
	}
	rep.EventHeader = candles.NewHeader(kind, "")
	ev := rep
	s.publish(ctx, &ev)
	return rep
}

// livePairs is the live database's coverage: newest candle per pair.
type livePairs struct {
	candles int64
	last    map[candles.Pair]int64
	err     error
}

func (s *Service) liveCoverage(ctx context.Context) livePairs {
	lp := livePairs{last: map[candles.Pair]int64{}}
	st, err := store.OpenReadOnly(ctx, s.o.Database)
	if err != nil {
		lp.err = err
		return lp
	}
	defer st.Close()
	cov, err := st.Coverage(ctx, candles.CoverageRequest{})
	if err != nil {
		lp.err = err
		return lp
	}
	for _, c := range cov {
		lp.last[candles.Pair{Symbol: c.Symbol, Interval: c.Interval}] = c.Last
		lp.candles += c.Count
	}
	return lp
}

// drillTier restores the newest verifying copy of tier into the scratch
// directory and compares it with live.
func (s *Service) drillTier(ctx context.Context, tier Tier, live livePairs) candles.DrillTier {
	dt := candles.DrillTier{Tier: tier.Name(), LiveCandles: live.candles}
	began := time.Now()
	cands, skipped, err := s.candidates(ctx, tier.Name(), time.Time{})
	dt.Skipped = skipped
	if err != nil {
		dt.Error = err.Error()
		return dt
	}
	if err := os.MkdirAll(s.o.ScratchDir, 0o700); err != nil {
		dt.Error = "scratch directory: " + err.Error()
		return dt
	}
	path := filepath.Join(s.o.ScratchDir, "drill-"+tier.Name()+".db")
	defer removeDB(path)
	chosen, bad := s.prepare(ctx, cands, path, func(sk candles.SkippedCopy) {
		s.log.Warn("drill: copy does not verify", "tier", sk.Tier, "copy", sk.Name, "problem", sk.Reason)
	})
	dt.Skipped = append(dt.Skipped, bad...)
	if chosen == nil {
		dt.Error = fmt.Sprintf("no copy verifies (%d skipped)", len(dt.Skipped))
		return dt
	}
	dt.Copy, dt.Watermark = chosen.c.Name, chosen.c.Manifest.Watermark
	st, err := store.OpenReadOnly(ctx, path)
	if err != nil {
		dt.Error = "open the restored copy: " + err.Error()
		return dt
	}
	cov, err := st.Coverage(ctx, candles.CoverageRequest{})
	st.Close()
	if err != nil {
		dt.Error = "coverage of the restored copy: " + err.Error()
		return dt
	}
	dt.RTOSeconds = time.Since(began).Seconds()
	have := map[candles.Pair]int64{}
	for _, c := range cov {
		dt.Candles += c.Count
		have[candles.Pair{Symbol: c.Symbol, Interval: c.Interval}] = c.Last
	}
	if dt.Candles != chosen.c.Manifest.Candles {
		dt.Error = fmt.Sprintf("the restored copy holds %d candles, its manifest says %d", dt.Candles, chosen.c.Manifest.Candles)
		return dt
	}
	for p, last := range live.last {
		got, ok := have[p]
		switch {
		case !ok:
			dt.PairsMissing++
		case got < last:
			dt.PairsBehind++
		}
	}
	dt.OK = true
	return dt
}

func (s *Service) handleDrill(ctx context.Context, req micro.Request) {
	rep := s.Drill(ctx, TriggerRequest)
	if err := req.RespondJSON(rep); err != nil {
		s.log.Warn("answer drill request", "err", err)
	}
}
