package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The units of deploy/systemd are hardened, back off on restart, read
// their settings from an EnvironmentFile, and run commands and flags the
// binary accepts; `systemd-analyze verify` (where installed) finds nothing
// to say about them.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob("../../deploy/systemd/*.service")
	if err != nil || len(units) != 5 {
		t.Fatalf("want 5 units in deploy/systemd (nats, fetcher@, writer, backup, monitor), found %v: %v", units, err)
	}
	want := map[string]string{
		"User": "candlekeep", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ReadWritePaths": "/var/lib/candlekeep", "PrivateTmp": "yes", "ProtectHome": "yes",
		"Restart": "on-failure", "RestartSec": "10s", "StartLimitIntervalSec": "10min", "StartLimitBurst": "5",
	}
	work := t.TempDir()
	var verify []string
	for _, u := range units {
		keys, execStart := unitKeys(t, u)
		for k, v := range want {
			if keys[k] != v {
				t.Errorf("%s: %s=%q, want %q", filepath.Base(u), k, keys[k], v)
			}
		}
		if !strings.HasPrefix(keys["EnvironmentFile"], "/etc/candlekeep/") {
			t.Errorf("%s: no EnvironmentFile for settings and secrets", filepath.Base(u))
		}
		args := strings.Fields(execStart)
		if len(args) == 0 {
			t.Fatalf("%s: no ExecStart", u)
		}
		// A copy whose ExecStart names the binaries under test, for verify.
		body, _ := os.ReadFile(u)
		text := strings.ReplaceAll(string(body), "/usr/local/bin/candlekeep", binary(t))
		text = strings.ReplaceAll(text, "/usr/local/bin/nats-server", natsServerBinary(t))
		name := filepath.Base(u)
		if strings.HasSuffix(name, "@.service") {
			name = strings.Replace(name, "@.service", "@1.service", 1)
		}
		if err := os.WriteFile(filepath.Join(work, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		verify = append(verify, filepath.Join(work, name))
		if args[0] != "/usr/local/bin/candlekeep" {
			continue
		}
		// Rejected NATS credentials exit 78 (EX_CONFIG): a restart would be
		// rejected the same way.
		if !strings.Contains(" "+keys["RestartPreventExitStatus"]+" ", " 78 ") {
			t.Errorf("%s: RestartPreventExitStatus=%q, want 78 (rejected credentials) in it", filepath.Base(u), keys["RestartPreventExitStatus"])
		}
		// Every flag of the command line is one the target lists.
		help, _ := exec.Command(binary(t), args[1], "--help").CombinedOutput()
		for _, a := range args[2:] {
			if strings.HasPrefix(a, "--") && !strings.Contains(string(help), "  "+a+"  ") {
				t.Errorf("%s: candlekeep %s has no flag %s", filepath.Base(u), args[1], a)
			}
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the units were checked by the keys above only")
		return
	}
	out, err := exec.Command(sa, append([]string{"verify"}, verify...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// unitKeys reads a unit's Key=Value lines (the first value of each key)
// and its ExecStart.
func unitKeys(t *testing.T, path string) (map[string]string, string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if _, seen := keys[k]; !seen {
			keys[k] = v
		}
	}
	return keys, keys["ExecStart"]
}
