package cluster_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/testlog"
)

func setup(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(t.Context(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return js
}

func stored(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	v, _, err := cluster.Load(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func events(t *testing.T, js jetstream.JetStream, kind string) []map[string]any {
	t.Helper()
	s, err := js.Stream(t.Context(), candles.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil || m.Subject != candles.EventSubject(kind) {
			continue
		}
		var ev map[string]any
		_ = json.Unmarshal(m.Data, &ev)
		out = append(out, ev)
	}
	return out
}

func TestJoinSeedsOnlyWhatTheOperatorSaid(t *testing.T) {
	js := setup(t)
	seed := cluster.Defaults()
	seed.BinanceURL = "http://127.0.0.1:9100"
	// A process started with only --nats-url and --binance-url.
	c, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: seed, Explicit: map[string]bool{"binance-url": true}})
	if err != nil {
		t.Fatal(err)
	}
	if got := stored(t, js); len(got) != 1 || got["binance-url"] != "http://127.0.0.1:9100" {
		t.Fatalf("stored = %v; want only binance-url", got)
	}
	if cur := c.Current(); cur.SyncSchedule != cluster.DefaultSyncSchedule || len(cur.Symbols) != 60 {
		t.Errorf("missing keys should read as defaults: %+v", cur)
	}
	// up is authoritative: its explicit flags win, its defaults fill the rest.
	up := cluster.Defaults()
	up.SyncSchedule, up.Symbols, up.Intervals = "@every 15s", []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}, []string{"1h"}
	if _, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: up, Authoritative: true, By: "up",
		Explicit: map[string]bool{"sync-schedule": true, "symbols": true, "intervals": true}}); err != nil {
		t.Fatal(err)
	}
	got := stored(t, js)
	if len(got) != len(cluster.Keys()) || got["sync-schedule"] != "@every 15s" || got["symbols"] != "BTCUSDT,ETHUSDT,BNBUSDT" ||
		got["intervals"] != "1h" || got["binance-url"] != "http://127.0.0.1:9100" {
		t.Fatalf("after up: %v", got)
	}
	// A later fetcher with its defaults changes nothing, and follows.
	f, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: cluster.Defaults(), Explicit: map[string]bool{}})
	if err != nil {
		t.Fatal(err)
	}
	if again := stored(t, js); !maps.Equal(again, got) {
		t.Errorf("a joining fetcher changed the configuration:\n%v\n%v", got, again)
	}
	if cur := f.Current(); cur.SyncSchedule != "@every 15s" || !slices.Equal(cur.Symbols, []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"}) ||
		cur.BinanceURL != "http://127.0.0.1:9100" {
		t.Errorf("follower settings = %+v", cur)
	}
	if n := len(events(t, js, cluster.KindConfigChanged)); n != 0 {
		// The first writes were seeds (creates), not changes.
		t.Errorf("%d config.changed events for seeding; want 0", n)
	}
}

func TestExplicitFlagsOfAFollowerDoNotWin(t *testing.T) {
	js := setup(t)
	up := cluster.Defaults()
	up.SyncSchedule = "@every 15s"
	if _, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: up, Authoritative: true, Explicit: map[string]bool{"sync-schedule": true}}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	seed := cluster.Defaults()
	seed.SyncSchedule = "0 0 1 * * *"
	f, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: seed, Explicit: map[string]bool{"sync-schedule": true},
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if f.Current().SyncSchedule != "@every 15s" || stored(t, js)["sync-schedule"] != "@every 15s" {
		t.Errorf("follower's flag won: %q / %q", f.Current().SyncSchedule, stored(t, js)["sync-schedule"])
	}
	if !strings.Contains(logs.String(), `"flag":"--sync-schedule"`) || !strings.Contains(logs.String(), `candlekeep config set sync-schedule=`) {
		t.Errorf("no clear warning about the disagreement: %s", logs.String())
	}
	// up again with another explicit value: it wins and says so.
	up.SyncSchedule = "@every 30s"
	if _, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: up, Authoritative: true, By: "up", Explicit: map[string]bool{"sync-schedule": true}}); err != nil {
		t.Fatal(err)
	}
	ch := events(t, js, cluster.KindConfigChanged)
	if len(ch) != 1 || ch[0]["key"] != "sync-schedule" || ch[0]["value"] != "@every 30s" || ch[0]["previous"] != "@every 15s" || ch[0]["by"] != "up" {
		t.Errorf("config.changed = %v", ch)
	}
}

func TestWatchFollowsChangesAndRefusesBadValues(t *testing.T) {
	js := setup(t)
	c, err := cluster.Join(t.Context(), js, cluster.JoinOptions{Seed: cluster.Defaults(), Authoritative: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	c.OnChange(func(key string, s cluster.Settings) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, key+"="+s.SyncSchedule)
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	kv, err := js.KeyValue(t.Context(), cluster.ConfigBucket)
	if err != nil {
		t.Fatal(err)
	}
	// As an operator would with `nats kv put`.
	if _, err := kv.Put(t.Context(), "sync-schedule", []byte("@every 10s")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the change to be followed", func() bool { return c.Current().SyncSchedule == "@every 10s" })
	waitFor(t, "OnChange to see the change", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(seen, []string{"sync-schedule=@every 10s"})
	})
	rev, err := kv.Put(t.Context(), "sync-schedule", []byte("every ten seconds"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "config.invalid", func() bool { return len(events(t, js, cluster.KindConfigInvalid)) == 1 })
	inv := events(t, js, cluster.KindConfigInvalid)[0]
	if inv["key"] != "sync-schedule" || inv["using"] != "@every 10s" || inv["revision"] != float64(rev) {
		t.Errorf("config.invalid = %v", inv)
	}
	if got := c.Current().SyncSchedule; got != "@every 10s" {
		t.Errorf("an invalid value replaced the good one: %q", got)
	}
	if n := len(events(t, js, cluster.KindConfigChanged)); n != 1 {
		t.Errorf("%d config.changed events; want 1", n)
	}
}

func TestSetValidatesBeforeWriting(t *testing.T) {
	js := setup(t)
	for _, tc := range []struct{ key, value, want string }{
		{"intervals", "7m", `--intervals "7m": "7m" is not an interval`},
		{"symbols", "btc", `"btc" is not a symbol`},
		{"sync-schedule", "@every 100ms", "at least 1s"},
		{"lookback", "0", "want 1 to"},
		{"nope", "1", `unknown setting "nope"`},
	} {
		_, err := cluster.Set(t.Context(), js, tc.key, tc.value, "test", time.Now())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Set(%s=%s) = %v; want an error containing %q", tc.key, tc.value, err, tc.want)
		}
	}
	if got := stored(t, js); len(got) != 0 {
		t.Errorf("refused values were stored: %v", got)
	}
	if _, err := cluster.Set(t.Context(), js, "intervals", "1h, 4h", "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := stored(t, js)["intervals"]; got != "1h,4h" {
		t.Errorf("intervals stored as %q; want the normal form 1h,4h", got)
	}
}

// syncBuf is a log sink the test reads while it is written.
type syncBuf = testlog.Buffer
