package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Prometheus rules parse and each rule's promtool unit test passes; the
// Alertmanager config parses. Debian's prometheus and
// prometheus-alertmanager packages provide promtool and amtool (.ci/run
// installs them).
func TestPrometheusRulesAndAlertmanagerConfig(t *testing.T) {
	tool := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s is not installed: apt-get install prometheus prometheus-alertmanager (.ci/run does)", name)
		}
		return p
	}
	promtool, amtool := tool("promtool"), tool("amtool")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run(promtool, "check", "rules", "../../deploy/prometheus/rules.yml"); !strings.Contains(out, "SUCCESS: 11 rules found") {
		t.Errorf("promtool check rules:\n%s", out)
	}
	tests, err := filepath.Glob("../../deploy/prometheus/tests/*.yml")
	if err != nil || len(tests) != 11 {
		t.Fatalf("want one promtool test file per rule (11), found %d: %v", len(tests), err)
	}
	run(promtool, append([]string{"test", "rules"}, tests...)...)
	if out := run(amtool, "check-config", "../../deploy/alertmanager/alertmanager.yml"); !strings.Contains(out, "SUCCESS") {
		t.Errorf("amtool check-config:\n%s", out)
	}
}
