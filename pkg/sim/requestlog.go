package sim

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// RequestLog records when each API request reached the simulator and the
// status it got, for tests that check timing (nothing sent during a ban,
// Retry-After honoured). Admin requests under /sim/ are not recorded.
type RequestLog struct {
	mu   sync.Mutex
	reqs []LoggedRequest
}

// LoggedRequest is one API request as the simulator saw it.
type LoggedRequest struct {
	At     time.Time // when it arrived
	Path   string
	Query  string // the raw query string
	Status int
}

// Wrap returns next with every API request recorded in l.
func (l *RequestLog) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		if strings.HasPrefix(r.URL.Path, "/sim/") {
			return
		}
		l.mu.Lock()
		l.reqs = append(l.reqs, LoggedRequest{At: at, Path: r.URL.Path, Query: r.URL.RawQuery, Status: rec.status})
		l.mu.Unlock()
	})
}

// All returns the requests recorded so far, oldest first.
func (l *RequestLog) All() []LoggedRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reqs)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}
