// Package slack posts candlekeep notifications to a Slack incoming webhook
// as Block Kit messages, the way Alertmanager's notify/slack does: one
// message per alert group event, temporary failures (429, 5xx, network)
// reported as retryable, and errors that never show the webhook URL, which
// is the credential.
package slack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// Options configure a Notifier.
type Options struct {
	// WebhookURL is the incoming webhook; it is a secret.
	WebhookURL string
	// HTTPClient posts the messages; nil uses a client with a 10 s timeout.
	HTTPClient *http.Client
	// Channel overrides the webhook's channel when set (legacy webhooks).
	Channel string
	// Now dates the "for 3h12m" of a repeat; nil is time.Now.
	Now func() time.Time
}

// Validate checks the webhook URL without ever echoing it.
func (o Options) Validate() error {
	if o.WebhookURL == "" {
		return errors.New("slack: no webhook URL (set the Slack webhook URL to enable Slack)")
	}
	u, err := url.Parse(o.WebhookURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("slack: webhook URL is not an http(s) URL")
	}
	return nil
}

// Notifier posts to one Slack webhook.
type Notifier struct {
	o Options
}

var _ notify.Notifier = (*Notifier)(nil)

// New returns a Notifier for o.
func New(o Options) (*Notifier, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Notifier{o: o}, nil
}

// Notify posts n. A 429 with Retry-After comes back as a
// notify.RetryAfterError.
func (s *Notifier) Notify(ctx context.Context, n notify.Notification) (bool, error) {
	msg := Message(n, s.o.Now())
	msg.Channel = s.o.Channel
	err := slack.PostWebhookCustomHTTPContext(ctx, s.o.WebhookURL, s.o.HTTPClient, msg)
	if err == nil {
		return false, nil
	}
	retry, err := s.classify(ctx, err)
	return retry, err
}

// classify decides whether a failed post is worth another try and turns
// the error into one that names Slack and not the webhook URL.
func (s *Notifier) classify(ctx context.Context, err error) (bool, error) {
	var rl *slack.RateLimitedError
	var sc slack.StatusCodeError
	var ue *url.Error
	var ne *strconv.NumError
	switch {
	case errors.As(err, &rl):
		return true, &notify.RetryAfterError{After: rl.RetryAfter,
			Err: fmt.Errorf("slack: rate limited (429), retry after %v", rl.RetryAfter)}
	case errors.As(err, &sc):
		e := fmt.Errorf("slack: webhook answered %s", sc.Status)
		return sc.Code == http.StatusTooManyRequests || sc.Code >= 500, e
	case errors.As(err, &ue):
		// url.Error quotes the URL; its inner error is the network's.
		return true, fmt.Errorf("slack: post webhook: %s", s.redact(ue.Err.Error()))
	case errors.As(err, &ne):
		// slack-go could not read a 429's Retry-After: still a 429.
		return true, errors.New("slack: rate limited (429) with an unreadable Retry-After")
	case ctx.Err() != nil:
		return true, fmt.Errorf("slack: post webhook: %w", ctx.Err())
	}
	return true, fmt.Errorf("slack: post webhook: %s", s.redact(err.Error()))
}

// redact removes the webhook URL, and its path alone (the secret part),
// from text.
func (s *Notifier) redact(text string) string {
	text = strings.ReplaceAll(text, s.o.WebhookURL, "(webhook URL redacted)")
	if u, err := url.Parse(s.o.WebhookURL); err == nil && len(u.Path) > 1 {
		text = strings.ReplaceAll(text, u.Path, "/(redacted)")
	}
	return text
}
