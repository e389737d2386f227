package sla

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
)

// TestReadSkipsWhatItCannotDecode: events that do not decode are counted
// and named in a note, never fatal; the rest is read, by the events' own
// times (an event after the window is left out).
func TestReadSkipsWhatItCannotDecode(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	from, to := t0, t0.Add(2*time.Hour)
	for _, at := range []time.Time{t0.Add(-time.Hour), t0, t0.Add(time.Hour), t0.Add(5 * time.Hour)} {
		if err := candles.PublishEvent(ctx, js, freshness(at, nil), "", at); err != nil {
			t.Fatal(err)
		}
	}
	// Not JSON; and a sync.completed without a time.
	if _, err := js.Publish(ctx, candles.EventSubject(candles.KindFreshnessChanged), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, candles.EventSubject(candles.KindSyncCompleted), []byte(`{"v":1,"kind":"sync.completed"}`)); err != nil {
		t.Fatal(err)
	}
	// A kind the audit does not read is not even delivered.
	if err := candles.PublishEvent(ctx, js, &candles.PairCompleted{EventHeader: candles.NewHeader(candles.KindPairCompleted, "r")}, "", t0); err != nil {
		t.Fatal(err)
	}
	l, err := Read(ctx, js, from, to)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != 3 || l.Invalid != 2 || l.MaxAge != candles.DefaultEventsMaxAge || !l.FirstTime.IsZero() {
		t.Fatalf("loaded %d events, %d invalid, max age %v, first %v; want 3, 2, 40 days, none expired", len(l.Events), l.Invalid, l.MaxAge, l.FirstTime)
	}
	want := "2 events could not be read and were skipped (first: stream_seq 5: decode freshness.changed: invalid character 'n' looking for beginning of object key string)"
	if notes := l.Notes(from); len(notes) != 1 || notes[0] != want {
		t.Errorf("notes %q, want %q", notes, want)
	}
	r := Compute(l.Events, from, to, DefaultTargets())
	if r.Availability.Share != 1 {
		t.Errorf("availability %+v, want fresh throughout", r.Availability)
	}
}

func TestReadEmptyStream(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	l, err := Read(context.Background(), js, t0, t0.Add(time.Hour))
	if err != nil || len(l.Events) != 0 || l.Invalid != 0 {
		t.Fatalf("Read = %+v, %v; want nothing", l, err)
	}
	if r := Compute(l.Events, t0, t0.Add(time.Hour), DefaultTargets()); !r.NoData {
		t.Error("an empty stream is not NoData")
	}
}

// TestReadSaysWhatExpired: a window reaching before the oldest event left
// in EVENTS (older ones expired or were purged) says so.
func TestReadSaysWhatExpired(t *testing.T) {
	ns := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := candles.EnsureStreams(ctx, js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{t0, t0.Add(time.Hour)} {
		if err := candles.PublishEvent(ctx, js, freshness(at, nil), "", at); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := js.Stream(ctx, candles.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(2)); err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Read(ctx, js, info.State.FirstTime.Add(-time.Hour), info.State.FirstTime.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := "events before " + info.State.FirstTime.UTC().Format(time.RFC3339) + " have expired from EVENTS: the audit cannot see them"
	if notes := l.Notes(info.State.FirstTime.Add(-time.Hour)); len(notes) != 1 || notes[0] != want || len(l.Events) != 1 {
		t.Errorf("notes %q, %d events; want %q and the one event left", notes, len(l.Events), want)
	}
}
