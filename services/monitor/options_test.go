package monitor

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natstest"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

func TestOptionsValidateNamesTheFlag(t *testing.T) {
	nc := natstest.Connect(t, natstest.RunServer(t))
	tests := []struct {
		name   string
		change func(o *Options)
		want   string // part of the error; "" for none
	}{
		{"defaults", func(o *Options) {}, ""},
		{"no HTTP", func(o *Options) { o.HTTPListen = "" }, ""},
		{"no connection", func(o *Options) { o.Conn = nil }, "--nats-url"},
		{"listen without a port", func(o *Options) { o.HTTPListen = "localhost" }, `--http-listen "localhost"`},
		{"evaluation interval", func(o *Options) { o.EvalInterval = 0 }, "--eval-interval 0s"},
		{"max staleness", func(o *Options) { o.MaxStaleness = -time.Hour }, "--max-staleness -1h0m0s"},
		{"repeat interval", func(o *Options) { o.RepeatInterval = 0 }, "--repeat-interval 0s"},
		{"a faster rule time", func(o *Options) { o.RuleTimeScale = 0.01 }, ""},
		{"rule time scale 0", func(o *Options) { o.RuleTimeScale = 0 }, "--rule-time-scale"},
		{"negative rule time scale", func(o *Options) { o.RuleTimeScale = -1 }, "--rule-time-scale"},
		{"replicas", func(o *Options) { o.Replicas = 0 }, "--stream-replicas 0"},
		{"receiver without notifier", func(o *Options) { o.Receivers = map[string]notify.Notifier{"slack": nil} }, `receiver "slack"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			o.Conn = nc
			tt.change(&o)
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestNotReadyAndCannotTellBeforeRunning(t *testing.T) {
	o := DefaultOptions()
	o.Conn = natstest.Connect(t, natstest.RunServer(t))
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.handler())
	defer srv.Close()
	get := func(path string) (int, []byte) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	code, body := get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "replaying the last hour of events") {
		t.Errorf("/readyz before the replay: %d %s, want 503 with the reason", code, body)
	}
	code, body = get("/healthz")
	var rep candles.HealthReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	if code != http.StatusServiceUnavailable || rep.Status != candles.CheckUnknown || len(rep.Checks) != 6 {
		t.Errorf("/healthz before any evaluation: %d %s with %d checks, want 503 unknown with 6", code, rep.Status, len(rep.Checks))
	}
	for _, c := range rep.Checks {
		if c.Status != candles.CheckUnknown {
			t.Errorf("%s is %s before any evaluation, want unknown", c.Name, c.Status)
		}
	}
}
