package writer

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
)

// A delivery lost in a reconnect shows up as a message beyond watermark+1
// while the one before it still exists: the session must be rebuilt rather
// than apply out of order. Messages that no longer exist are no gap.
func TestCheckGap(t *testing.T) {
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := js.Publish(ctx, candles.BatchSubject("4h", "BTCUSDT"), []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{js: js, log: slog.New(slog.DiscardHandler)}
	tests := []struct {
		name       string
		deleteSeq  uint64
		applied    uint64
		arrived    uint64
		wantResync bool
	}{
		{"seq 2 not delivered yet", 0, 1, 3, true},
		{"seqs 2 and 3 skipped", 0, 1, 4, true},
		{"seq 2 deleted", 2, 1, 3, false},
		{"seqs 2 and 3 gone", 3, 1, 4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.deleteSeq != 0 {
				if err := stream.DeleteMsg(ctx, tt.deleteSeq); err != nil {
					t.Fatal(err)
				}
			}
			err := w.checkGap(ctx, &batchState{stream: stream, applied: tt.applied}, tt.arrived)
			if got := errors.Is(err, errResync); got != tt.wantResync || (err != nil && !got) {
				t.Errorf("checkGap = %v, want resync %v", err, tt.wantResync)
			}
		})
	}
}
