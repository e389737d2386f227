package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/testlog"
)

// These tests drive the real binary as separate processes, as a user does.

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// binary returns bin/candlekeep (CANDLEKEEP_TEST_BINARY, set by `make test`)
// or builds it once for this test process.
func binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CANDLEKEEP_TEST_BINARY"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "candlekeep-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "candlekeep")
		out, err := exec.Command("go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

// natsCLI returns the real nats CLI.
func natsCLI(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("nats")
	if err != nil {
		t.Fatal("the nats CLI is not on PATH: run `make tools` (installs github.com/nats-io/natscli/nats@v0.5.0 into .tools/) and put .tools on PATH, or run `make test`")
	}
	return p
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a child process whose output is kept for failure reports.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// syncBuffer is a log sink the test reads while it is written.
type syncBuffer = testlog.Buffer

// start runs the binary with args and extra environment; at cleanup it is
// stopped with SIGTERM and must exit 0.
func start(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary(t), args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("%s exited with %v after SIGTERM; output:\n%s", args[0], p.err, p.out)
			}
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("%s did not stop within 20s of SIGTERM; output:\n%s", args[0], p.out)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to die.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitHTTP waits until url answers 200.
func waitHTTP(t testing.TB, url string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if p.exited() {
			t.Fatalf("process exited: %v\n%s", p.err, p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready; output:\n%s", url, p.out)
}

// nats runs the nats CLI against server and returns its combined output.
func natsCmd(t testing.TB, server string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natsCLI(t), append([]string{"--server", server, "--no-context"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user contexts
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// natsUntil retries a nats CLI command until its output contains want.
func natsUntil(t testing.TB, server, want string, args ...string) string {
	t.Helper()
	var out string
	checkfor.Check(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, _ = natsCmd(t, server, args...)
		if !strings.Contains(out, want) {
			return fmt.Errorf("nats %s: output does not contain %q; last:\n%s", strings.Join(args, " "), want, out)
		}
		return nil
	})
	return out
}

var runIDRE = regexp.MustCompile(`\{"run_id":"([^"]+)","pairs":(\d+)\}`)

func rowCount(t testing.TB, dbPath string) int {
	t.Helper()
	if _, err := os.Stat(dbPath); err != nil {
		return 0
	}
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM candles`).Scan(&n); err != nil {
		return 0 // not created yet
	}
	return n
}
