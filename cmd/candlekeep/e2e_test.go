package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

var (
	rangeStart = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	rangeEnd   = rangeStart.AddDate(0, 0, 90)
)

// The core promise: 60 symbols x 4h over 90 days land in SQLite exactly as the
// exchange serves them, sync.completed says 60/60, and running the same
// request again changes nothing.
func TestSyncSixtySymbolsMatchesTheExchangeExactly(t *testing.T) {
	s, url := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	natsURL := startUp(t, dataDir, testFetcherOptions(url))
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	body := fmt.Sprintf(`{"start":%q,"end":%q,"reason":"e2e"}`, rangeStart.Format(time.RFC3339), rangeEnd.Format(time.RFC3339))

	acc := requestSync(t, nc, body)
	if acc.Pairs != 60 {
		t.Fatalf("accepted %d pairs, want 60", acc.Pairs)
	}
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	want := truth(s, candles.DefaultSymbols(), "4h", rangeStart, rangeEnd)
	if len(want) != 60 || count(want) != 60*90*6 {
		t.Fatalf("truth has %d pairs, %d candles; the simulator's listing dates moved?", len(want), count(want))
	}
	if done.PairsTotal != 60 || done.PairsOK != 60 || done.PairsFailed != 0 || done.Candles != int64(count(want)) {
		t.Fatalf("sync.completed = %+v, want 60/60/0 with %d candles", done, count(want))
	}
	if done.StartedAt.IsZero() || done.FinishedAt.Before(done.StartedAt) {
		t.Fatalf("sync.completed times: started %v finished %v", done.StartedAt, done.FinishedAt)
	}
	dbPath := filepath.Join(dataDir, databaseFile)
	first := readDB(t, dbPath)
	assertSame(t, first, want)

	again := requestSync(t, nc, body)
	var done2 candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, again.RunID, 2*time.Minute, &done2)
	if done2.PairsOK != 60 || done2.PairsFailed != 0 {
		t.Fatalf("second run: %+v", done2)
	}
	if second := readDB(t, dbPath); !reflect.DeepEqual(first, second) {
		t.Fatal("the same request again changed the database")
	}
	if n := len(ev.of(candles.KindSyncCompleted, acc.RunID)); n != 1 {
		t.Fatalf("%d sync.completed events for one run, want 1", n)
	}
}

// Bad input of every kind gets a clear error naming the problem and loses
// nothing; the services keep running and a good request afterwards is exact.
func TestBadInputIsRefusedClearlyAndLosesNothing(t *testing.T) {
	s, url := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	natsURL := startUp(t, dataDir, testFetcherOptions(url))
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)

	t.Run("api refuses bad requests with a 400 naming the field", func(t *testing.T) {
		tests := []struct{ name, body, want string }{
			{"malformed JSON", `{"symbols":["BTCUSDT"`, "truncated"},
			{"not JSON", `sync please`, "malformed JSON"},
			{"unknown field", `{"symbol":"BTCUSDT"}`, `symbol: unknown field`},
			{"unknown interval", `{"intervals":["7m"]}`, `intervals: unknown interval "7m"`},
			{"start after end", `{"start":"2024-02-01T00:00:00Z","end":"2024-01-01T00:00:00Z"}`, "start: start 2024-02-01T00:00:00Z is not before end"},
			{"empty symbol list", `{"symbols":[]}`, "symbols: empty list"},
			{"oversized symbol list", `{"symbols":[` + strings.Repeat(`"BTCUSDT",`, candles.MaxSymbols) + `"ETHUSDT"]}`, "symbols: 1001 symbols, at most 1000"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				msg, err := nc.Request(candles.SubjectAPISync, []byte(tt.body), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if code := msg.Header.Get("Nats-Service-Error-Code"); code != "400" {
					t.Fatalf("code %q, want 400 (reply %q)", code, msg.Data)
				}
				if got := msg.Header.Get("Nats-Service-Error"); !strings.Contains(got, tt.want) {
					t.Fatalf("error %q does not say %q", got, tt.want)
				}
			})
		}
	})

	t.Run("a bad request on the stream ends as sync.failed", func(t *testing.T) {
		js, _ := nc.JetStream()
		ack, err := js.Publish(candles.SubjectSyncRequest, []byte(`{"intervals":["4h"],"lookback":"ten"}`))
		if err != nil {
			t.Fatal(err)
		}
		var failed candles.SyncFailed
		ev.wait(t, candles.KindSyncFailed, "", 10*time.Second, &failed)
		if !strings.Contains(failed.Reason, "lookback") || !strings.HasSuffix(failed.RunID, fmt.Sprintf("-s%d", ack.Sequence)) {
			t.Fatalf("sync.failed = %+v", failed)
		}
	})

	t.Run("unknown symbol fails its pair only; bad pages are rejected whole and retried", func(t *testing.T) {
		s.AddFault(sim.Fault{Kind: sim.FaultTruncate, Path: "/api/v3/klines", Symbol: "ETHUSDT", Count: 1})
		s.AddFault(sim.Fault{Kind: sim.FaultMalformed, Path: "/api/v3/klines", Symbol: "BNBUSDT", Count: 1})
		s.AddFault(sim.Fault{Kind: sim.FaultInvalid, Path: "/api/v3/klines", Symbol: "SOLUSDT", Count: 1})
		s.AddFault(sim.Fault{Kind: sim.FaultStatus, Status: 503, Path: "/api/v3/klines", Symbol: "XRPUSDT", Count: 2})
		good := []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"}
		body, _ := json.Marshal(map[string]any{"symbols": append(append([]string{}, good...), "NOPEUSDT"), "intervals": []string{"1h"},
			"start": rangeStart.Format(time.RFC3339), "end": rangeEnd.Format(time.RFC3339)})
		acc := requestSync(t, nc, string(body))
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
		if done.PairsTotal != 6 || done.PairsOK != 5 || done.PairsFailed != 1 {
			t.Fatalf("sync.completed = %+v, want 5 ok and 1 failed", done)
		}
		var pf candles.PairFailed
		ev.wait(t, candles.KindPairFailed, acc.RunID, time.Second, &pf)
		if pf.Symbol != "NOPEUSDT" || !strings.Contains(pf.Reason, "-1121") || !strings.Contains(pf.Reason, "Invalid symbol") {
			t.Fatalf("pair.failed = %+v, want NOPEUSDT with -1121 Invalid symbol", pf)
		}
		rejected := ev.of(candles.KindBatchRejected, acc.RunID)
		bySymbol := map[string]int{}
		for _, raw := range rejected {
			var br candles.BatchRejected
			_ = json.Unmarshal(raw, &br)
			if br.Source != "exchange" || br.Reason == "" {
				t.Fatalf("batch.rejected = %s", raw)
			}
			bySymbol[br.Symbol]++
		}
		if bySymbol["ETHUSDT"] != 1 || bySymbol["BNBUSDT"] != 1 || bySymbol["SOLUSDT"] != 1 || len(bySymbol) != 3 {
			t.Fatalf("batch.rejected per symbol = %v, want one each for ETH, BNB, SOL", bySymbol)
		}
		assertSame(t, readDB(t, filepath.Join(dataDir, databaseFile)), truth(s, good, "1h", rangeStart, rangeEnd))
	})

	t.Run("a hand-published bad batch is rejected by the writer, which keeps going", func(t *testing.T) {
		js, _ := nc.JetStream()
		if _, err := js.Publish(candles.BatchSubject("1h", "BTCUSDT"), []byte(`{"v":1,"symbol":"BTCUSDT","interval":"1h","candles":[[1,2]]}`)); err != nil {
			t.Fatal(err)
		}
		var br candles.BatchRejected
		ev.waitMatch(t, candles.KindBatchRejected, 10*time.Second, &br, func() bool { return br.Source == "stream" })
		if br.StreamSeq == 0 || !strings.Contains(br.Reason, "candle") {
			t.Fatalf("batch.rejected from the writer: %+v", br)
		}
		acc := requestSync(t, nc, `{"symbols":["ADAUSDT"],"intervals":["1d"],"start":"2024-01-01T00:00:00Z","end":"2024-02-01T00:00:00Z"}`)
		var done candles.SyncCompleted
		ev.wait(t, candles.KindSyncCompleted, acc.RunID, 30*time.Second, &done)
		if done.PairsOK != 1 || done.Candles != 31 {
			t.Fatalf("after the bad batch: %+v", done)
		}
	})
}
