package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestMemoryLimitFlag(t *testing.T) {
	for in, want := range map[string]int64{"64MiB": 64 << 20, "1GiB": 1 << 30, "200MB": 200e6, "off": 0, "0": 0, "33554432": 32 << 20} {
		var m memoryFlag
		if err := m.Set(in); err != nil || m.bytes != want {
			t.Errorf("--memory-limit %s: %d, %v; want %d", in, m.bytes, err, want)
		}
	}
}

// Bad flags and environment are refused before anything starts, with exit
// code 2 and a message that names the flag and says what is allowed.
func TestBadFlagsAreRefusedAtStart(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"invalid schedule", []string{"up", "--sync-schedule", "every day"}, nil,
			[]string{"--sync-schedule", `"every day"`, "@every 30s", "6-field cron"}},
		{"schedule too often", []string{"fetcher", "--sync-schedule", "@every 100ms"}, nil,
			[]string{"--sync-schedule", "at least 1s"}},
		{"unknown interval", []string{"up", "--intervals", "4h,7m"}, nil, []string{"--intervals", `"7m" is not an interval`}},
		{"bad symbol", []string{"fetcher", "--symbols", "BTCUSDT,btc"}, nil, []string{"--symbols", `"btc" is not a symbol`}},
		{"bad binance url", []string{"up", "--binance-url", "api.binance.com"}, nil, []string{"--binance-url", "http(s) URL"}},
		{"bad lookback from the environment", []string{"up"}, map[string]string{"CANDLEKEEP_LOOKBACK": "ten"},
			[]string{"CANDLEKEEP_LOOKBACK", "--lookback"}},
		{"zero lookback", []string{"up", "--lookback", "0"}, nil, []string{`"0" for flag --lookback`, "1 to"}},
		{"unknown flag", []string{"writer", "--nats", "x"}, nil, []string{"flag provided but not defined: -nats"}},
		{"bad log level", []string{"sim", "--log-level", "loud"}, nil, []string{"--log-level", "debug, info, warn or error"}},
		{"unknown command", []string{"serve"}, nil, []string{`unknown command "serve"`, "Commands:"}},
		{"memory limit without a number", []string{"writer", "--memory-limit", "lots"}, nil, []string{"--memory-limit", "64MiB", "off"}},
		{"bad drill schedule", []string{"up", "--drill-schedule", "monthly"}, nil, []string{"--drill-schedule", `"monthly"`}},
		{"restore from an unknown tier", []string{"restore", "--from", "tepid"}, nil, []string{"--from", `"tepid"`, "hot, warm, cold"}},
		{"restore at a bad time", []string{"restore", "--at", "yesterday"}, nil, []string{"--at", `"yesterday"`, "RFC 3339"}},
		{"memory limit too small", []string{"up", "--memory-limit", "1MiB"}, nil, []string{"--memory-limit", "below 16MiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Fatalf("stderr does not say %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// --help explains every command's flags with their environment variables.
func TestHelpListsFlagsAndTheirEnvironmentVariables(t *testing.T) {
	for _, c := range commands() {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), []string{c.name, "--help"}, &stdout, &stderr, func(string) (string, bool) { return "", false }); code != 0 {
			t.Fatalf("%s --help: exit %d", c.name, code)
		}
		if !strings.Contains(stderr.String(), "Usage: candlekeep "+c.name) || !strings.Contains(stderr.String(), "  [CANDLEKEEP_") {
			t.Fatalf("%s --help:\n%s", c.name, stderr.String())
		}
	}
}

// --version names the build; `candlekeep version` says the same.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "version"} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), []string{arg}, &stdout, &stderr, func(string) (string, bool) { return "", false }); code != 0 {
			t.Fatalf("%s: exit %d\n%s", arg, code, stderr.String())
		}
		if got := stdout.String(); !strings.HasPrefix(got, "candlekeep ") || len(strings.TrimSpace(got)) <= len("candlekeep ") {
			t.Errorf("%s printed %q", arg, got)
		}
	}
}
