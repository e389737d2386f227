package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
)

// The Prometheus path for real: bin/candlekeep up against the simulator, a
// real Prometheus scraping its monitor every second with
// deploy/prometheus/rules.yml as shipped, and a real Alertmanager whose
// config is deploy/alertmanager/alertmanager.yml with only its receivers'
// endpoints pointed here and its group waits shortened. One 429 from the
// exchange must reach the local Slack-compatible webhook as exactly
// Alertmanager's message for CandlekeepRateLimitAbuse (warning → slack).
// Then every query of the Grafana dashboard runs against that Prometheus.
func TestPrometheusAlertmanagerAndDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	prometheusBin, alertmanagerBin := lookTool(t, "prometheus"), lookTool(t, "prometheus-alertmanager")

	hooks := newWebhookRecorder(t)
	simAddr, natsAddr, httpAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	promAddr, amAddr := freeAddr(t), freeAddr(t)

	// Alertmanager first, so Prometheus' first alerts find it.
	amDir := t.TempDir()
	amConfig := filepath.Join(amDir, "alertmanager.yml")
	if err := os.WriteFile(amConfig, []byte(alertmanagerTestConfig(t, hooks.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	am := startTool(t, []string{"TZ=UTC"}, alertmanagerBin, "--config.file="+amConfig, "--web.external-url=http://"+amAddr, "--storage.path="+filepath.Join(amDir, "data"),
		"--web.listen-address="+amAddr, "--cluster.listen-address=", "--log.level=info")
	waitHTTP(t, "http://"+amAddr+"/-/ready", am)

	simProc := start(t, nil, "sim", "--listen", simAddr, "--log-format", "json")
	waitHTTP(t, "http://"+simAddr+"/api/v3/ping", simProc)
	upProc := start(t, []string{"CANDLEKEEP_LOOKBACK=48", "CANDLEKEEP_BINANCE_URL=http://" + simAddr},
		"up", "--nats-insecure", "--data-dir", t.TempDir(), "--nats-listen", natsAddr, "--symbols", "BTCUSDT,ETHUSDT",
		"--intervals", "1h,4h", "--catch-up=false", "--sync-schedule", "off", "--log-format", "json",
		"--http-listen", httpAddr, "--eval-interval", "1s",
		// The monitor's own Slack receiver (its notification counters are on
		// the dashboard) posts to a path of its own, so its messages cannot
		// be taken for Alertmanager's.
		"--slack-webhook-url", hooks.URL+"/monitor-slack")
	waitHTTP(t, "http://"+httpAddr+"/metrics", upProc)

	promDir := t.TempDir()
	rules, err := os.ReadFile("../../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(promDir, "rules.yml"), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	promConfig := filepath.Join(promDir, "prometheus.yml")
	if err := os.WriteFile(promConfig, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
alerting:
  alertmanagers:
    - static_configs:
        - targets: [%q]
scrape_configs:
  - job_name: candlekeep
    static_configs:
      - targets: [%q]
`, filepath.Join(promDir, "rules.yml"), amAddr, httpAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	prom := startTool(t, nil, prometheusBin, "--config.file="+promConfig, "--storage.tsdb.path="+filepath.Join(promDir, "data"),
		"--web.listen-address="+promAddr, "--log.level=info")
	waitHTTP(t, "http://"+promAddr+"/-/ready", prom)
	api := promAPI{base: "http://" + promAddr, proc: prom}

	// Prometheus holds the rate-limit counter at 0 before the 429, so
	// increase() sees the step.
	checkfor.Check(t, 30*time.Second, 200*time.Millisecond, func() error {
		res, err := api.query(`candlekeep_ratelimit_hits_total == 0 and on() up{job="candlekeep"} == 1`)
		if err == nil && len(res) == 0 {
			err = fmt.Errorf("no sample of candlekeep_ratelimit_hits_total at 0 from an up target yet")
		}
		return err
	})

	// A sync whose first klines request meets one 429.
	simFault(t, simAddr, `{"kind":"ratelimit","path":"/api/v3/klines","count":1,"retry_after":"1s"}`)
	nc := connect(t, "nats://"+natsAddr)
	ev := watchEvents(t, nc)
	acc := requestSync(t, nc, `{"reason":"prometheus test"}`)
	var done candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 2*time.Minute, &done)
	if done.PairsOK != 4 || done.PairsTotal != 4 {
		t.Fatalf("sync.completed = %+v, want 4 of 4 pairs ok", done)
	}
	if hits := ev.of(candles.KindRateLimitHit, ""); len(hits) != 1 {
		t.Fatalf("%d ratelimit.hit events, want 1 (the simulator's one 429)", len(hits))
	}

	// Alertmanager's Slack message: the first and only one on /slack.
	var msgs []webhookPost
	checkfor.Check(t, 90*time.Second, 200*time.Millisecond, func() error {
		if msgs = hooks.posts("/slack"); len(msgs) == 0 {
			return fmt.Errorf("no Slack message from Alertmanager yet; webhook posts: %v", hooks.paths())
		}
		return nil
	})
	// Exactly Alertmanager's message for this alert, built by the shipped
	// templates; only the alert's start comes from Alertmanager's API.
	startsAt := alertStart(t, "http://"+amAddr, "CandlekeepRateLimitAbuse")
	link := "http://" + amAddr + "/#/alerts?receiver=slack"
	want := map[string]any{
		"username": "Alertmanager",
		"attachments": []any{map[string]any{
			"title":      "[WARNING] CandlekeepRateLimitAbuse",
			"title_link": link,
			"text": "• the exchange answered 429 or 418 in the last hour (since " + startsAt.UTC().Format("2006-01-02 15:04 MST") + ")\n" +
				"runbook: https://github.com/candlekeep/candlekeep/blob/main/docs/alerts.md#candlekeepratelimitabuse\n",
			"fallback":    "[FIRING:1] CandlekeepRateLimitAbuse warning (" + httpAddr + " candlekeep) | " + link,
			"callback_id": "",
			"footer":      "",
			"color":       "danger",
			"mrkdwn_in":   []any{"fallback", "pretext", "text"},
		}},
	}
	var got map[string]any
	if err := json.Unmarshal(msgs[0].Body, &got); err != nil {
		t.Fatalf("Slack message %s: %v", msgs[0].Body, err)
	}
	if !reflect.DeepEqual(got, want) {
		wantJSON, _ := json.Marshal(want)
		t.Fatalf("Alertmanager's Slack message:\n got %s\nwant %s", msgs[0].Body, wantJSON)
	}

	// Every panel query of the dashboard answers with data. A query that
	// could legitimately answer nothing here is listed in mayBeEmpty with the
	// reason, and must then answer nothing. The backup service inside up
	// takes a verified backup after the sync, so the backup panels have
	// their series; only the drill panels are empty, since no drill runs
	// here (they come from drill events: TestAlertBackupDrillFailed and the
	// monitor's TestDrillEventsDriveTheBackupCheckAndMetrics show them).
	_, queries := loadDashboard(t)
	const noDrill = "no restore drill has run in this test (monthly schedule)"
	mayBeEmpty := map[string]string{
		"candlekeep_drill_last_ok":                               noDrill,
		"candlekeep_drill_last_timestamp_seconds * 1000":         noDrill,
		"candlekeep_drill_last_success_timestamp_seconds * 1000": noDrill,
		"candlekeep_drill_last_rto_seconds":                      noDrill,
	}
	for expr := range mayBeEmpty {
		if !slices.ContainsFunc(queries, func(q panelQuery) bool { return q.Expr == expr }) {
			t.Errorf("mayBeEmpty lists %q, which is no panel query", expr)
		}
	}
	checkfor.Check(t, 60*time.Second, 500*time.Millisecond, func() error {
		var problems []string
		for _, q := range queries {
			res, err := api.query(q.Expr)
			_, emptyOK := mayBeEmpty[q.Expr]
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: %v", q, err))
			case emptyOK && len(res) != 0:
				problems = append(problems, fmt.Sprintf("%s: want no data (%s), got %s", q, mayBeEmpty[q.Expr], res))
			case !emptyOK && len(res) == 0:
				problems = append(problems, fmt.Sprintf("%s: no data", q))
			}
		}
		if len(problems) > 0 {
			return fmt.Errorf("%d of %d dashboard queries:\n%s", len(problems), len(queries), strings.Join(problems, "\n"))
		}
		return nil
	})

	// Still the one message (a repeat would come after 24h; no other
	// warning or critical rule holds), nothing to PagerDuty for a warning.
	if msgs := hooks.posts("/slack"); len(msgs) != 1 {
		t.Errorf("%d Slack messages from Alertmanager, want 1:\n%v", len(msgs), msgs)
	}
	if p := hooks.posts("/pagerduty"); len(p) != 0 {
		t.Errorf("PagerDuty got %d messages for a warning, want none: %s", len(p), p[0].Body)
	}
}

// lookTool returns the path of an installed binary, or skips the test:
// Debian's prometheus and prometheus-alertmanager packages provide them
// (.ci/run installs them).
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (apt-get install prometheus prometheus-alertmanager; .ci/run does)", name)
	}
	return p
}

// startTool runs an external binary; at cleanup it is stopped with SIGTERM.
func startTool(t *testing.T, env []string, path string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), p.out)
		}
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("%s did not stop within 20s of SIGTERM", filepath.Base(path))
		}
	})
	return p
}

// alertmanagerTestConfig is deploy/alertmanager/alertmanager.yml with its
// routing tree, grouping, inhibitions and templates as shipped; only what
// cannot work in a test changes, each replacement required to match
// exactly once: the receivers' secrets files and endpoints point at the
// local webhook recorder (Slack at /slack, PagerDuty at /pagerduty), the
// SMTP server at a closed local port, and the group waits shortened.
func alertmanagerTestConfig(t *testing.T, hookURL string) string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/alertmanager/alertmanager.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	closed := freeAddr(t) // nothing listens there: e-mails fail fast
	for _, r := range []struct{ pattern, with string }{
		{`(?m)^( *(?:- )?)api_url_file: /run/secrets/slack_webhook_url$`, "${1}api_url: " + hookURL + "/slack"},
		{`(?m)^( *)- routing_key_file: /run/secrets/pagerduty_routing_key$`, "${1}- routing_key: test-routing-key\n${1}  url: " + hookURL + "/pagerduty"},
		{`(?m)^( *)smtp_smarthost: .*$`, "${1}smtp_smarthost: " + closed},
		{`(?m)^( *)smtp_auth_password_file: .*$`, "${1}smtp_auth_password: test-password"},
		{`(?m)^( *)smtp_require_tls: true$`, "${1}smtp_require_tls: false"},
		{`(?m)^( *)group_wait: 30s$`, "${1}group_wait: 1s"},
		{`(?m)^( *)group_interval: 5m$`, "${1}group_interval: 2s"},
	} {
		re := regexp.MustCompile(r.pattern)
		if n := len(re.FindAllStringIndex(cfg, -1)); n != 1 {
			t.Fatalf("alertmanager.yml: %d matches of %s, want 1: the test's derivation of the shipped config needs updating", n, r.pattern)
		}
		cfg = re.ReplaceAllString(cfg, r.with)
	}
	return cfg
}

// webhookRecorder is a local Slack/PagerDuty-compatible endpoint that keeps
// every POST.
type webhookRecorder struct {
	URL string
	mu  sync.Mutex
	all []webhookPost
}

type webhookPost struct {
	Path string
	Body json.RawMessage
}

func (p webhookPost) String() string { return p.Path + " " + string(p.Body) }

func newWebhookRecorder(t *testing.T) *webhookRecorder {
	t.Helper()
	r := &webhookRecorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil || req.Method != http.MethodPost || !json.Valid(body) {
			http.Error(w, "want a POST of JSON", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.all = append(r.all, webhookPost{Path: req.URL.Path, Body: body})
		r.mu.Unlock()
		if strings.HasPrefix(req.URL.Path, "/pagerduty") {
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"status":"success","message":"Event processed"}`)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// posts returns the POSTs to paths under prefix, in arrival order.
func (r *webhookRecorder) posts(prefix string) []webhookPost {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []webhookPost
	for _, p := range r.all {
		if p.Path == prefix || strings.HasPrefix(p.Path, prefix+"/") {
			out = append(out, p)
		}
	}
	return out
}

func (r *webhookRecorder) paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, p := range r.all {
		out = append(out, p.Path)
	}
	return out
}

// promAPI queries a Prometheus over its HTTP API.
type promAPI struct {
	base string
	proc *proc
}

// query runs an instant query and returns its result; an error for a
// failed query or a status other than success.
func (a promAPI) query(expr string) (json.RawMessage, error) {
	resp, err := http.Get(a.base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		if a.proc.exited() {
			return nil, fmt.Errorf("prometheus exited: %v\n%s", a.proc.err, a.proc.out)
		}
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("HTTP %d: %v", resp.StatusCode, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("status %q: %s", r.Status, r.Error)
	}
	switch r.Data.ResultType {
	case "vector", "matrix":
		var items []json.RawMessage
		if err := json.Unmarshal(r.Data.Result, &items); err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return nil, nil
		}
		return r.Data.Result, nil
	default: // scalar or string: always a value
		return r.Data.Result, nil
	}
}

// alertStart is when the firing alert named alertname started, as the
// Alertmanager at base knows it.
func alertStart(t *testing.T, base, alertname string) time.Time {
	t.Helper()
	resp, err := http.Get(base + "/api/v2/alerts?filter=" + url.QueryEscape(`alertname="`+alertname+`"`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var alerts []struct {
		StartsAt time.Time         `json:"startsAt"`
		Labels   map[string]string `json:"labels"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&alerts); err != nil || len(alerts) != 1 {
		t.Fatalf("Alertmanager's alerts named %s: %v (%d alerts)", alertname, err, len(alerts))
	}
	return alerts[0].StartsAt
}

// simFault adds a fault to the simulator (docs/simulator.md).
func simFault(t *testing.T, simAddr, body string) {
	t.Helper()
	resp, err := http.Post("http://"+simAddr+"/sim/faults", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /sim/faults %s: %s %s", body, resp.Status, b)
	}
}
