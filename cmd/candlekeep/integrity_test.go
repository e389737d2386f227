package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
)

// The database's pages are overwritten in the middle of the candles b-tree
// while candlekeep is down. `candlekeep up` started on it checks the file
// before trusting it: integrity.failed, the recovery steps in the log, the
// file's bytes untouched, the process still up for the other services.
// Following the hint by hand (move the file aside, start again) rebuilds the
// database from the CANDLES stream, exact against the simulator.
func TestCorruptDatabaseIsRefusedThenRebuilt(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	simAddr := freeAddr(t)
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	up := func() (*proc, string) {
		natsAddr := freeAddr(t)
		p := start(t, []string{"CANDLEKEEP_BINANCE_URL=http://" + simAddr},
			"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", natsAddr, "--symbols", "BTCUSDT,ETHUSDT",
			"--intervals", "1h", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json",
			"--auto-restore=false") // this test follows the refusal and the runbook; restore_test.go the automatic restore
		server := "nats://" + natsAddr
		natsUntil(t, server, "candlekeep-writer", "micro", "ls")
		return p, server
	}
	from, until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 4, 1, 0, 0, 0, 0, time.UTC)
	want := truth(sim.New(sim.Options{}), []string{"BTCUSDT", "ETHUSDT"}, "1h", from, until)

	// A backfill, then a clean stop.
	p, server := up()
	nc := connect(t, server)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, fmt.Sprintf(`{"start":%q,"end":%q}`, from.Format(time.RFC3339), until.Format(time.RFC3339)))
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	assertSame(t, readDB(t, dbPath), want)
	nc.Close()
	stopProc(t, p)

	// The disk damages pages in the middle of the candles b-tree.
	if _, err := storetest.CorruptCandles(dbPath, 4); err != nil {
		t.Fatal(err)
	}
	before := fileChecksum(t, dbPath)

	startedAt := time.Now().Add(-time.Second)
	p, server = up()
	nc = connect(t, server)
	ev = watchEventsSince(t, nc, startedAt)
	var failed candles.IntegrityFailed
	ev.wait(t, candles.KindIntegrityFailed, "", time.Minute, &failed)
	if failed.Database != dbPath || failed.Check != "quick_check" || len(failed.Problems) == 0 || failed.DetectedAt.IsZero() ||
		!strings.Contains(failed.Hint, "mv "+dbPath+" "+dbPath+".corrupt") {
		t.Fatalf("integrity.failed = %+v", failed)
	}
	// The log names the recovery steps; coverage says why it cannot answer.
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		if out := p.out.String(); !strings.Contains(out, "database damaged: writes stopped") || !strings.Contains(out, "stop candlekeep; move the file") {
			return errors.New("the log does not give the recovery steps yet")
		}
		return nil
	})
	if out, _ := natsCmd(t, server, "req", candles.SubjectAPICoverage, `{"pairs":[{"symbol":"BTCUSDT","interval":"1h"}]}`); !strings.Contains(out, "failed quick_check") {
		t.Errorf("coverage of the damaged database answered:\n%s", out)
	}
	if p.exited() {
		t.Fatalf("candlekeep up exited on a damaged database: %v\n%s", p.err, p.out)
	}
	nc.Close()
	stopProc(t, p)
	if fileChecksum(t, dbPath) != before {
		t.Fatal("candlekeep wrote to the damaged file")
	}

	// The hint, by hand: move the file aside and start again.
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(dbPath+suffix, dbPath+suffix+".corrupt"); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	_, server = up()
	nc = connect(t, server)
	checkfor.Check(t, 2*time.Minute, 100*time.Millisecond, func() error {
		if n, want := rowCount(t, dbPath), count(want); n != want {
			return fmt.Errorf("rebuilt database has %d of %d candles", n, want)
		}
		return nil
	})
	assertSame(t, readDB(t, dbPath), want)
	nc.Close()
}

// stopProc sends SIGTERM and waits for a clean exit.
func stopProc(t *testing.T, p *proc) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exited with %v after SIGTERM; output:\n%s", p.err, p.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("did not stop within 30s of SIGTERM; output:\n%s", p.out)
	}
}

func fileChecksum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// A file too damaged to open at all (its header overwritten) leaves nothing
// to run the writer on: `candlekeep up` exits 1 with the recovery steps, and
// the file is left as it was.
func TestUnopenableDatabaseExitsWithTheRecoverySteps(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, databaseFile)
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*31 + 7)
	}
	if err := os.WriteFile(dbPath, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, []string{"CANDLEKEEP_BINANCE_URL=http://" + freeAddr(t)},
		"up", "--nats-insecure", "--data-dir", dataDir, "--nats-listen", freeAddr(t), "--catch-up=false", "--sync-schedule", "off", "--log-format", "json")
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("candlekeep up did not exit on an unopenable database; output:\n%s", p.out)
	}
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1; output:\n%s", p.err, p.out)
	}
	if out := p.out.String(); !strings.Contains(out, "file is not a database") || !strings.Contains(out, "move the file") {
		t.Fatalf("the error does not say what is wrong and how to recover:\n%s", out)
	}
	if got, _ := os.ReadFile(dbPath); !bytes.Equal(got, junk) {
		t.Fatal("candlekeep changed the unopenable file")
	}
}
