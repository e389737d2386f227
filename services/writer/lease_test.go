package writer_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/services/writer"
)

// leased is one RunLeased contender: it records each takeover and holds
// until its serve context ends.
type leased struct {
	logs      *logBuffer
	takeovers chan writer.Takeover
	ended     chan error // the cause of each serve context's end
	cancel    context.CancelFunc
	done      chan error
}

func runLeased(t *testing.T, o writer.LeaseOptions, db string) *leased {
	t.Helper()
	l := &leased{logs: &logBuffer{}, takeovers: make(chan writer.Takeover, 10), ended: make(chan error, 10), done: make(chan error, 1)}
	o.Database = db
	o.Logger = slog.New(slog.NewTextHandler(l.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() {
		l.done <- writer.RunLeased(ctx, o, func(ctx context.Context, tk writer.Takeover) error {
			l.takeovers <- tk
			<-ctx.Done()
			l.ended <- context.Cause(ctx)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-l.done:
			if err != nil {
				t.Errorf("RunLeased returned %v after cancel", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("RunLeased did not return within 15s of cancel")
		}
		if t.Failed() {
			t.Logf("logs of %s:\n%s", db, l.logs)
		}
	})
	return l
}

func (l *leased) takeover(t *testing.T, what string) writer.Takeover {
	t.Helper()
	select {
	case tk := <-l.takeovers:
		return tk
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no takeover within 30s; logs:\n%s", what, l.logs)
	}
	return writer.Takeover{}
}

func fastLease(t *testing.T) (writer.LeaseOptions, jetstream.KeyValue) {
	ns := natstest.RunServer(t)
	o := writer.DefaultLeaseOptions()
	o.Conn = natstest.Connect(t, ns)
	o.TTL, o.Refresh = 3*time.Second, 300*time.Millisecond
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	// The bucket as RunLeased creates it, so the test can play another holder.
	kv, err := js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{
		Bucket: writer.LeaseBucket, Description: "candlekeep: who is the one writer (refreshed every second, expires when not)",
		History: 1, TTL: o.TTL, Storage: jetstream.FileStorage, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	return o, kv
}

// The first contender serves; the second stands by (saying who holds the
// lease) without serving, and takes over as soon as the first stops.
func TestLeaseSecondWriterStandsByUntilTheFirstStops(t *testing.T) {
	o, _ := fastLease(t)
	a := runLeased(t, o, "/data/a/candles.db")
	ta := a.takeover(t, "first writer")
	if ta.Previous != nil || ta.Holder.Database != "/data/a/candles.db" {
		t.Fatalf("first takeover = %+v", ta)
	}
	b := runLeased(t, o, "/data/b/candles.db")
	eventually(t, "standby log line", func() bool {
		return strings.Contains(b.logs.String(), "standing by: writer lease held by pid ") &&
			strings.Contains(b.logs.String(), "(database /data/a/candles.db)")
	})
	if len(b.takeovers) != 0 {
		t.Fatal("the standby served while the lease was held")
	}
	a.cancel()
	tb := b.takeover(t, "standby after a clean stop")
	if tb.Previous == nil || tb.Previous.ID != ta.Holder.ID {
		t.Fatalf("takeover %+v does not name the previous holder %s", tb, ta.Holder.ID)
	}
	if n := strings.Count(b.logs.String(), "standing by"); n != 1 {
		t.Fatalf("standby logged %d times, want once", n)
	}
	if ev := tb.Event(); ev.Kind != "writer.active" || ev.Holder != tb.Holder.ID || ev.Database != "/data/b/candles.db" || ev.Previous == "" {
		t.Fatalf("writer.active = %+v", ev)
	}
}

// A holder that stops refreshing (as after kill -9) loses the lease to the
// standby once the bucket's TTL drops it.
func TestLeaseOfAVanishedHolderExpires(t *testing.T) {
	o, kv := fastLease(t)
	ghost, _ := json.Marshal(writer.LeaseHolder{ID: "ghost", Host: "elsewhere", PID: 1, Database: "/gone/candles.db", Since: time.Now()})
	if _, err := kv.Create(context.Background(), writer.LeaseKey, ghost); err != nil {
		t.Fatal(err)
	}
	b := runLeased(t, o, "/data/b/candles.db")
	tk := b.takeover(t, "standby after the holder vanished")
	if tk.Previous == nil || tk.Previous.ID != "ghost" {
		t.Fatalf("takeover = %+v, want it to name the ghost", tk)
	}
}

// When another writer takes the key, the holder's serve context ends at
// once with ErrLeaseLost and it stands by until the key is free again.
func TestLeaseLostStopsServingAndStandsBy(t *testing.T) {
	o, kv := fastLease(t)
	a := runLeased(t, o, "/data/a/candles.db")
	a.takeover(t, "first writer")
	thief, _ := json.Marshal(writer.LeaseHolder{ID: "thief", Host: "elsewhere", PID: 2, Database: "/other/candles.db", Since: time.Now()})
	rev, err := kv.Put(context.Background(), writer.LeaseKey, thief)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-a.ended:
		if !errors.Is(cause, writer.ErrLeaseLost) || !strings.Contains(cause.Error(), "thief") && !strings.Contains(cause.Error(), "elsewhere") {
			t.Fatalf("serve ended with %v, want ErrLeaseLost naming the new holder", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve went on after the lease was taken; logs:\n%s", a.logs)
	}
	eventually(t, "standby after the loss", func() bool {
		return strings.Contains(a.logs.String(), "standing by: writer lease held by pid 2 on host elsewhere")
	})
	// The thief refreshes for a while: each Update at its own revision
	// succeeding proves the old holder did not take the key back.
	for range 3 {
		time.Sleep(o.Refresh)
		if rev, err = kv.Update(context.Background(), writer.LeaseKey, thief, rev); err != nil {
			t.Fatalf("the old holder wrote the key while the thief held it: %v", err)
		}
	}
	if err := kv.Delete(context.Background(), writer.LeaseKey, jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	a.takeover(t, "old holder after the thief left")
}

// A real writer under the lease: when another holder takes the key it stops
// serving (its endpoints go away) and stands by; when the key is free again
// it takes over, announces writer.active again and applies what was
// published meanwhile, exactly.
func TestWriterStopsWhenTheLeaseIsTakenAndResumesAfter(t *testing.T) {
	h := newHarness(t)
	o := writer.DefaultLeaseOptions()
	o.Conn, o.Database = h.nc, h.dbPath
	o.TTL, o.Refresh = 3*time.Second, 300*time.Millisecond
	o.Logger = slog.New(slog.NewTextHandler(h.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- writer.RunLeased(ctx, o, func(ctx context.Context, tk writer.Takeover) error {
			st, err := store.Open(ctx, h.dbPath)
			if err != nil {
				return err
			}
			defer st.Close()
			wo := writer.DefaultOptions()
			wo.Conn, wo.Store, wo.Logger, wo.Active = h.nc, st, o.Logger, tk.Event()
			wo.AllowUnplanned = true // batches without runs, as in harness.start
			w, err := writer.New(wo)
			if err != nil {
				return err
			}
			return w.Run(ctx)
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunLeased = %v after cancel", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("RunLeased did not return within 15s of cancel")
		}
	})
	serving := func() bool {
		_, err := h.nc.Request(candles.SubjectAPICoverage, []byte(`{}`), time.Second)
		return err == nil
	}
	eventually(t, "the writer serving", serving)
	first := h.publish(batch("", "BTCUSDT", 1, false, series(t0, 10, 0)), "")
	h.waitApplied(first.Sequence)

	kv, err := h.js.KeyValue(context.Background(), writer.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	thief, _ := json.Marshal(writer.LeaseHolder{ID: "thief", Host: "elsewhere", PID: 2, Database: "/other/candles.db", Since: time.Now()})
	rev, err := kv.Put(context.Background(), writer.LeaseKey, thief)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the writer to stop serving", func() bool { return !serving() })
	eventually(t, "the standby log line", func() bool {
		return strings.Contains(h.logs.String(), "standing by: writer lease held by pid 2 on host elsewhere")
	})
	second := h.publish(batch("", "BTCUSDT", 2, false, series(t0+10*h4, 10, 1)), "")
	if err := kv.Delete(context.Background(), writer.LeaseKey, jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	h.waitApplied(second.Sequence)
	h.assertDB()
	eventually(t, "two writer.active events", func() bool { return len(h.events(candles.KindWriterActive)) == 2 })
}

// A holder cut off from NATS cannot refresh: it gives up the lease itself
// (its deadline is set to pass before its key can expire), so a standby
// elsewhere does not overlap it.
func TestLeaseHolderCutOffFencesItself(t *testing.T) {
	o, _ := fastLease(t)
	nc, err := nats.Connect(o.Conn.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	o.Conn = nc
	a := runLeased(t, o, "/data/a/candles.db")
	a.takeover(t, "first writer")
	nc.Close()
	select {
	case cause := <-a.ended:
		if !errors.Is(cause, writer.ErrLeaseLost) || !strings.Contains(cause.Error(), "not refreshed") {
			t.Fatalf("serve ended with %v, want ErrLeaseLost for want of refreshes", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the cut-off holder went on serving; logs:\n%s", a.logs)
	}
}

// The lease bucket deleted under an active writer: it stops serving (its
// key is gone, so another writer could take the lease), creates the bucket
// again, says so with resource.recreated and takes the lease back.
func TestLeaseBucketDeletedIsRecreated(t *testing.T) {
	o, _ := fastLease(t)
	js, err := jetstream.New(o.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.EnsureStreams(context.Background(), js, candles.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	a := runLeased(t, o, "/data/a/candles.db")
	a.takeover(t, "first take")
	if err := js.DeleteKeyValue(context.Background(), writer.LeaseBucket); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-a.ended:
		if !errors.Is(cause, writer.ErrLeaseLost) {
			t.Fatalf("serve ended with %v, want ErrLeaseLost", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the writer kept serving without its lease bucket; logs:\n%s", a.logs)
	}
	a.takeover(t, "taken again in the new bucket")
	if _, err := js.KeyValue(context.Background(), writer.LeaseBucket); err != nil {
		t.Fatalf("lease bucket: %v", err)
	}
	s, err := js.Stream(context.Background(), candles.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), candles.EventSubject(candles.KindResourceRecreated))
	if err != nil {
		t.Fatalf("no resource.recreated event: %v", err)
	}
	var ev candles.ResourceRecreated
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Resource != "kv "+writer.LeaseBucket || ev.Service != writer.ServiceName {
		t.Fatalf("resource.recreated = %+v, %v", ev, err)
	}
}
