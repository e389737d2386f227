package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// secretURL is a webhook URL shaped like Slack's; no output may contain it.
const secretURL = "https://hooks.slack.com/services/T000/B000/s3cr3tT0k3n"

// Bad monitor flags are refused at start, by `candlekeep monitor` and by
// `candlekeep up`, with exit 2 and a message naming the flag; a secret
// that is wrong is reported without its text.
func TestBadMonitorFlagsAreRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badURLFile := filepath.Join(dir, "bad-url")
	if err := os.WriteFile(badURLFile, []byte("hooks.slack.com/services/T000/B000/s3cr3tT0k3n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory is unreadable as a file for every user, root included.
	unreadable := filepath.Join(dir, "unreadable")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	smtp := []string{"--smtp-addr", "smtp.example.com:587", "--smtp-from", "candlekeep@example.com", "--smtp-to", "oncall@example.com"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"webhook URL that does not parse", []string{"--slack-webhook-url", "https://hooks.slack.com/%zz/s3cr3tT0k3n"}, nil,
			[]string{"--slack-webhook-url", "does not parse"}},
		{"webhook URL that is not http(s)", []string{"--slack-webhook-url", "hooks.slack.com/services/s3cr3tT0k3n"}, nil,
			[]string{"--slack-webhook-url", "not an http(s) URL"}},
		{"webhook URL from the environment", nil, map[string]string{"CANDLEKEEP_SLACK_WEBHOOK_URL": "ftp://hooks.slack.com/s3cr3tT0k3n"},
			[]string{"--slack-webhook-url", "not an http(s) URL"}},
		{"webhook URL file holding no URL", []string{"--slack-webhook-url-file", badURLFile}, nil,
			[]string{"--slack-webhook-url-file " + badURLFile, "not an http(s) URL"}},
		{"webhook URL and file", []string{"--slack-webhook-url", secretURL, "--slack-webhook-url-file", badURLFile}, nil,
			[]string{"--slack-webhook-url and --slack-webhook-url-file are both set"}},
		{"webhook URL file missing", []string{"--slack-webhook-url-file", missing}, nil,
			[]string{"--slack-webhook-url-file", missing, "no such file"}},
		{"webhook URL file empty", []string{"--slack-webhook-url-file", empty}, nil, []string{"--slack-webhook-url-file " + empty, "empty"}},
		{"zero eval interval", []string{"--eval-interval", "0s"}, nil, []string{"--eval-interval 0s", "positive duration"}},
		{"negative max staleness", []string{"--max-staleness", "-1h"}, nil, []string{"--max-staleness -1h0m0s", "positive duration"}},
		{"zero repeat interval", nil, map[string]string{"CANDLEKEEP_ALERT_REPEAT_INTERVAL": "0s"}, []string{"--alert-repeat-interval 0s", "positive duration"}},
		{"eval interval too short", []string{"--eval-interval", "1ms"}, nil, []string{"--eval-interval 1ms", "at least 10ms"}},
		{"max staleness too short", []string{"--max-staleness", "30s"}, nil, []string{"--max-staleness 30s", "at least 1m0s"}},
		{"eval interval that is no duration", []string{"--eval-interval", "often"}, nil, []string{`"often" for flag --eval-interval`}},
		{"rule time scale zero", []string{"--rule-time-scale", "0"}, nil, []string{"--rule-time-scale 0", "above 0 and at most 1"}},
		{"rule time scale above one", []string{"--rule-time-scale", "1.5"}, nil, []string{"--rule-time-scale 1.5", "above 0 and at most 1"}},
		{"rule time scale NaN", []string{"--rule-time-scale", "NaN"}, nil, []string{"--rule-time-scale NaN", "above 0 and at most 1"}},
		{"sla schedule with 3 fields", []string{"--sla-schedule", "3 1 *"}, nil, []string{`--sla-schedule "3 1 *"`, "3 fields"}},
		{"sla schedule every half second", nil, map[string]string{"CANDLEKEEP_SLA_SCHEDULE": "@every 500ms"}, []string{`--sla-schedule "@every 500ms"`, "at least 1s"}},
		{"http listen without a port", []string{"--http-listen", "127.0.0.1"}, nil, []string{`--http-listen "127.0.0.1"`, "host:port"}},
		{"http listen without a host", []string{"--http-listen", ":9468"}, nil, []string{`--http-listen ":9468"`, "give the host"}},
		{"smtp addr without from and to", []string{"--smtp-addr", "smtp.example.com:587"}, nil,
			[]string{"--smtp-addr is set", "--smtp-from and --smtp-to"}},
		{"smtp addr without to", append(smtp[:4:4], "--smtp-username", "u"), nil, []string{"--smtp-from and --smtp-to"}},
		{"smtp addr without a port", []string{"--smtp-addr", "smtp.example.com"}, nil, []string{`--smtp-addr "smtp.example.com"`, "host:port"}},
		{"smtp to without addr", []string{"--smtp-to", "oncall@example.com"}, nil, []string{"--smtp-to is set but --smtp-addr is not"}},
		{"smtp to not an address", append(smtp[:4:4], "--smtp-to", "oncall"), nil, []string{"--smtp-to", `"oncall" is not an e-mail address`}},
		{"smtp user without password", append(smtp, "--smtp-username", "candlekeep"), nil,
			[]string{"--smtp-username is set but no password", "--smtp-password-file", "CANDLEKEEP_SMTP_PASSWORD"}},
		{"smtp password without user", smtp, map[string]string{"CANDLEKEEP_SMTP_PASSWORD": "hunter2"}, []string{"--smtp-username is not"}},
		{"smtp password file unreadable", append(smtp, "--smtp-username", "u", "--smtp-password-file", unreadable), nil,
			[]string{"--smtp-password-file", unreadable, "is a directory"}},
		{"smtp starttls unknown", append(smtp, "--smtp-starttls", "always"), nil, []string{`--smtp-starttls "always"`, "mandatory, opportunistic or none"}},
		{"routing key file and environment", []string{"--pagerduty-routing-key-file", badURLFile}, map[string]string{"CANDLEKEEP_PAGERDUTY_ROUTING_KEY": "k"},
			[]string{"--pagerduty-routing-key-file and CANDLEKEEP_PAGERDUTY_ROUTING_KEY are both set"}},
		{"routing key file missing", []string{"--pagerduty-routing-key-file", missing}, nil, []string{"--pagerduty-routing-key-file", "no such file"}},
		{"pagerduty url not http(s)", []string{"--pagerduty-url", "events.pagerduty.com"}, nil, []string{`--pagerduty-url "events.pagerduty.com"`, "http(s)"}},
	}
	for _, cmd := range []string{"monitor", "up"} {
		for _, tt := range tests {
			t.Run(cmd+"/"+tt.name, func(t *testing.T) {
				args := append([]string{cmd, "--data-dir", t.TempDir()}, tt.args...)
				if cmd == "monitor" {
					args = append([]string{cmd}, tt.args...)
				}
				var stdout, stderr bytes.Buffer
				code := run(t.Context(), args, &stdout, &stderr, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
				if code != 2 {
					t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr.String())
				}
				for _, w := range tt.want {
					if !strings.Contains(stderr.String(), w) {
						t.Fatalf("stderr does not say %q:\n%s", w, stderr.String())
					}
				}
				if strings.Contains(stderr.String()+stdout.String(), "s3cr3tT0k3n") || strings.Contains(stderr.String(), "hunter2") {
					t.Fatalf("a secret is in the output:\n%s", stderr.String())
				}
			})
		}
	}
}

// --help shows no secret, whatever the environment holds, and names where
// each secret may come from.
func TestHelpShowsNoSecret(t *testing.T) {
	env := map[string]string{
		"CANDLEKEEP_SLACK_WEBHOOK_URL":     secretURL,
		"CANDLEKEEP_SMTP_PASSWORD":         "hunter2",
		"CANDLEKEEP_PAGERDUTY_ROUTING_KEY": "R0UT1NGK3Y",
	}
	for _, cmd := range []string{"monitor", "up"} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{cmd, "--help"}, &stdout, &stderr, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		help := stdout.String() + stderr.String()
		if code != 0 {
			t.Fatalf("%s --help: exit %d\n%s", cmd, code, help)
		}
		for _, s := range []string{"s3cr3tT0k3n", "hunter2", "R0UT1NGK3Y"} {
			if strings.Contains(help, s) {
				t.Fatalf("%s --help shows the secret %q:\n%s", cmd, s, help)
			}
		}
		for _, w := range []string{"--slack-webhook-url  [CANDLEKEEP_SLACK_WEBHOOK_URL]", "--slack-webhook-url-file",
			"--smtp-password-file", "CANDLEKEEP_SMTP_PASSWORD", "--pagerduty-routing-key-file", "CANDLEKEEP_PAGERDUTY_ROUTING_KEY",
			`--http-listen  [CANDLEKEEP_HTTP_LISTEN] (default "127.0.0.1:9468")`, "--rule-time-scale", "for demos and tests"} {
			if !strings.Contains(help, w) {
				t.Fatalf("%s --help does not mention %q:\n%s", cmd, w, help)
			}
		}
	}
}

// Good receiver settings resolve from flags, files and the environment,
// each secret trimmed of the newline a file ends with.
func TestReceiversResolve(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	urlFile, pwFile, keyFile := file("url", secretURL+"\n"), file("pw", "hunter2\n"), file("key", "R0UT1NGK3Y\n")
	tests := []struct {
		name string
		r    receiverFlags
		env  map[string]string
		want receiverSpec
	}{
		{"none", receiverFlags{pagerDutyURL: defaultPagerDutyURL}, nil, receiverSpec{}},
		{"slack from the flag", receiverFlags{slackURL: secretURL, pagerDutyURL: defaultPagerDutyURL}, nil, receiverSpec{SlackWebhookURL: secretURL}},
		{"every receiver from files",
			receiverFlags{slackURLFile: urlFile, smtpAddr: "smtp.example.com:587", smtpFrom: "ck@example.com", smtpTo: []string{"a@example.com", "b@example.com"},
				smtpUsername: "ck", smtpPasswordFile: pwFile, smtpStartTLS: "mandatory", pagerDutyKeyFile: keyFile, pagerDutyURL: "http://127.0.0.1:8080/"}, nil,
			receiverSpec{SlackWebhookURL: secretURL,
				SMTP:      &smtpSpec{Addr: "smtp.example.com:587", From: "ck@example.com", To: []string{"a@example.com", "b@example.com"}, Username: "ck", Password: "hunter2", StartTLS: "mandatory"},
				PagerDuty: &pagerDutySpec{RoutingKey: "R0UT1NGK3Y", URL: "http://127.0.0.1:8080"}}},
		{"secrets from the environment",
			receiverFlags{smtpAddr: "smtp.example.com:25", smtpFrom: "ck@example.com", smtpTo: []string{"a@example.com"}, smtpUsername: "ck", smtpStartTLS: "opportunistic", pagerDutyURL: defaultPagerDutyURL},
			map[string]string{"CANDLEKEEP_SMTP_PASSWORD": "hunter2", "CANDLEKEEP_PAGERDUTY_ROUTING_KEY": "R0UT1NGK3Y"},
			receiverSpec{SMTP: &smtpSpec{Addr: "smtp.example.com:25", From: "ck@example.com", To: []string{"a@example.com"}, Username: "ck", Password: "hunter2", StartTLS: "opportunistic"},
				PagerDuty: &pagerDutySpec{RoutingKey: "R0UT1NGK3Y", URL: defaultPagerDutyURL}}},
		{"smtp relay without auth or TLS", receiverFlags{smtpAddr: "127.0.0.1:2525", smtpFrom: "ck@example.com", smtpTo: []string{"a@example.com"}, smtpStartTLS: "none", pagerDutyURL: defaultPagerDutyURL}, nil,
			receiverSpec{SMTP: &smtpSpec{Addr: "127.0.0.1:2525", From: "ck@example.com", To: []string{"a@example.com"}, StartTLS: "none"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.r.resolve(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			ns, err := got.notifiers()
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for name := range ns {
				names = append(names, name)
			}
			slices.Sort(names)
			want := got.names()
			slices.Sort(want)
			if !slices.Equal(names, want) {
				t.Fatalf("notifiers %v, want %v", names, want)
			}
		})
	}
}
