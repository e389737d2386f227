package natsutil

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/smalldisk"
)

// A stream that failed to write for lack of space refuses every later
// message until JetStream is restarted; WatchStore reports the full store,
// restarts JetStream once space returns and reports it recovered, and the
// stream keeps what it had stored.
func TestWatchStoreRecoversFromAFullDisk(t *testing.T) {
	dir := smalldisk.Mount(t, 16<<20)
	ns, err := RunServer(ServerOptions{Listen: "127.0.0.1:-1", StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	var mu sync.Mutex
	var states []StoreState
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchStore(ctx, ns, StoreWatchOptions{StoreDir: dir, Every: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Report: func(s StoreState) { mu.Lock(); states = append(states, s); mu.Unlock() }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4096)
	publish := func() error {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err := js.Publish(pctx, "s.x", payload)
		return err
	}
	for range 10 {
		if err := publish(); err != nil {
			t.Fatal(err)
		}
	}
	ballast := filepath.Join(dir, "ballast")
	smalldisk.Fill(t, ballast, 0)
	// Publish until the store fails to write.
	checkfor.Check(t, 30*time.Second, 10*time.Millisecond, func() error {
		if err := publish(); err == nil {
			return errors.New("the stream still stores messages")
		}
		return nil
	})
	state := func(i int) (StoreState, bool) {
		mu.Lock()
		defer mu.Unlock()
		if len(states) <= i {
			return StoreState{}, false
		}
		return states[i], true
	}
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		if _, ok := state(0); !ok {
			return errors.New("no full state reported")
		}
		return nil
	})
	if s, _ := state(0); !s.Full || s.Path != dir || s.Reason == "" {
		t.Fatalf("first report %+v, want full at %s with a reason", s, dir)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		if _, ok := state(1); !ok {
			return errors.New("no recovered state reported")
		}
		return publish()
	})
	if s, _ := state(1); s.Full || s.FreeBytes < 1<<20 {
		t.Fatalf("second report %+v, want recovered with space free", s)
	}
	info, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n < 11 {
		t.Fatalf("stream holds %d messages after recovery, want the 10 stored before and the new one", n)
	}
}
