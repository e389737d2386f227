package writer_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/writer"
)

// A writer configured for another exchange than the one its database was
// filled from refuses to start, before it touches a consumer; with
// RebindSource it records the new exchange, runs and announces itself.
func TestWriterRefusesADatabaseOfAnotherExchange(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	st, err := store.Open(ctx, h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.BindSource(ctx, "https://api.binance.com", false); err != nil {
		t.Fatal(err)
	}
	o := writer.DefaultOptions()
	o.Conn, o.Store, o.Source = h.nc, st, "http://127.0.0.1:9100"
	w, err := writer.New(o)
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(ctx)
	var mismatch *store.SourceMismatchError
	if !errors.As(err, &mismatch) || mismatch.Recorded != "https://api.binance.com" {
		t.Fatalf("Run = %v, want a SourceMismatchError", err)
	}
	if _, err := h.js.Consumer(ctx, candles.StreamCandles, writer.ConsumerBatches); err == nil {
		t.Fatal("the refused writer created its consumer")
	}
	st.Close()

	active := &candles.WriterActive{EventHeader: candles.NewHeader(candles.KindWriterActive, ""), Holder: "h1", Host: "test", PID: 7, Database: h.dbPath}
	r := h.start(func(o *writer.Options) { o.Source, o.RebindSource, o.Active = "http://127.0.0.1:9100/", true, active })
	eventually(t, "writer.active", func() bool { return len(h.events(candles.KindWriterActive)) == 1 })
	var got candles.WriterActive
	if err := json.Unmarshal(h.events(candles.KindWriterActive)[0], &got); err != nil || got.Holder != "h1" || got.PID != 7 || got.Time.IsZero() {
		t.Fatalf("writer.active = %+v, %v", got, err)
	}
	if src, err := r.store.Source(ctx); err != nil || src != "http://127.0.0.1:9100" {
		t.Fatalf("source after rebind = %q, %v", src, err)
	}
}
