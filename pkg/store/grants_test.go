package store_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// RunGrant tells where a run stands and what it allows each pair: the
// token hash and ranges sync.started announced, kept from the first
// registration (a second sync.started with the same run_id changes
// nothing), for listed pairs only.
func TestRunGrant(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempDB(t))
	btc := candles.Pair{Symbol: "BTCUSDT", Interval: "4h"}
	g := candles.JobGrant{Symbol: "BTCUSDT", Interval: "4h", From: 100, Until: 200,
		Repair: []candles.Range{{From: 10, Until: 20}}, TokenSHA256: candles.TokenSHA256("secret")}
	if got, err := s.RunGrant(ctx, "r1", "BTCUSDT", "4h"); err != nil || got.Run != store.RunUnknown {
		t.Fatalf("RunGrant before registration = %+v, %v; want unknown", got, err)
	}
	if _, err := s.RegisterRun(ctx, "r1", []candles.Pair{btc}, epoch, "", time.Time{}, []candles.JobGrant{g,
		{Symbol: "ETHUSDT", Interval: "4h", From: 0, Until: 1e15, TokenSHA256: candles.TokenSHA256("other")}}); err != nil {
		t.Fatal(err)
	}
	forged := g
	forged.TokenSHA256, forged.Until = candles.TokenSHA256("forged"), 1e15
	if _, err := s.RegisterRun(ctx, "r1", []candles.Pair{btc}, epoch, "", time.Time{}, []candles.JobGrant{forged}); err != nil {
		t.Fatal(err)
	}
	want := store.Grant{Run: store.RunOpen, Listed: true, TokenSHA256: g.TokenSHA256,
		Ranges: []candles.Range{{From: 10, Until: 20}, {From: 100, Until: 200}}}
	if got, err := s.RunGrant(ctx, "r1", "BTCUSDT", "4h"); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("RunGrant = %+v, %v; want %+v", got, err, want)
	}
	if got, err := s.RunGrant(ctx, "r1", "ETHUSDT", "4h"); err != nil || got.Run != store.RunOpen || got.Listed || got.TokenSHA256 != "" {
		t.Errorf("RunGrant of a pair not in the run = %+v, %v; want open, not listed, no hash", got, err)
	}
	if _, err := s.ApplyBatch(ctx, "CANDLES", 1, candles.Batch{RunID: "r1", Symbol: "BTCUSDT", Interval: "4h", Final: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.RunGrant(ctx, "r1", "BTCUSDT", "4h"); err != nil || got.Run != store.RunFinished {
		t.Errorf("RunGrant after the run completed = %+v, %v; want finished", got, err)
	}
	// A new database takes no token-less batch.
	if c, err := s.LegacyCutoff(ctx, "CANDLES", "id", 42); err != nil || c != 0 {
		t.Errorf("LegacyCutoff of a new database = %d, %v; want 0", c, err)
	}
}
