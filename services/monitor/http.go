package monitor

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// handler serves /metrics, /healthz and /readyz on its own mux.
func (m *Monitor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.o.Registry, promhttp.HandlerOpts{
		ErrorLog: promLogger{m}, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		rep := m.Health()
		code := http.StatusOK
		if rep.Status != candles.CheckOK {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, rep)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, reason := m.ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ok, "reason": reason})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// promLogger sends promhttp's errors to the monitor's logger.
type promLogger struct{ m *Monitor }

func (l promLogger) Println(v ...any) { l.m.log.Warn("serve /metrics", "err", v) }
