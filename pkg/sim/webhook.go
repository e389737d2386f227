package sim

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// The webhook inbox: a Slack-compatible incoming webhook inside the
// simulator, so a staging stack or a container test that has no Slack
// workspace (and no route to one) can point the monitor's receivers at
// http://<sim>/sim/webhook/<name> and read what they would have posted.
const (
	maxWebhookPosts = 10000
	maxWebhookBody  = 1 << 20
)

// WebhookPost is one request the inbox received.
type WebhookPost struct {
	Path string    `json:"path"` // e.g. /sim/webhook/slack
	At   time.Time `json:"at"`
	Body string    `json:"body"`
}

// Webhooks returns the posts the inbox received, oldest first.
func (s *Sim) Webhooks() []WebhookPost {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]WebhookPost(nil), s.inbox...)
}

func (s *Sim) addWebhookRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sim/webhook/{name...}", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody+1))
		switch {
		case err != nil:
			adminError(w, http.StatusBadRequest, fmt.Errorf("webhook body: %w", err))
			return
		case len(body) > maxWebhookBody:
			adminError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("webhook body over %d bytes", maxWebhookBody))
			return
		}
		s.mu.Lock()
		if len(s.inbox) == maxWebhookPosts {
			s.inbox = s.inbox[1:] // keep the newest
		}
		s.inbox = append(s.inbox, WebhookPost{Path: r.URL.Path, At: time.Now().UTC(), Body: string(body)})
		s.mu.Unlock()
		// Slack answers 200 with the body "ok".
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /sim/webhook", func(w http.ResponseWriter, _ *http.Request) {
		writeAdmin(w, http.StatusOK, map[string]any{"posts": s.Webhooks()})
	})
	mux.HandleFunc("DELETE /sim/webhook", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.inbox = nil
		s.mu.Unlock()
		writeAdmin(w, http.StatusOK, map[string]any{"posts": []WebhookPost{}})
	})
}
