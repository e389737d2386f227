package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
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

func newAlertInbox(t *testing.T) *alertInbox {
	t.Helper()
	in := &alertInbox{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m, err := decodeSlack(body)
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
func (in *alertInbox) waitFor(t *testing.T, alert, kind string, timeout time.Duration) {
	t.Helper()
	checkfor.Check(t, timeout, 50*time.Millisecond, func() error {
		for _, m := range in.of(alert) {
			if m.Kind == kind {
				return nil
			}
		}
		return fmt.Errorf("no %s %s message; the webhook has %v", alert, kind, in.all())
	})
}

// assertExactly checks that the messages about alert are exactly one
// FIRING and one RESOLVED (or the kinds given), with severity, and that
// every body was a message the monitor makes.
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
	for i := range got {
		got[i].Text = ""
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
	t       *testing.T
	sim     *sim.Sim
	simURL  string
	inbox   *alertInbox
	dataDir string
	args    []string // the flags of every start, after the common ones
	up      *proc
	natsURL string
	nc      *nats.Conn
}

func newAlertRig(t *testing.T, so sim.Options, args ...string) *alertRig {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end with processes; runs without -short")
	}
	s, simURL := startSim(t, so)
	return &alertRig{t: t, sim: s, simURL: simURL, inbox: newAlertInbox(t), dataDir: t.TempDir(), args: args}
}

// start runs `candlekeep up` on the rig's data directory (new NATS and
// HTTP ports each time) and waits until the writer, the fetcher and the
// monitor answer.
func (r *alertRig) start() {
	t := r.t
	t.Helper()
	natsAddr := freeAddr(t)
	args := append([]string{"up", "--data-dir", r.dataDir, "--nats-listen", natsAddr, "--http-listen", freeAddr(t),
		"--sync-schedule", "off", "--retry-base", "100ms", "--log-format", "json",
		"--eval-interval", alertEval, "--rule-time-scale", alertTimeScale, "--slack-webhook-url", r.inbox.url}, r.args...)
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
	stopProc(r.t, r.up)
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

func firing(hr candles.HealthReport, alert string) bool {
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
		if !firing(hr, "CandlekeepDataStale") {
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
		if !firing(hr, "CandlekeepDataStale") {
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
		if firing(hr, "CandlekeepDataStale") {
			return fmt.Errorf("CandlekeepDataStale still firing: %+v", hr.Firing)
		}
		return nil
	})
	r.inbox.assertExactly(t, "CandlekeepDataStale", "critical")
}

