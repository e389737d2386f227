package fetcher

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// catchUp starts a sync at start-up when any configured pair is empty or
// older than one interval, because the server skips schedule ticks missed
// while it was down. Fetchers starting together publish one request: its
// message id is fixed per minute.
func (f *Fetcher) catchUp(ctx context.Context) {
	pairs := f.settings().Pairs()
	var stored map[candles.Pair]candles.PairCoverage
	for {
		var err error
		if stored, err = f.coverage(ctx, pairs, false); err == nil {
			break
		}
		f.log.Debug("catch-up waits for the writer", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	var now time.Time
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		var err error
		if now, err = f.clock.exchangeNow(ctx, f); err == nil {
			break
		}
		f.log.Warn("catch-up waits for the exchange: cannot read its clock", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	stale := 0
	for _, p := range pairs {
		iv := candles.MustInterval(p.Interval)
		c, ok := stored[p]
		// The newest closed candle opened one interval before the open one.
		if !ok || c.Count == 0 || c.Last < iv.Add(iv.Align(now.UnixMilli()), -1) {
			stale++
		}
	}
	if stale == 0 {
		f.log.Info("stored data is current; no catch-up sync needed", "pairs", len(pairs))
		return
	}
	body, _ := json.Marshal(candles.SyncRequest{Reason: "catch-up at start-up"})
	id := "catchup:" + now.UTC().Format("20060102T1504")
	if _, err := f.js.Publish(ctx, candles.SubjectSyncRequest, body, jetstream.WithMsgID(id)); err != nil {
		f.log.Warn("catch-up sync not requested", "err", err)
		return
	}
	f.log.Info("catch-up sync requested", "stale_pairs", stale, "pairs", len(pairs))
}
