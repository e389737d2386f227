package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// Defaults of the monitor's flags. 9468 is clear of Prometheus' 9090 and
// Alertmanager's 9093, and loopback keeps /metrics off the network unless
// an operator opens it.
const (
	defaultMonitorListen = "127.0.0.1:9468"
	defaultEvalInterval  = 15 * time.Second
	defaultRepeat        = 4 * time.Hour
)

// monitorFlags are the monitor's flags, shared by `candlekeep monitor` and
// `candlekeep up`.
type monitorFlags struct {
	httpListen    string
	evalInterval  time.Duration
	maxStaleness  time.Duration
	repeat        time.Duration
	ruleTimeScale float64
	receivers     receiverFlags
	sla           slaScheduleFlag
}

func (m *monitorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.httpListen, "http-listen", defaultMonitorListen, "host:port of the monitor's /metrics, /healthz and /readyz (loopback by default)")
	fs.DurationVar(&m.evalInterval, "eval-interval", defaultEvalInterval, "how often the monitor runs the health checks and evaluates the alert rules")
	fs.DurationVar(&m.maxStaleness, "max-staleness", candles.DefaultMaxStaleness, "a pair whose newest candle closed longer ago than this is stale (intervals longer than that get one interval plus 2h)")
	fs.DurationVar(&m.repeat, "alert-repeat-interval", defaultRepeat, "how often a still-firing CRITICAL alert is sent again")
	fs.Float64Var(&m.ruleTimeScale, "rule-time-scale", 1, "multiplies every alert rule's for and window: for demos and tests (0 < scale <= 1)")
	m.receivers.register(fs)
	m.sla.register(fs)
}

// monitorSettings are the monitor's validated settings. Receivers holds
// secrets: never log or print it.
type monitorSettings struct {
	HTTPListen     string
	EvalInterval   time.Duration
	MaxStaleness   time.Duration
	RepeatInterval time.Duration
	RuleTimeScale  float64
	// SLASchedule is --sla-schedule ("" runs no audit).
	SLASchedule string
	Receivers   receiverSpec
	// Notifiers are the receivers built from Receivers.
	Notifiers map[string]notify.Notifier
	// Ready, if set, is called with the HTTP listener's address once the
	// monitor serves (tests use it with --http-listen 127.0.0.1:0).
	Ready func(addr string)
	// Now is the monitor's clock (nil: time.Now); in-process tests move it.
	Now func() time.Time
}

// settings validates the flags and resolves the receivers' secrets. The
// error names the flag and says what is allowed.
func (m *monitorFlags) settings(getenv env) (monitorSettings, error) {
	s := monitorSettings{HTTPListen: m.httpListen, EvalInterval: m.evalInterval, MaxStaleness: m.maxStaleness,
		RepeatInterval: m.repeat, RuleTimeScale: m.ruleTimeScale, SLASchedule: m.sla.value}
	if err := m.sla.check(); err != nil {
		return s, err
	}
	if host, port, err := net.SplitHostPort(m.httpListen); err != nil || !validPort(port) {
		return s, fmt.Errorf("--http-listen %q: want host:port, such as %s", m.httpListen, defaultMonitorListen)
	} else if host == "" {
		// An empty host would listen on every interface: make an operator say so.
		return s, fmt.Errorf("--http-listen %q: give the host too (127.0.0.1 for this machine only, 0.0.0.0 for every interface)", m.httpListen)
	}
	// The minimums are the monitor's own (monitor.Options.Validate), checked
	// here so a bad value stops the command with exit 2 naming this flag.
	for _, d := range []struct {
		name, example string
		v, least      time.Duration
	}{{"eval-interval", "15s", m.evalInterval, 10 * time.Millisecond}, {"max-staleness", "26h", m.maxStaleness, time.Minute},
		{"alert-repeat-interval", "4h", m.repeat, time.Second}} {
		if d.v <= 0 {
			return s, fmt.Errorf("--%s %v: want a positive duration such as %s", d.name, d.v, d.example)
		}
		if d.v < d.least {
			return s, fmt.Errorf("--%s %v: want at least %v, such as %s", d.name, d.v, d.least, d.example)
		}
	}
	if !(m.ruleTimeScale > 0 && m.ruleTimeScale <= 1) { // also refuses NaN
		return s, fmt.Errorf("--rule-time-scale %v: want a number above 0 and at most 1 (1 in production; 0.01 makes a 10m rule fire after 6s)", m.ruleTimeScale)
	}
	var err error
	if s.Receivers, err = m.receivers.resolve(getenv); err != nil {
		return s, err
	}
	s.Notifiers, err = s.Receivers.notifiers()
	return s, err
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

func runMonitor(ctx context.Context, args []string, _, stderr io.Writer, getenv env) int {
	fs := flagSet("monitor", "candlekeep monitor [flags]",
		"Runs the monitor against --nats-url: the six health checks (candles.api.health,\n"+
			"/healthz, candlekeep health), the runs' progress (candles.api.status,\n"+
			"candlekeep status), Prometheus metrics of the whole system on /metrics, and\n"+
			"the eleven alert rules, sent to Slack, e-mail and PagerDuty as configured below\n"+
			"(docs/monitoring.md, docs/alerts.md). It needs no access to the database file.\n"+
			"candlekeep up runs one too; run this one when the services run apart.\n\n"+
			"Secrets (the Slack webhook URL, the SMTP password, the PagerDuty routing key)\n"+
			"are read from the environment or a file and never logged.", stderr)
	var lf logFlags
	lf.register(fs)
	var mf monitorFlags
	mf.register(fs)
	var nf natsFlags
	nf.register(fs)
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "candlekeep monitor:", err)
		return 2
	}
	ms, err := mf.settings(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep monitor: %v\n(see candlekeep monitor --help)\n", err)
		return 2
	}
	if err := serveMonitor(ctx, nf.c, ms, log); err != nil {
		return serviceExit(log, "monitor", err)
	}
	return 0
}

// storedSettings reads the cluster configuration without joining it: the
// stored values over the defaults. A process that only observes (the
// monitor) must not seed the configuration with its defaults.
func storedSettings(ctx context.Context, js jetstream.JetStream) (cluster.Settings, error) {
	s := cluster.Defaults()
	values, _, err := cluster.Load(ctx, js)
	if err != nil {
		return s, err
	}
	for name, v := range values {
		k, _ := cluster.KeyByName(name)
		if err := k.Set(&s, v); err != nil {
			return s, fmt.Errorf("the stored %s: %w", name, err)
		}
	}
	return s, nil
}
