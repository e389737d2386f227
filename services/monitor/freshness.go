package monitor

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// freshnessOf is what freshness.changed says about a snapshot: the
// configured pairs and those not fresh (as the freshness check judges
// them). ok is false when the monitor cannot tell (the database's owner
// never answered): nothing is recorded then, which the audit reads as
// "no data".
func freshnessOf(s snapshot) (configured []candles.Pair, notFresh []candles.PairFreshness, ok bool) {
	if s.Coverage == nil {
		return nil, nil, false
	}
	configured = append([]candles.Pair{}, s.Pairs...)
	notFresh = []candles.PairFreshness{}
	for _, p := range s.Pairs {
		pc, found := s.Coverage[p]
		if !found || pc.Count == 0 {
			notFresh = append(notFresh, candles.PairFreshness{Symbol: p.Symbol, Interval: p.Interval, State: candles.FreshnessNoData})
			continue
		}
		iv, err := candles.ParseInterval(p.Interval)
		if err != nil {
			continue
		}
		if pc.Staleness(s.Now) > candles.StalenessLimit(iv, s.MaxStaleness) {
			notFresh = append(notFresh, candles.PairFreshness{Symbol: p.Symbol, Interval: p.Interval, State: candles.FreshnessStale})
		}
	}
	return configured, notFresh, true
}

// freshnessRecorder publishes the freshness history the SLA audit reads:
// freshness.changed at the first evaluation that can tell, whenever the
// configured set or the not-fresh pairs change, and at least every
// FreshnessHeartbeat. A publish that fails is tried again at the next
// evaluation (the state it would have recorded is not taken as sent).
type freshnessRecorder struct {
	js  jetstream.JetStream
	log *slog.Logger
	// key is the last published state, at when it was published; sent
	// says whether anything was published yet.
	key  string
	at   time.Time
	sent bool
	// failing is set while publishing fails, so the failure is logged once.
	failing bool
}

// record publishes freshness.changed for s if it is due.
func (f *freshnessRecorder) record(ctx context.Context, s snapshot) {
	configured, notFresh, ok := freshnessOf(s)
	if !ok {
		return
	}
	key := freshnessKey(configured, notFresh)
	var reason, msgID string
	switch {
	case !f.sent:
		reason = candles.FreshnessReasonStart
	case key != f.key:
		reason = candles.FreshnessReasonChanged
	case s.Now.Sub(f.at) >= candles.FreshnessHeartbeat:
		// One heartbeat per hour however many monitors run.
		reason, msgID = candles.FreshnessReasonHeartbeat, candles.FreshnessHeartbeatID(s.Now)
	default:
		return
	}
	ev := &candles.FreshnessChanged{EventHeader: candles.NewHeader(candles.KindFreshnessChanged, ""),
		Configured: configured, NotFresh: notFresh, Fresh: len(configured) - len(notFresh), Reason: reason}
	if err := candles.PublishEvent(ctx, f.js, ev, msgID, s.Now); err != nil {
		if !f.failing && ctx.Err() == nil {
			f.log.Warn("cannot record the freshness history (the SLA audit reads it); trying again at the next evaluation", "err", err)
		}
		f.failing = true
		return
	}
	if f.failing {
		f.log.Info("recording the freshness history again")
	}
	f.key, f.at, f.sent, f.failing = key, s.Now, true, false
	if reason == candles.FreshnessReasonChanged {
		f.log.Info("freshness changed", "fresh", ev.Fresh, "configured", len(configured), "not_fresh", len(notFresh))
	}
}

// freshnessKey identifies a state: the configured pairs and each
// not-fresh pair with its state.
func freshnessKey(configured []candles.Pair, notFresh []candles.PairFreshness) string {
	var b strings.Builder
	names := make([]string, 0, len(configured))
	for _, p := range configured {
		names = append(names, p.String())
	}
	slices.Sort(names)
	b.WriteString(strings.Join(names, ","))
	b.WriteString("|")
	bad := make([]string, 0, len(notFresh))
	for _, p := range notFresh {
		bad = append(bad, p.Symbol+"/"+p.Interval+"="+p.State)
	}
	slices.Sort(bad)
	b.WriteString(strings.Join(bad, ","))
	return b.String()
}

// checkEventsRetention warns when EVENTS keeps less than the monthly SLA
// audit needs. It only reads; the stream's owner sets the retention
// (events-max-age).
func checkEventsRetention(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	stream, err := js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		log.Debug("read the EVENTS retention", "err", err)
		return
	}
	if age := stream.CachedInfo().Config.MaxAge; age > 0 && age < candles.MinEventsMaxAge {
		log.Warn("EVENTS keeps events for less than the monthly SLA audit needs",
			"max_age", age.String(), "needed", candles.MinEventsMaxAge.String(),
			"fix", "candlekeep config set events-max-age="+candles.DefaultEventsMaxAge.String())
	}
}
