package writer_test

import (
	"database/sql"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// grant plans one job of a run and returns its grant and token.
func grant(t *testing.T, symbol string, from, until int64) (candles.JobGrant, string) {
	t.Helper()
	token, err := candles.NewJobToken()
	if err != nil {
		t.Fatal(err)
	}
	return candles.JobGrant{Symbol: symbol, Interval: "4h", From: from, Until: until, TokenSHA256: candles.TokenSHA256(token)}, token
}

// signed is b with the job token.
func signed(b candles.Batch, token string) candles.Batch {
	b.Token = token
	return b
}

// forge publishes b as a client outside the pipeline would; it never goes
// into the model, and returns its stream sequence.
func (h *harness) forge(b candles.Batch) uint64 {
	h.t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.publishRaw(candles.BatchSubject(b.Interval, b.Symbol), data, "").Sequence
}

// rejections maps stream_seq to the reason of every batch.rejected event.
func (h *harness) rejections() map[uint64]string {
	h.t.Helper()
	out := map[uint64]string{}
	for _, data := range h.events(candles.KindBatchRejected) {
		var ev candles.BatchRejected
		if err := json.Unmarshal(data, &ev); err != nil {
			h.t.Fatal(err)
		}
		out[ev.StreamSeq] = ev.Reason
	}
	return out
}

func (h *harness) runOpen(runID string) bool {
	h.t.Helper()
	var finished sql.NullString
	var status int
	h.query(func(db *sql.DB) error {
		if err := db.QueryRow(`SELECT finished_at FROM runs WHERE run_id = ?`, runID).Scan(&finished); err != nil {
			return err
		}
		return db.QueryRow(`SELECT COUNT(*) FROM run_pairs WHERE run_id = ? AND status != 'pending'`, runID).Scan(&status)
	})
	return !finished.Valid && status == 0
}

// The writer applies a batch only when the pipeline planned it: every
// forgery of issue 10 (an overwrite of a stored candle, an unlisted symbol,
// a candle three days ahead, an empty final closing a live run) and every
// other batch outside a job is rejected with batch.rejected naming why,
// the stored rows stay as they were and the run completes only with its
// real pages. Everything is published before the writer starts, so the
// batches consumer may run ahead of the run's registration: genuine pages
// still wait for it instead of being refused.
func TestWriterAppliesOnlyThePipelinesBatches(t *testing.T) {
	h := newHarness(t)
	h.trusted = true
	future := candles.MustInterval("4h").Align(time.Now().Add(72 * time.Hour).UnixMilli())
	btc, btcToken := grant(t, "BTCUSDT", t0, t0+10*h4)
	eth, ethToken := grant(t, "ETHUSDT", t0, future+10*h4) // an end the request put ahead
	started := candles.SyncStarted{EventHeader: candles.NewHeader(candles.KindSyncStarted, "run-1"),
		Pairs: []candles.Pair{{Symbol: "BTCUSDT", Interval: "4h"}, {Symbol: "ETHUSDT", Interval: "4h"}}, PairsTotal: 2,
		Jobs: []candles.JobGrant{btc, eth}}
	h.event(&started, "")
	h.publish(signed(batch("run-1", "BTCUSDT", 0, false, series(t0, 5, 0)), btcToken), "")

	overwrite := series(t0, 1, 0)
	overwrite[0].Open, overwrite[0].Low = 1.0, 1.0
	want := map[uint64]string{
		// (a) a stored candle overwritten, with no run and with the run but no token
		h.forge(batch("", "BTCUSDT", 0, false, overwrite)):                                     "unknown run",
		h.forge(batch("run-1", "BTCUSDT", 1, false, overwrite)):                                "bad job token",
		h.forge(signed(batch("run-1", "BTCUSDT", 1, false, overwrite), ethToken)):              "bad job token",
		h.forge(batch("forged", "FAKEUSDT", 0, true, series(t0, 2, 0))):                        "unknown run",          // (b)
		h.forge(signed(batch("run-1", "ETHUSDT", 0, false, series(future, 1, 0)), ethToken)):   "candle in the future", // (c)
		h.forge(batch("run-1", "BTCUSDT", 9, true, nil)):                                       "bad job token",        // (d)
		h.forge(signed(batch("run-1", "SOLUSDT", 0, true, series(t0, 2, 0)), btcToken)):        "pair not in run",
		h.forge(signed(batch("run-1", "BTCUSDT", 1, false, series(t0+20*h4, 2, 0)), btcToken)): "outside planned range",
	}
	r := h.start(nil)
	eventually(t, "8 batch.rejected", func() bool { return len(h.rejections()) == len(want) })
	for seq, reason := range h.rejections() {
		if !strings.HasPrefix(reason, want[seq]+":") {
			t.Errorf("stream_seq %d rejected with %q, want %q", seq, reason, want[seq])
		}
	}
	h.assertDB()
	if !h.runOpen("run-1") {
		t.Fatal("run-1 is closed or has a pair resolved by forgeries")
	}
	if n := len(h.events(candles.KindSyncCompleted)); n != 0 {
		t.Fatalf("%d sync.completed before the real final pages", n)
	}

	// The real final pages complete the run, once.
	h.publish(signed(batch("run-1", "BTCUSDT", 1, true, series(t0+5*h4, 5, 0)), btcToken), "")
	h.publish(signed(batch("run-1", "ETHUSDT", 0, true, series(t0, 4, 0)), ethToken), "")
	eventually(t, "sync.completed", func() bool { return len(h.events(candles.KindSyncCompleted)) == 1 })
	got := h.onlyCompleted()
	if got.PairsOK != 2 || got.PairsFailed != 0 || got.Candles != 14 {
		t.Errorf("sync.completed = %+v, want 2 pairs ok, 14 candles", got)
	}
	// A page of the finished run, even with its token, is refused.
	late := h.forge(signed(batch("run-1", "BTCUSDT", 2, false, series(t0, 1, 5)), btcToken))
	eventually(t, "the late page rejected", func() bool { return h.rejections()[late] != "" })
	if reason := h.rejections()[late]; !strings.HasPrefix(reason, "run already closed:") {
		t.Errorf("late page rejected with %q, want run already closed", reason)
	}
	h.assertDB()

	// A replay re-applies the genuine pages of the finished run and none
	// of the forgeries, nor the page refused once the run was complete.
	msg, err := h.nc.Request(candles.SubjectAPIReplay, []byte(`{"from_seq":1}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp candles.ReplayResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatalf("replay reply %s: %v", msg.Data, err)
	}
	if resp.Batches != 3 || resp.Skipped != len(want)+1 {
		t.Errorf("replay = %+v, want 3 batches applied and %d skipped", resp, len(want)+1)
	}
	h.assertDB()
	r.stop()
}
