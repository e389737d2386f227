package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// newAdminMux routes the /sim/ endpoints documented in the package comment.
func (s *Sim) newAdminMux() *http.ServeMux {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, v any) { writeAdmin(w, http.StatusOK, v) }
	mux.HandleFunc("GET /sim/stats", func(w http.ResponseWriter, _ *http.Request) { ok(w, s.Stats()) })
	mux.HandleFunc("POST /sim/stats/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.ResetStats()
		ok(w, struct{}{})
	})
	mux.HandleFunc("GET /sim/faults", func(w http.ResponseWriter, _ *http.Request) { ok(w, s.Faults()) })
	mux.HandleFunc("POST /sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if !decodeAdmin(w, r, &f) {
			return
		}
		if err := f.Validate(); err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		s.AddFault(f)
		ok(w, s.Faults())
	})
	mux.HandleFunc("DELETE /sim/faults", func(w http.ResponseWriter, _ *http.Request) {
		s.ClearFaults()
		ok(w, []Fault{})
	})
	mux.HandleFunc("POST /sim/withhold", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Symbol   string `json:"symbol"`
			Interval string `json:"interval"`
			From     msTime `json:"from"`
			Until    msTime `json:"until"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		iv, err := candles.ParseInterval(req.Interval)
		switch {
		case !candles.ValidSymbol(req.Symbol):
			err = fmt.Errorf("withhold symbol %q is not a symbol", req.Symbol)
		case err != nil:
			err = fmt.Errorf("withhold: %w", err)
		case req.Until <= req.From:
			err = fmt.Errorf("withhold: until %d must be after from %d", req.Until, req.From)
		}
		if err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		s.Withhold(req.Symbol, iv, int64(req.From), int64(req.Until))
		ok(w, req)
	})
	clock := func(w http.ResponseWriter, _ *http.Request) {
		now := s.now()
		ok(w, map[string]any{"now": now.UTC().Format(time.RFC3339Nano), "ms": now.UnixMilli()})
	}
	mux.HandleFunc("GET /sim/clock", clock)
	mux.HandleFunc("POST /sim/clock", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Now    string `json:"now"`
			Offset string `json:"offset"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		switch {
		case req.Now != "" && req.Offset != "":
			adminError(w, http.StatusBadRequest, errors.New("clock: send now or offset, not both"))
			return
		case req.Now != "":
			t, err := time.Parse(time.RFC3339, req.Now)
			if err != nil {
				adminError(w, http.StatusBadRequest, fmt.Errorf("clock now: %w", err))
				return
			}
			s.SetClock(func() time.Time { return t })
		case req.Offset != "":
			d, err := time.ParseDuration(req.Offset)
			if err != nil {
				adminError(w, http.StatusBadRequest, fmt.Errorf("clock offset: %w", err))
				return
			}
			s.SetClock(func() time.Time { return time.Now().Add(d) })
		default:
			s.SetClock(nil)
		}
		clock(w, r)
	})
	mux.HandleFunc("POST /sim/latency", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Latency string `json:"latency"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		d, err := time.ParseDuration(req.Latency)
		if err != nil || d < 0 {
			adminError(w, http.StatusBadRequest, fmt.Errorf("latency %q: want a non-negative duration such as 50ms", req.Latency))
			return
		}
		s.SetLatency(d)
		ok(w, req)
	})
	s.addWebhookRoutes(mux)
	mux.HandleFunc("/sim/", func(w http.ResponseWriter, r *http.Request) {
		adminError(w, http.StatusNotFound, fmt.Errorf("no admin endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// msTime is a time given as ms since the epoch or as an RFC 3339 string.
type msTime int64

func (m *msTime) UnmarshalJSON(data []byte) error {
	var s string
	if json.Unmarshal(data, &s) == nil {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return fmt.Errorf("time %q: want ms or RFC 3339: %w", s, err)
		}
		*m = msTime(t.UnixMilli())
		return nil
	}
	var n int64
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("time %s: want ms or RFC 3339", data)
	}
	*m = msTime(n)
	return nil
}

// decodeAdmin reads a strict JSON body (empty means {}) or answers 400.
func decodeAdmin(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil && len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		adminError(w, http.StatusBadRequest, fmt.Errorf("%s body: %w", r.URL.Path, err))
		return false
	}
	return true
}

func adminError(w http.ResponseWriter, status int, err error) {
	writeAdmin(w, status, map[string]string{"error": err.Error()})
}

func writeAdmin(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(mustJSON(v), '\n'))
}
