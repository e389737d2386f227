package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

// Every `nats` command in docs/operations.md's sh blocks runs, exactly as
// written, against a running candlekeep (NATS_URL points the CLI at it) and
// succeeds. A command is retried for a few seconds, as an operator would
// re-run it while a sync it triggered is still going.
func TestOperationsRunbookCommandsWork(t *testing.T) {
	if testing.Short() {
		t.Skip("drives the nats CLI; runs without -short")
	}
	cmds := runbookCommands(t, "../../docs/operations.md")
	if len(cmds) < 15 {
		t.Fatalf("found only %d nats commands in docs/operations.md", len(cmds))
	}
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}, []string{"4h"}, 50
	fo.SyncSchedule = "@daily" // the runbook reads and changes it
	natsURL := startUp(t, t.TempDir(), fo)
	nc := connect(t, natsURL)
	ev := watchEvents(t, nc)
	// The runbook reads events and coverage, so have one run done first.
	acc := requestSync(t, nc, `{}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	natsCLI(t)
	for _, line := range cmds {
		t.Run(line, func(t *testing.T) {
			var out []byte
			var err error
			for deadline := time.Now().Add(15 * time.Second); ; {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				cmd := exec.CommandContext(ctx, "sh", "-c", line)
				cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "HOME="+t.TempDir())
				out, err = cmd.CombinedOutput()
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if strings.Contains(line, "candles.api.") && strings.Contains(string(out), "Nats-Service-Error") {
				t.Fatalf("service error:\n%s", out)
			}
		})
	}
}

// runbookCommands returns the lines starting with "nats " inside ```sh
// blocks, without trailing comments.
func runbookCommands(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	inSh := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "```sh"):
			inSh = true
		case strings.HasPrefix(line, "```"):
			inSh = false
		case inSh && strings.HasPrefix(line, "nats "):
			if i := strings.Index(line, "  #"); i > 0 {
				line = strings.TrimSpace(line[:i])
			}
			cmds = append(cmds, line)
		}
	}
	return cmds
}
