package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/url"
	"os"
	"strings"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/config"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/email"
	"github.com/candlekeep/candlekeep/services/monitor/notify/pagerduty"
	"github.com/candlekeep/candlekeep/services/monitor/notify/slack"
)

// Environment variables of the secrets that have no flag of their own: a
// password or routing key on the command line would show in ps and in
// shell history, so they come from the environment or a file.
const (
	envSMTPPassword         = config.EnvPrefix + "SMTP_PASSWORD"
	envPagerDutyRoutingKey  = config.EnvPrefix + "PAGERDUTY_ROUTING_KEY"
	defaultPagerDutyURL     = "https://events.pagerduty.com"
	receiverSlack           = "slack"
	receiverEmail           = "email"
	receiverPagerDuty       = "pagerduty"
	flagSlackWebhookURL     = "slack-webhook-url"
	flagSlackWebhookURLFile = "slack-webhook-url-file"
)

// receiverFlags are the notification receivers' flags, shared by
// `candlekeep monitor` and `candlekeep up`. None has a secret default, and
// config.SetUsage prints defaults only (never the environment), so --help
// shows no secret whatever the environment holds.
type receiverFlags struct {
	slackURL, slackURLFile string
	smtpAddr, smtpFrom     string
	smtpTo                 config.List
	smtpUsername           string
	smtpPasswordFile       string
	smtpStartTLS           string
	pagerDutyKeyFile       string
	pagerDutyURL           string
}

func (r *receiverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.slackURL, flagSlackWebhookURL, "", "Slack incoming webhook URL for the alerts (a secret: prefer the environment variable or --"+flagSlackWebhookURLFile+")")
	fs.StringVar(&r.slackURLFile, flagSlackWebhookURLFile, "", "file holding the Slack incoming webhook URL (e.g. a mounted secret)")
	fs.StringVar(&r.smtpAddr, "smtp-addr", "", "SMTP server host:port for alert e-mails (off when empty; needs --smtp-from and --smtp-to)")
	fs.StringVar(&r.smtpFrom, "smtp-from", "", "sender address of alert e-mails")
	fs.Var(&r.smtpTo, "smtp-to", "recipients of alert e-mails (comma-separated addresses)")
	fs.StringVar(&r.smtpUsername, "smtp-username", "", "SMTP AUTH user name (the password comes from --smtp-password-file or "+envSMTPPassword+")")
	fs.StringVar(&r.smtpPasswordFile, "smtp-password-file", "", "file holding the SMTP password (or set "+envSMTPPassword+")")
	fs.StringVar(&r.smtpStartTLS, "smtp-starttls", email.StartTLSMandatory, "STARTTLS to the SMTP server: mandatory (a password never crosses the network in clear), opportunistic, or none (a relay on localhost)")
	fs.StringVar(&r.pagerDutyKeyFile, "pagerduty-routing-key-file", "", "file holding the PagerDuty Events API v2 routing key (or set "+envPagerDutyRoutingKey+"); PagerDuty is off without one")
	fs.StringVar(&r.pagerDutyURL, "pagerduty-url", defaultPagerDutyURL, "PagerDuty Events API base URL (/v2/enqueue is appended)")
}

// receiverSpec is the receivers resolved from the flags, the secret files
// and the environment. It holds secrets: never log or print it.
type receiverSpec struct {
	SlackWebhookURL string
	SMTP            *smtpSpec
	PagerDuty       *pagerDutySpec
}

type smtpSpec struct {
	Addr, From         string
	To                 []string
	Username, Password string
	StartTLS           string
}

type pagerDutySpec struct {
	RoutingKey, URL string
}

// names lists the receivers configured, for the log.
func (s receiverSpec) names() []string {
	var out []string
	if s.SlackWebhookURL != "" {
		out = append(out, receiverSlack)
	}
	if s.SMTP != nil {
		out = append(out, receiverEmail)
	}
	if s.PagerDuty != nil {
		out = append(out, receiverPagerDuty)
	}
	return out
}

// resolve reads the secret files and environment variables and checks
// every receiver setting. Its errors name the flag or variable and never
// contain a secret: a webhook URL that does not parse is reported without
// its text.
func (r *receiverFlags) resolve(getenv env) (receiverSpec, error) {
	var s receiverSpec
	var err error
	s.SlackWebhookURL, err = secret(flagSlackWebhookURL, r.slackURL, r.slackURLFile)
	if err != nil {
		return s, err
	}
	if s.SlackWebhookURL != "" {
		src := "--" + flagSlackWebhookURL
		if r.slackURLFile != "" {
			src = "--" + flagSlackWebhookURLFile + " " + r.slackURLFile
		}
		if err := checkHTTPURL(s.SlackWebhookURL); err != nil {
			// The URL is the secret: say what is wrong, not what it is.
			return s, fmt.Errorf("%s: the Slack webhook URL %v (want https://hooks.slack.com/services/…)", src, err)
		}
	}

	if s.SMTP, err = r.smtp(getenv); err != nil {
		return s, err
	}

	key, err := secretEnv("pagerduty-routing-key-file", r.pagerDutyKeyFile, envPagerDutyRoutingKey, getenv)
	if err != nil {
		return s, err
	}
	if err := checkHTTPURL(r.pagerDutyURL); err != nil {
		return s, fmt.Errorf("--pagerduty-url %q: %v", r.pagerDutyURL, err)
	}
	if key != "" {
		s.PagerDuty = &pagerDutySpec{RoutingKey: key, URL: strings.TrimRight(r.pagerDutyURL, "/")}
	}
	return s, nil
}

func (r *receiverFlags) smtp(getenv env) (*smtpSpec, error) {
	password, err := secretEnv("smtp-password-file", r.smtpPasswordFile, envSMTPPassword, getenv)
	if err != nil {
		return nil, err
	}
	if r.smtpAddr == "" {
		for _, f := range []struct {
			name string
			set  bool
		}{{"--smtp-from", r.smtpFrom != ""}, {"--smtp-to", len(r.smtpTo) > 0}, {"--smtp-username", r.smtpUsername != ""},
			{"--smtp-password-file or " + envSMTPPassword, password != ""}} {
			if f.set {
				return nil, fmt.Errorf("%s is set but --smtp-addr is not: give the SMTP server as host:port, or drop %s", f.name, f.name)
			}
		}
		return nil, nil
	}
	if host, port, err := net.SplitHostPort(r.smtpAddr); err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("--smtp-addr %q: want host:port, such as smtp.example.com:587", r.smtpAddr)
	}
	if r.smtpFrom == "" || len(r.smtpTo) == 0 {
		return nil, errors.New("--smtp-addr is set: --smtp-from and --smtp-to are needed too (sender and recipients of the alert e-mails)")
	}
	if _, err := mail.ParseAddress(r.smtpFrom); err != nil {
		return nil, fmt.Errorf("--smtp-from %q: not an e-mail address: %v", r.smtpFrom, err)
	}
	for _, to := range r.smtpTo {
		if _, err := mail.ParseAddress(to); err != nil {
			return nil, fmt.Errorf("--smtp-to: %q is not an e-mail address: %v", to, err)
		}
	}
	switch r.smtpStartTLS {
	case email.StartTLSMandatory, email.StartTLSOpportunistic, email.StartTLSNone:
	default:
		return nil, fmt.Errorf("--smtp-starttls %q: want mandatory, opportunistic or none", r.smtpStartTLS)
	}
	if r.smtpUsername != "" && password == "" {
		return nil, fmt.Errorf("--smtp-username is set but no password: give --smtp-password-file or %s", envSMTPPassword)
	}
	if r.smtpUsername == "" && password != "" {
		return nil, fmt.Errorf("an SMTP password is set but --smtp-username is not: give the user name to authenticate as")
	}
	return &smtpSpec{Addr: r.smtpAddr, From: r.smtpFrom, To: append([]string(nil), r.smtpTo...),
		Username: r.smtpUsername, Password: password, StartTLS: r.smtpStartTLS}, nil
}

// secret is the value of the secret flag name, given directly or in the
// file of its --<name>-file flag (not both).
func secret(name, value, file string) (string, error) {
	if value != "" && file != "" {
		return "", fmt.Errorf("--%s and --%s-file are both set: give one", name, name)
	}
	if file == "" {
		return strings.TrimSpace(value), nil
	}
	return readSecretFile(name+"-file", file)
}

// secretEnv is a secret that comes from the file of flag fileFlag or from
// the environment variable envName (not both).
func secretEnv(fileFlag, file, envName string, getenv env) (string, error) {
	v, inEnv := getenv(envName)
	v = strings.TrimSpace(v)
	if file != "" && inEnv && v != "" {
		return "", fmt.Errorf("--%s and %s are both set: give one", fileFlag, envName)
	}
	if file == "" {
		return v, nil
	}
	return readSecretFile(fileFlag, file)
}

// readSecretFile reads a secret from path, trimmed of the newline editors
// and `echo` leave. The error names the flag and the path, not the content.
func readSecretFile(flagName, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("--%s %s: the file is empty", flagName, path)
	}
	return v, nil
}

// checkHTTPURL says what is wrong with u as an http(s) endpoint, without
// repeating u (it may be a secret).
func checkHTTPURL(u string) error {
	p, err := url.Parse(u)
	if err != nil {
		return errors.New("does not parse as a URL")
	}
	if p.Scheme != "http" && p.Scheme != "https" {
		return errors.New("is not an http(s) URL")
	}
	if p.Host == "" {
		return errors.New("has no host")
	}
	return nil
}

// notifiers builds the configured receivers (each validates its options
// again, without echoing a secret).
func (s receiverSpec) notifiers() (map[string]notify.Notifier, error) {
	out := map[string]notify.Notifier{}
	if s.SlackWebhookURL != "" {
		n, err := slack.New(slack.Options{WebhookURL: s.SlackWebhookURL})
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flagSlackWebhookURL, err)
		}
		out[receiverSlack] = n
	}
	if e := s.SMTP; e != nil {
		n, err := email.New(email.Options{Addr: e.Addr, From: e.From, To: e.To, Username: e.Username, Password: e.Password, StartTLS: e.StartTLS})
		if err != nil {
			return nil, fmt.Errorf("--smtp-addr: %w", err)
		}
		out[receiverEmail] = n
	}
	if p := s.PagerDuty; p != nil {
		n, err := pagerduty.New(pagerduty.Options{RoutingKey: p.RoutingKey, URL: p.URL})
		if err != nil {
			return nil, fmt.Errorf("--pagerduty-routing-key-file: %w", err)
		}
		out[receiverPagerDuty] = n
	}
	return out, nil
}

// logReceivers says which receivers get the alerts, never their secrets.
func (s receiverSpec) logReceivers(log *slog.Logger) {
	if s.SlackWebhookURL != "" {
		log.Info("slack receiver configured")
	}
	if e := s.SMTP; e != nil {
		log.Info("email receiver configured", "smtp_addr", e.Addr, "from", e.From, "to", e.To, "auth", e.Username != "", "starttls", e.StartTLS)
	}
	if p := s.PagerDuty; p != nil {
		log.Info("pagerduty receiver configured", "url", candles.RedactURL(p.URL))
	}
	if len(s.names()) == 0 {
		log.Warn("no alert receivers configured: alerts are published as alert.firing events only " +
			"(set CANDLEKEEP_SLACK_WEBHOOK_URL, --smtp-addr or CANDLEKEEP_PAGERDUTY_ROUTING_KEY)")
	}
}
