package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Secrets in the exchange URL (user info, a key in the query) reach no log
// line, event or command output, whether the exchange answers or not.
func TestSecretsInTheExchangeURLAreNeverShown(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	const user, pass, key = "alice", "hunter2pass", "s3cr3tkey"
	// Nothing listens on port 1: every request fails and is logged.
	secretURL := "http://" + user + ":" + pass + "@127.0.0.1:1/?apikey=" + key
	listen := freeAddr(t)
	server := "nats://" + listen
	up := start(t, nil, "up", "--nats-insecure", "--nats-listen", listen, "--data-dir", t.TempDir(), "--binance-url", secretURL,
		"--symbols", "BTCUSDT", "--intervals", "1h", "--log-format", "json", "--log-level", "debug")
	nc := connectWhenUp(t, server, up)
	ev := watchEventsSince(t, nc, time.Now().Add(-time.Minute))
	requestSync(t, nc, `{"reason":"secret test"}`)
	// Wait until the failure has been reported in the log and as an event.
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(up.out.String(), "127.0.0.1:1") {
			return condErr("no log line about the unreachable exchange yet")
		}
		if len(ev.of("sync.waiting", "")) == 0 && len(ev.of(candles.KindSyncFailed, "")) == 0 {
			return condErr("no sync.waiting or sync.failed event yet")
		}
		return nil
	})
	out, err := exec.Command(binary(t), "config", "get", "--nats-url", server).CombinedOutput()
	if err != nil {
		t.Fatalf("config get: %v\n%s", err, out)
	}
	var all strings.Builder
	all.WriteString(up.out.String())
	all.Write(out)
	ev.mu.Lock()
	for _, e := range ev.all {
		all.Write(e)
	}
	ev.mu.Unlock()
	for _, secret := range []string{pass, key} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("%q appears in logs, events or config get:\n%s", secret, all.String())
		}
	}
	if !strings.Contains(string(out), "http://redacted@127.0.0.1:1") {
		t.Errorf("config get does not show the redacted URL:\n%s", out)
	}
}
