package writer_test

import (
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// replay asks candles.api.replay and returns the reply, or the micro error
// code and description.
func (h *harness) replay(body string) (resp candles.ReplayResponse, code, desc string) {
	h.t.Helper()
	var msg *nats.Msg
	var err error
	eventually(h.t, "the replay endpoint", func() bool {
		msg, err = h.nc.Request(candles.SubjectAPIReplay, []byte(body), 10*time.Second)
		return !errors.Is(err, nats.ErrNoResponders)
	})
	if err != nil {
		h.t.Fatal(err)
	}
	if code = msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return resp, code, msg.Header.Get(micro.ErrorHeader)
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		h.t.Fatalf("reply %q: %v", msg.Data, err)
	}
	return resp, "", ""
}

// mustReplay is replay for a request that must succeed.
func (h *harness) mustReplay(body string) candles.ReplayResponse {
	h.t.Helper()
	resp, code, desc := h.replay(body)
	if code != "" {
		h.t.Fatalf("replay %s: error %s %s", body, code, desc)
	}
	return resp
}

// exec runs a statement on a writable connection to the database file, as
// an operator's sqlite3 shell would.
func (h *harness) exec(query string, args ...any) {
	h.t.Helper()
	db, err := sql.Open("sqlite", h.dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(query, args...); err != nil {
		h.t.Fatal(err)
	}
}

// forget removes the model's rows of symbol, as DELETE does to the database.
func (h *harness) forget(symbol string) {
	for k := range h.model {
		if symbol == "" || k.Symbol == symbol {
			delete(h.model, k)
		}
	}
}

func TestReplay(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	model := func() map[rowKey]candles.Candle {
		m := make(map[rowKey]candles.Candle, len(h.model))
		for k, v := range h.model {
			m[k] = v
		}
		return m
	}

	t.Run("empty stream replies zeros", func(t *testing.T) {
		if got := h.mustReplay(`{"from_seq":1}`); got != (candles.ReplayResponse{}) {
			t.Errorf("replay = %+v, want zeros", got)
		}
	})

	first := h.publish(batch("", "BTCUSDT", 0, false, series(t0, 5, 0)), "")
	h.publish(batch("", "ETHUSDT", 0, false, series(t0, 3, 0)), "")
	h.publish(batch("", "BTCUSDT", 1, false, series(t0+3*h4, 4, 1)), "") // rewrites slots 3 and 4
	h.publish(batch("", "SOLUSDT", 0, false, series(t0, 2, 0)), "")
	h.publishRaw(candles.BatchSubject("4h", "BTCUSDT"), []byte(`{"v":1,"symbol":`), "") // cannot be applied
	time.Sleep(20 * time.Millisecond)
	mark := time.Now()
	time.Sleep(20 * time.Millisecond)
	late := h.publish(batch("", "ETHUSDT", 1, false, series(t0+3*h4, 2, 0)), "")
	h.waitApplied(late.Sequence)
	full := model()
	wm := h.watermark(candles.StreamCandles)

	t.Run("from_seq restores deleted rows exactly", func(t *testing.T) {
		h.exec(`DELETE FROM candles`)
		got := h.mustReplay(`{"from_seq":1}`)
		want := candles.ReplayResponse{FromSeq: first.Sequence, ToSeq: late.Sequence, Batches: 5, Candles: 16,
			Inserted: 14, Updated: 2, Skipped: 1}
		if got != want {
			t.Errorf("replay = %+v, want %+v", got, want)
		}
		h.assertDB()
		if w := h.watermark(candles.StreamCandles); w != wm {
			t.Errorf("watermark %d after replay, want %d (unchanged)", w, wm)
		}
	})

	t.Run("replaying again changes nothing in the end", func(t *testing.T) {
		got := h.mustReplay(`{"from_seq":1}`)
		if got.Inserted != 0 || got.Batches != 5 {
			t.Errorf("replay = %+v, want 5 batches and nothing inserted", got)
		}
		h.assertDB()
	})

	t.Run("symbols restore only those symbols", func(t *testing.T) {
		h.exec(`DELETE FROM candles`)
		got := h.mustReplay(`{"from_seq":1,"symbols":["ETHUSDT","SOLUSDT","ETHUSDT"]}`)
		want := candles.ReplayResponse{FromSeq: first.Sequence + 1, ToSeq: late.Sequence, Batches: 3, Candles: 7, Inserted: 7}
		if got != want {
			t.Errorf("replay = %+v, want %+v", got, want)
		}
		h.forget("BTCUSDT")
		h.assertDB()
		h.model = full
	})

	t.Run("since starts at the stream time", func(t *testing.T) {
		h.exec(`DELETE FROM candles`)
		got := h.mustReplay(`{"since":"` + mark.UTC().Format(time.RFC3339Nano) + `"}`)
		want := candles.ReplayResponse{FromSeq: late.Sequence, ToSeq: late.Sequence, Batches: 1, Candles: 2, Inserted: 2}
		if got != want {
			t.Errorf("replay = %+v, want %+v", got, want)
		}
		h.model = map[rowKey]candles.Candle{}
		for k, c := range full {
			if k.Symbol == "ETHUSDT" && k.Open >= t0+3*h4 {
				h.model[k] = c
			}
		}
		h.assertDB()
		h.model = full
		got = h.mustReplay(`{"since":"2020-01-01T00:00:00Z"}`)
		if got.Batches != 5 || got.Skipped != 1 || got.Inserted != 12 {
			t.Errorf("replay since 2020 = %+v, want all 5 batches back, 12 rows new", got)
		}
		h.assertDB()
	})

	t.Run("a start past the end replies zeros", func(t *testing.T) {
		for _, body := range []string{
			`{"from_seq":` + itoa(late.Sequence+1) + `}`,
			`{"since":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`,
			`{"from_seq":1,"symbols":["XRPUSDT"]}`,
		} {
			if got := h.mustReplay(body); got != (candles.ReplayResponse{}) {
				t.Errorf("replay %s = %+v, want zeros", body, got)
			}
		}
	})
	if w := h.watermark(candles.StreamCandles); w != wm {
		t.Errorf("watermark %d after the replays, want %d", w, wm)
	}
	if !strings.Contains(h.logs.String(), `level=INFO msg="replay done" from_seq=1`) {
		t.Error(`no "replay done" log at Info`)
	}
}

func TestReplayBadRequests(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	tests := []struct{ name, body, field string }{
		{"empty body", ``, "since: missing"},
		{"neither", `{"symbols":["BTCUSDT"]}`, "since: missing"},
		{"both", `{"since":"2024-01-01T00:00:00Z","from_seq":3}`, "from_seq: give either"},
		{"bad time", `{"since":"yesterday"}`, `since: "yesterday" is not an RFC 3339 time`},
		{"date only", `{"since":"2024-01-01"}`, "since:"},
		{"zero sequence", `{"from_seq":0}`, "from_seq: 0 is not"},
		{"negative sequence", `{"from_seq":-1}`, "from_seq: wrong type"},
		{"sequence as text", `{"from_seq":"5"}`, "from_seq: wrong type"},
		{"bad symbol", `{"from_seq":1,"symbols":["BTCUSDT","btc"]}`, "symbols[1]:"},
		{"symbols not a list", `{"from_seq":1,"symbols":"BTCUSDT"}`, "symbols: wrong type"},
		{"unknown field", `{"from_seq":1,"symbol":["BTCUSDT"]}`, "symbol: unknown field"},
		{"trailing data", `{"from_seq":1} {}`, "trailing data"},
		{"not an object", `[1]`, "request: must be a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, code, desc := h.replay(tt.body)
			if code != "400" || !strings.HasPrefix(desc, tt.field) && !strings.Contains(desc, tt.field) {
				t.Errorf("error %q %q, want 400 naming %q", code, desc, tt.field)
			}
		})
	}
}

// A replay running while the main consumer works through a backlog slows
// nothing down for good and disturbs none of its bookkeeping: every batch is
// applied once by the consumer (run counts), and the rows end up exact.
func TestReplayAlongsideTheConsumer(t *testing.T) {
	h := newHarness(t)
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-busy"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}, PairsTotal: 2}
	h.event(&started, "")
	const pages = 60
	var last uint64
	for p := 0; p < pages; p++ {
		for _, s := range []string{"BTCUSDT", "ETHUSDT"} {
			last = h.publish(batch("run-busy", s, p, p == pages-1, series(t0+int64(p)*100*h4, 100, 0)), "").Sequence
		}
	}
	h.start(nil)
	got := h.mustReplay(`{"from_seq":1}`)
	if got.Batches != 2*pages || got.Candles != 2*pages*100 || got.ToSeq != last {
		t.Errorf("replay = %+v, want %d batches up to stream_seq %d", got, 2*pages, last)
	}
	h.waitApplied(last)
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	h.assertDB()
	if n := h.runCandles("run-busy"); n != 2*pages*100 {
		t.Errorf("run counted %d candles, want %d (each batch once)", n, 2*pages*100)
	}
}
