package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/writer"
)

// Every command in the sh blocks of README.md and docs/operations.md runs,
// exactly as written, against a running candlekeep with its credentials
// (as `up` runs by default) and succeeds after the docs' setup lines (their
// `export` lines, run before each command): the nats CLI (NATS_URL points
// it at the system, the documented NATS_CONTEXT gives it the operator's
// credentials), bin/candlekeep (a bin/ beside the commands holds the binary
// under test, CANDLEKEEP_NATS_URL points it at the system, the documented
// CANDLEKEEP_NATS_NKEY is the operator's seed) and sqlite3 (data/ is the
// system's data directory). The
// exceptions are `make` lines and the lines that start a long-running
// process (up, writer, fetcher, sim, or anything sent to the background):
// other tests start those. A command is retried for a few seconds, as an
// operator would re-run it while a sync it triggered is still going.
func TestOperationsRunbookCommandsWork(t *testing.T) {
	if testing.Short() {
		t.Skip("drives the nats CLI; runs without -short")
	}
	var cmds, setup []string
	for _, doc := range []string{"../../README.md", "../../docs/operations.md"} {
		cmds = append(cmds, runbookCommands(t, doc)...)
		setup = append(setup, runbookSetup(t, doc)...)
	}
	if !strings.Contains(strings.Join(setup, "\n"), "NATS_CONTEXT=") {
		t.Fatalf("README.md and docs/operations.md show no setup line for the nats CLI (export NATS_CONTEXT=...); found %q", setup)
	}
	if len(cmds) < 25 {
		t.Fatalf("found only %d runnable commands in README.md and docs/operations.md", len(cmds))
	}
	_, simURL := startSim(t, sim.Options{})
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}, []string{"4h"}, 50
	fo.SyncSchedule = "@daily" // the runbook reads and changes it
	dataDir := t.TempDir()
	// up with its monitor and its backup service (default hot tier), as
	// `candlekeep up` runs by default: the README shows health, status and
	// candlekeep backup now / ls.
	bc := backupConfig{Schedule: "off", MinInterval: time.Hour, HotRetention: 14 * 24 * time.Hour,
		WarmRetention: 30 * 24 * time.Hour, ColdRetention: 90 * 24 * time.Hour}
	bc.resolve(dataDir)
	ms := testMonitorSettings(t)
	natsURL, operator := startSecureUpConfig(t, upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo,
		Writer: writer.DefaultOptions(), Backup: bc, Monitor: &ms}, testLogger(t))
	nc := connectAs(t, natsURL, operator)
	ev := watchEvents(t, nc)
	// The runbook reads events and coverage, so have one run done first.
	acc := requestSync(t, nc, `{}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	// `candlekeep health` exits 0 only with a recent verified backup.
	standInBackup(t, nc, time.Now())
	natsCLI(t)
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(binary(t), filepath.Join(work, "bin", "candlekeep")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dataDir, filepath.Join(work, "data")); err != nil {
		t.Fatal(err)
	}
	for _, line := range cmds {
		t.Run(line, func(t *testing.T) {
			var out []byte
			var err error
			for deadline := time.Now().Add(15 * time.Second); ; {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				cmd := exec.CommandContext(ctx, "sh", "-c", strings.Join(append(setup[:len(setup):len(setup)], line), "\n"))
				cmd.Dir = work
				cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "CANDLEKEEP_NATS_URL="+natsURL, "HOME="+t.TempDir())
				out, err = cmd.CombinedOutput()
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			// A few examples show a refusal or a problem: their exit status 1
			// is the point (coverage on a stale pair, say). They say so in a
			// trailing "# exits 1" comment, which runbookCommands keeps.
			if strings.HasSuffix(line, "# exits 1") {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("want exit 1, got %v\n%s", err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if strings.Contains(line, "candles.api.") && strings.Contains(string(out), "Nats-Service-Error") && !strings.Contains(line, "7m") {
				t.Fatalf("service error:\n%s", out)
			}
		})
	}
}

// runbookSetup returns the `export` lines of path's sh blocks: the setup a
// reader runs once in the shell before the other commands.
func runbookSetup(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	inSh := false
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "```sh"):
			inSh = true
		case strings.HasPrefix(line, "```"):
			inSh = false
		case inSh && strings.HasPrefix(line, "export "):
			out = append(out, line)
		}
	}
	return out
}

// longRunning matches the commands a runbook test does not run: make
// targets and processes that serve until stopped.
var longRunning = regexp.MustCompile(`^(make |.*&\s*$|(CANDLEKEEP_\S+=\S+ )*bin/candlekeep (up|writer|fetcher|monitor|sim)\b)`)

// runbookCommands returns the runnable commands inside ```sh blocks (lines
// continued with a backslash joined), without trailing comments except an
// "# exits 1" marker.
func runbookCommands(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	inSh := false
	pending := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "```sh"):
			inSh = true
			continue
		case strings.HasPrefix(line, "```"):
			inSh = false
			continue
		case !inSh:
			continue
		}
		if pending != "" {
			line = pending + " " + line
			pending = ""
		}
		if strings.HasSuffix(line, "\\") {
			pending = strings.TrimSuffix(line, "\\")
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "export ") || longRunning.MatchString(line) ||
			(strings.HasPrefix(line, "nats sub ") && !strings.Contains(line, "--terminate-at-end")) {
			continue
		}
		exits1 := strings.HasSuffix(line, "# exits 1")
		if i := strings.Index(line, "  #"); i > 0 {
			line = strings.TrimSpace(line[:i])
		}
		if exits1 {
			line += "  # exits 1"
		}
		cmds = append(cmds, line)
	}
	return cmds
}
