package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/pkg/store/storetest"
)

// End-to-end alert tests: the real binary runs `candlekeep up` against the
// simulator, with the monitor inside, and posts its alerts to a local
// Slack-compatible webhook. Every rule's `for` and increase() window is
// multiplied by 0.001 (--rule-time-scale 0.001): a 5m `for` is 300ms, a 1h
// window 3.6s; the rules are evaluated every 200ms (--eval-interval). Each
// test asserts the exact Slack messages of the alert it provokes: one
// FIRING, one RESOLVED, nothing else for that alert.

const (
	alertEval      = "200ms"
	alertTimeScale = "0.001"
)

// inboxMsg is what a test reads of one Block Kit message: the header's
// alert name and kind (FIRING, STILL FIRING, RESOLVED), the Severity field,
// and the fallback text.
type inboxMsg struct {
	Alert, Kind, Severity, Text string
	// Group is the group key the context line names ("… group `k`"): a
	// resolved message names the group of the firing it ends.
	Group string
	At    time.Time // when the webhook got it
}

func (m inboxMsg) String() string { return m.Alert + " " + m.Kind + " (" + m.Severity + ")" }

// alertInbox is a Slack-compatible incoming webhook on 127.0.0.1: it keeps
// every POST body and answers 200 "ok", as Slack does.
type alertInbox struct {
	url  string
	mu   sync.Mutex
	msgs []inboxMsg
	raw  []string
	bad  []string // bodies that are not a Block Kit message as the monitor sends
}

func newAlertInbox(t testing.TB) *alertInbox {
	t.Helper()
	in := &alertInbox{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m, err := decodeSlack(body)
		m.At = time.Now()
		in.mu.Lock()
		in.raw = append(in.raw, string(body))
		if err != nil || r.Method != http.MethodPost {
			in.bad = append(in.bad, fmt.Sprintf("%s: %v: %s", r.Method, err, body))
		} else {
			in.msgs = append(in.msgs, m)
		}
		in.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	in.url = srv.URL + "/services/T000/B000/e2e"
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			in.mu.Lock()
			defer in.mu.Unlock()
			t.Logf("the webhook got %d messages: %v; undecodable: %q", len(in.msgs), in.msgs, in.bad)
		}
	})
	return in
}

var groupRE = regexp.MustCompile("group `([^`]+)`")

// decodeSlack reads the monitor's Block Kit message: a header block
// "<emoji> <alert> <kind>" and a section whose fields hold "*Severity*\n…".
func decodeSlack(body []byte) (inboxMsg, error) {
	var msg struct {
		Text   string `json:"text"`
		Blocks []struct {
			Type string `json:"type"`
			Text *struct {
				Text string `json:"text"`
			} `json:"text"`
			Fields []struct {
				Text string `json:"text"`
			} `json:"fields"`
			Elements []struct {
				Text any `json:"text"`
			} `json:"elements"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(body, &msg); err != nil {
		return inboxMsg{}, err
	}
	m := inboxMsg{Text: msg.Text}
	for _, b := range msg.Blocks {
		switch {
		case b.Type == "header" && b.Text != nil:
			words := strings.Fields(b.Text.Text)
			if len(words) < 3 {
				return m, fmt.Errorf("header %q: want <emoji> <alert> <kind>", b.Text.Text)
			}
			m.Alert, m.Kind = words[1], strings.Join(words[2:], " ")
		case b.Type == "section":
			for _, f := range b.Fields {
				if s, ok := strings.CutPrefix(f.Text, "*Severity*\n"); ok {
					m.Severity = s
				}
			}
		case b.Type == "context":
			for _, e := range b.Elements {
				if text, ok := e.Text.(string); ok {
					if g := groupRE.FindStringSubmatch(text); g != nil {
						m.Group = g[1]
					}
				}
			}
		}
	}
	if m.Alert == "" || m.Severity == "" {
		return m, errors.New("no header block or no Severity field")
	}
	return m, nil
}

// of returns the messages about alert, in arrival order.
func (in *alertInbox) of(alert string) []inboxMsg {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []inboxMsg
	for _, m := range in.msgs {
		if m.Alert == alert {
			out = append(out, m)
		}
	}
	return out
}

// all returns every message received.
func (in *alertInbox) all() []inboxMsg {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.msgs)
}

// waitFor waits until a message of kind about alert arrived.
func (in *alertInbox) waitFor(t testing.TB, alert, kind string, timeout time.Duration) inboxMsg {
	t.Helper()
	var got inboxMsg
	checkfor.Check(t, timeout, 10*time.Millisecond, func() error {
		for _, m := range in.of(alert) {
			if m.Kind == kind {
				got = m
				return nil
			}
		}
		return fmt.Errorf("no %s %s message; the webhook has %v", alert, kind, in.all())
	})
	return got
}

// assertExactly checks that the messages about alert are exactly one
// FIRING and one RESOLVED (or the kinds given), with severity, all naming
// the same group, and that every body was a message the monitor makes.
func (in *alertInbox) assertExactly(t *testing.T, alert, severity string, kinds ...string) {
	t.Helper()
	if len(kinds) == 0 {
		kinds = []string{"FIRING", "RESOLVED"}
	}
	var want []inboxMsg
	for _, k := range kinds {
		want = append(want, inboxMsg{Alert: alert, Kind: k, Severity: severity})
	}
	got := in.of(alert)
	var group string
	for i := range got {
		if i == 0 {
			group = got[0].Group
		}
		if got[i].Group == "" || got[i].Group != group {
			t.Errorf("%s: message %d names group %q, the first %q: not paired", alert, i, got[i].Group, group)
		}
		got[i].Text, got[i].Group, got[i].At = "", "", time.Time{}
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: the webhook got %v, want exactly %v", alert, got, want)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.bad) > 0 {
		t.Errorf("the webhook got bodies that are not the monitor's Block Kit messages: %q", in.bad)
	}
}

// alertRig is `candlekeep up` (the real binary) against an in-process
// simulator, with the monitor posting to an alertInbox.
type alertRig struct {
	t       testing.TB
	sim     *sim.Sim
	simURL  string
	inbox   *alertInbox
	dataDir string
	// eval and timeScale are --eval-interval and --rule-time-scale.
	eval, timeScale string
	args            []string // the flags of every start, after the common ones
	up              *proc
	natsURL         string
	nc              *nats.Conn
	// firstBan is when the simulator first answered 418 (UnixNano; 0: never).
	firstBan atomic.Int64
}

func newAlertRig(t testing.TB, so sim.Options, args ...string) *alertRig {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	r := &alertRig{t: t, sim: sim.New(so), inbox: newAlertInbox(t), dataDir: t.TempDir(), args: args,
		eval: alertEval, timeScale: alertTimeScale}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.sim.ServeHTTP(&banClock{ResponseWriter: w, first: &r.firstBan}, req)
	}))
	t.Cleanup(func() { r.sim.Close(); srv.Close() })
	r.simURL = srv.URL
	return r
}

// banClock notes when a 418 is first sent.
type banClock struct {
	http.ResponseWriter
	first *atomic.Int64
}

func (b *banClock) WriteHeader(code int) {
	if code == http.StatusTeapot {
		b.first.CompareAndSwap(0, time.Now().UnixNano())
	}
	b.ResponseWriter.WriteHeader(code)
}

// start runs `candlekeep up` on the rig's data directory (new NATS and
// HTTP ports each time) and waits until the writer, the fetcher and the
// monitor answer.
func (r *alertRig) start() {
	t := r.t
	t.Helper()
	natsAddr := freeAddr(t)
	args := append([]string{"up", "--nats-insecure", "--data-dir", r.dataDir, "--nats-listen", natsAddr, "--http-listen", freeAddr(t),
		"--sync-schedule", "off", "--retry-base", "100ms", "--log-format", "json",
		"--eval-interval", r.eval, "--rule-time-scale", r.timeScale, "--slack-webhook-url", r.inbox.url}, r.args...)
	r.up = start(t, []string{"CANDLEKEEP_BINANCE_URL=" + r.simURL}, args...)
	r.natsURL = "nats://" + natsAddr
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		if r.up.exited() {
			t.Fatalf("candlekeep up exited: %v\n%s", r.up.err, r.up.out)
		}
		nc, err := nats.Connect(r.natsURL)
		if err != nil {
			return err
		}
		r.nc = nc
		return nil
	})
	t.Cleanup(r.nc.Close)
	// A probe is answered (with a 400) once a service runs.
	for _, subj := range []string{candles.SubjectAPICoverage, candles.SubjectAPISync, candles.SubjectAPIHealth} {
		checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
			_, err := r.nc.Request(subj, []byte(`{"probe":1}`), time.Second)
			return err
		})
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (r *alertRig) stop() {
	r.t.Helper()
	r.nc.Close()
	_ = r.up.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.up.done:
		if r.up.err != nil {
			r.t.Fatalf("candlekeep up exited with %v after SIGTERM; output:\n%s", r.up.err, r.up.out)
		}
	case <-time.After(30 * time.Second):
		r.t.Fatalf("candlekeep up did not stop within 30s of SIGTERM; output:\n%s", r.up.out)
	}
}

// simAdmin sends one request to the simulator's admin API.
func (r *alertRig) simAdmin(method, path, body string) {
	r.t.Helper()
	req, err := http.NewRequest(method, r.simURL+path, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		r.t.Fatalf("%s %s %s: %s %s", method, path, body, resp.Status, b)
	}
}

// sync asks for a run with body and waits for its sync.completed.
func (r *alertRig) sync(body string) candles.SyncCompleted {
	r.t.Helper()
	ev := watchEvents(r.t, r.nc)
	acc := requestSync(r.t, r.nc, body)
	var done candles.SyncCompleted
	ev.wait(r.t, candles.KindSyncCompleted, acc.RunID, time.Minute, &done)
	return done
}

// health runs the real binary's `candlekeep health --json`.
func (r *alertRig) health() (int, candles.HealthReport) {
	r.t.Helper()
	cmd := exec.Command(binary(r.t), "health", "--json", "--nats-url", r.natsURL)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		r.t.Fatal(err)
	}
	var hr candles.HealthReport
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &hr); err != nil {
			r.t.Fatalf("health --json printed %q: %v", out.String(), err)
		}
	}
	return code, hr
}

// waitHealth waits until `candlekeep health` exits with code and its report
// satisfies ok; it returns that report.
func (r *alertRig) waitHealth(code int, timeout time.Duration, ok func(candles.HealthReport) error) candles.HealthReport {
	r.t.Helper()
	var hr candles.HealthReport
	checkfor.Check(r.t, timeout, 100*time.Millisecond, func() error {
		got, rep := r.health()
		if got != code {
			return fmt.Errorf("health exit %d, want %d: %+v", got, code, rep)
		}
		if ok != nil {
			if err := ok(rep); err != nil {
				return err
			}
		}
		hr = rep
		return nil
	})
	return hr
}

func firingIn(hr candles.HealthReport, alert string) bool {
	return slices.ContainsFunc(hr.Firing, func(a candles.AlertEvent) bool { return a.Alert == alert })
}

// Data goes stale: the exchange's clock is 30 h behind when the first sync
// runs, so the newest candle is 30 h old by the monitor's clock (limit 26 h).
// CandlekeepDataStale fires once; `candlekeep up` is restarted while it
// fires and sends nothing again; once the clock is back and a sync caught
// up, it resolves once, and `candlekeep health` goes from 1 to 0.
func TestAlertDataStale(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "20", "--catch-up=false")
	r.simAdmin(http.MethodPost, "/sim/clock", `{"offset":"-30h"}`)
	r.start()
	r.sync(`{}`)
	r.inbox.waitFor(t, "CandlekeepDataStale", "FIRING", 30*time.Second)
	r.waitHealth(1, 10*time.Second, func(hr candles.HealthReport) error {
		if c := checkNamed(hr, "freshness"); c.Status != candles.CheckFail || c.Value != "2/2 pairs stale" {
			return fmt.Errorf("freshness %+v", c)
		}
		if !firingIn(hr, "CandlekeepDataStale") {
			return fmt.Errorf("CandlekeepDataStale not among the firing alerts: %+v", hr.Firing)
		}
		return nil
	})

	// A restart while it fires: the new monitor takes the alert over from
	// its KV state, and evaluates the still-stale data a few times.
	r.stop()
	restarted := time.Now()
	r.start()
	r.waitHealth(1, 30*time.Second, func(hr candles.HealthReport) error {
		if hr.At.Before(restarted.Add(5 * 200 * time.Millisecond)) {
			return fmt.Errorf("report at %v: not five evaluations after the restart yet", hr.At)
		}
		if !firingIn(hr, "CandlekeepDataStale") {
			return fmt.Errorf("CandlekeepDataStale not among the firing alerts after the restart: %+v", hr.Firing)
		}
		return nil
	})

	// The clock is back; a sync catches up: resolved.
	r.simAdmin(http.MethodPost, "/sim/clock", `{}`)
	standInBackup(t, r.nc, time.Now())
	r.sync(`{}`)
	r.inbox.waitFor(t, "CandlekeepDataStale", "RESOLVED", 30*time.Second)
	r.waitHealth(0, time.Minute, func(hr candles.HealthReport) error {
		if firingIn(hr, "CandlekeepDataStale") {
			return fmt.Errorf("CandlekeepDataStale still firing: %+v", hr.Firing)
		}
		return nil
	})
	r.inbox.assertExactly(t, "CandlekeepDataStale", "critical")
}

// The database file is damaged under the running writer (pages in the
// middle of the candles b-tree overwritten): the quick_check the monitor
// asks the writer for at each evaluation finds it (integrity.failed), and
// CandlekeepDatabaseCorrupt fires (the test asserts it arrives, not how
// fast: BenchmarkFaultToSlack measures that). Following the runbook (stop,
// move the file aside, start again: the writer rebuilds it from CANDLES)
// resolves it once.
func TestAlertDatabaseCorrupt(t *testing.T) {
	// Automatic restore off: this test follows the alert and the runbook
	// (restore_test.go shows the automatic recovery).
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h", "--lookback", "1000", "--catch-up=false", "--auto-restore=false")
	dbPath := filepath.Join(r.dataDir, databaseFile)
	r.start()
	done := r.sync(`{}`)
	if done.PairsOK != 2 || done.Candles != 2000 {
		t.Fatalf("sync.completed = %+v", done)
	}
	// The disk goes bad under the running writer (the checkpoint that
	// CorruptCandles needs waits for a moment without readers).
	startedAt := time.Now().Add(-time.Second)
	checkfor.Check(t, 30*time.Second, 50*time.Millisecond, func() error {
		_, err := storetest.CorruptCandles(dbPath, 4)
		return err
	})
	ev := watchEventsSince(t, r.nc, startedAt)
	var failed candles.IntegrityFailed
	ev.wait(t, candles.KindIntegrityFailed, "", time.Minute, &failed)
	if failed.Database != dbPath || len(failed.Problems) == 0 {
		t.Fatalf("integrity.failed = %+v", failed)
	}
	r.inbox.waitFor(t, "CandlekeepDatabaseCorrupt", "FIRING", 30*time.Second)
	r.waitHealth(1, 10*time.Second, func(hr candles.HealthReport) error {
		if c := checkNamed(hr, "integrity"); c.Status != candles.CheckFail || c.Value != "damaged" {
			return fmt.Errorf("integrity %+v", c)
		}
		if !firingIn(hr, "CandlekeepDatabaseCorrupt") {
			return fmt.Errorf("CandlekeepDatabaseCorrupt not among the firing alerts: %+v", hr.Firing)
		}
		return nil
	})

	// The runbook: stop, move the file aside, start again.
	r.stop()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(dbPath+suffix, dbPath+suffix+".corrupt"); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	r.start()
	r.inbox.waitFor(t, "CandlekeepDatabaseCorrupt", "RESOLVED", 30*time.Second)
	standInBackup(t, r.nc, time.Now())
	r.waitHealth(0, time.Minute, func(hr candles.HealthReport) error {
		if c := checkNamed(hr, "integrity"); c.Status != candles.CheckOK {
			return fmt.Errorf("integrity %+v", c)
		}
		return nil
	})
	if n := rowCount(t, dbPath); n != 2000 {
		t.Fatalf("the rebuilt database holds %d candles, want 2000", n)
	}
	r.inbox.assertExactly(t, "CandlekeepDatabaseCorrupt", "critical")
}

// A run still open past --sync-timeout (1s here; the exchange answers in
// 700ms and one pair is fetched at a time) is closed with sync.timeout:
// CandlekeepSyncTimeout fires once, and resolves once the (scaled) 1 h
// window, 3.6s, holds no timeout any more.
func TestAlertSyncTimeout(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT", "--intervals", "4h", "--lookback", "5",
		"--catch-up=false", "--fetch-concurrency", "1", "--sync-timeout", "1s")
	r.start()
	r.simAdmin(http.MethodPost, "/sim/latency", `{"latency":"700ms"}`)
	ev := watchEvents(t, r.nc)
	acc := requestSync(t, r.nc, `{}`)
	var to candles.SyncTimeout
	ev.wait(t, candles.KindSyncTimeout, acc.RunID, time.Minute, &to)
	if len(to.OpenPairs) == 0 || to.PairsOK+len(to.OpenPairs) != 4 {
		t.Fatalf("sync.timeout = %+v", to)
	}
	r.inbox.waitFor(t, "CandlekeepSyncTimeout", "FIRING", 30*time.Second)
	// The run is closed; what it still fetches lands, quickly now.
	r.simAdmin(http.MethodPost, "/sim/latency", `{"latency":"0s"}`)
	r.inbox.waitFor(t, "CandlekeepSyncTimeout", "RESOLVED", 30*time.Second)
	r.inbox.assertExactly(t, "CandlekeepSyncTimeout", "critical")
}

// The exchange bans the IP (418) during a sync: the fetcher pauses and
// announces ratelimit.banned; CandlekeepRateLimitAbuse fires once and
// resolves once the (scaled) 1 h window, 3.6s, holds no ban any more.
func TestAlertRateLimitBan(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "5", "--catch-up=false")
	r.start()
	r.simAdmin(http.MethodPost, "/sim/faults", `{"kind":"ban","path":"/api/v3/klines","count":1,"retry_after":"1s"}`)
	ev := watchEvents(t, r.nc)
	done := r.sync(`{}`)
	if done.PairsOK != 2 {
		t.Fatalf("sync.completed = %+v", done)
	}
	// Requests in flight when the ban starts may each meet the 418: one
	// ban, announced at least once, and one alert whatever the count.
	if got := len(ev.of(candles.KindRateLimitBanned, "")); got < 1 {
		t.Fatal("no ratelimit.banned event")
	}
	r.inbox.waitFor(t, "CandlekeepRateLimitAbuse", "FIRING", 30*time.Second)
	r.inbox.waitFor(t, "CandlekeepRateLimitAbuse", "RESOLVED", 30*time.Second)
	r.inbox.assertExactly(t, "CandlekeepRateLimitAbuse", "warning")
}

// A configured symbol the exchange does not list fails with -1121
// (pair.failed): CandlekeepPipelineErrors fires for the failure and, once
// the pair has stayed incomplete for the (scaled) 30 min, 1.8s,
// CandlekeepMissingSymbols too; one message each. Dropping the symbol from
// the configuration resolves both, once each.
func TestAlertMissingSymbol(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,NOSUCHUSDT", "--intervals", "4h", "--lookback", "5", "--catch-up=false")
	r.start()
	ev := watchEvents(t, r.nc)
	done := r.sync(`{}`)
	if done.PairsOK != 1 || done.PairsFailed != 1 {
		t.Fatalf("sync.completed = %+v", done)
	}
	var pf candles.PairFailed
	ev.wait(t, candles.KindPairFailed, "", time.Minute, &pf)
	if pf.Symbol != "NOSUCHUSDT" {
		t.Fatalf("pair.failed = %+v", pf)
	}
	r.inbox.waitFor(t, "CandlekeepPipelineErrors", "FIRING", 30*time.Second)
	r.inbox.waitFor(t, "CandlekeepMissingSymbols", "FIRING", 30*time.Second)

	if code, out, errOut := runCmd(t, "config", "set", "symbols=BTCUSDT", "--nats-url", r.natsURL); code != 0 {
		t.Fatalf("config set: exit %d\n%s%s", code, out, errOut)
	}
	r.inbox.waitFor(t, "CandlekeepMissingSymbols", "RESOLVED", 30*time.Second)
	r.inbox.waitFor(t, "CandlekeepPipelineErrors", "RESOLVED", 30*time.Second)
	r.inbox.assertExactly(t, "CandlekeepMissingSymbols", "warning")
	r.inbox.assertExactly(t, "CandlekeepPipelineErrors", "info")
}

// A pair the exchange keeps failing (503 on every klines request for
// ETHUSDT) fails after --max-attempts: CandlekeepPipelineErrors fires once
// and resolves once the (scaled) 1 h window, 3.6s, holds no failure. The
// pair's data from the first sync is still fresh and complete, so
// CandlekeepMissingSymbols says nothing.
func TestAlertPairFailures(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "5", "--catch-up=false",
		"--max-attempts", "2")
	r.start()
	if done := r.sync(`{}`); done.PairsOK != 2 {
		t.Fatalf("first sync.completed = %+v", done)
	}
	r.simAdmin(http.MethodPost, "/sim/faults", `{"kind":"status","path":"/api/v3/klines","symbol":"ETHUSDT","status":503}`)
	done := r.sync(`{}`)
	if done.PairsOK != 1 || done.PairsFailed != 1 {
		t.Fatalf("sync.completed with a failing pair = %+v", done)
	}
	r.inbox.waitFor(t, "CandlekeepPipelineErrors", "FIRING", 30*time.Second)
	r.simAdmin(http.MethodDelete, "/sim/faults", "")
	r.inbox.waitFor(t, "CandlekeepPipelineErrors", "RESOLVED", 30*time.Second)
	r.inbox.assertExactly(t, "CandlekeepPipelineErrors", "info")
	if got := r.inbox.of("CandlekeepMissingSymbols"); len(got) != 0 {
		t.Errorf("CandlekeepMissingSymbols messages for a pair whose data is complete: %v", got)
	}
}

// A restore drill fails: every hot copy is damaged on disk (bytes in the
// middle overwritten, so no sha256 matches) and `candlekeep drill` finds
// nothing that restores: drill.failed, the backup check fails naming the
// tier, and CandlekeepBackupDrillFailed fires once. A fresh backup and a
// drill that passes resolve it once.
func TestAlertBackupDrillFailed(t *testing.T) {
	r := newAlertRig(t, sim.Options{}, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "4h", "--lookback", "20", "--catch-up=false")
	r.start()
	r.sync(`{}`)
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		cmd := exec.Command(binary(t), append(args, "--nats-url", r.natsURL)...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Fatalf("candlekeep %v: exit %d, want %d\n%s", args, code, wantCode, out)
		}
		return string(out)
	}
	cli(0, "backup", "now")

	hotDir := filepath.Join(r.dataDir, "backups", "hot")
	copies, err := filepath.Glob(filepath.Join(hotDir, "*.zst"))
	if err != nil || len(copies) == 0 {
		t.Fatalf("no hot copies in %s (%v)", hotDir, err)
	}
	for _, c := range copies {
		f, err := os.OpenFile(c, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), fi.Size()/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	out := cli(1, "drill")
	if !strings.Contains(out, "hot") {
		t.Errorf("drill output does not name the hot tier:\n%s", out)
	}
	r.inbox.waitFor(t, "CandlekeepBackupDrillFailed", "FIRING", 30*time.Second)
	r.waitHealth(1, 10*time.Second, func(hr candles.HealthReport) error {
		c := checkNamed(hr, "backup")
		if c.Status != candles.CheckFail || !strings.Contains(c.Reason, "failed: hot: no copy verifies") {
			return fmt.Errorf("backup check %+v", c)
		}
		if !firingIn(hr, "CandlekeepBackupDrillFailed") {
			return fmt.Errorf("CandlekeepBackupDrillFailed not among the firing alerts: %+v", hr.Firing)
		}
		return nil
	})

	cli(0, "backup", "now")
	cli(0, "drill")
	r.inbox.waitFor(t, "CandlekeepBackupDrillFailed", "RESOLVED", 30*time.Second)
	r.waitHealth(0, time.Minute, func(hr candles.HealthReport) error {
		if c := checkNamed(hr, "backup"); c.Status != candles.CheckOK || len(c.Details) == 0 || !strings.HasPrefix(c.Details[0], "last restore drill passed") {
			return fmt.Errorf("backup check %+v", c)
		}
		return nil
	})
	r.inbox.assertExactly(t, "CandlekeepBackupDrillFailed", "warning")
}
