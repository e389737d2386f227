// Package email sends candlekeep notifications as plain-text mail over
// SMTP (github.com/wneessen/go-mail), one message per notification. An
// unreachable server or a 4xx reply is temporary (retried); a 5xx reply is
// permanent. The password never appears in errors or logs.
package email

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// StartTLS policies.
const (
	// StartTLSMandatory refuses a server without STARTTLS (the default):
	// a password must not cross the network in clear.
	StartTLSMandatory = "mandatory"
	// StartTLSOpportunistic uses STARTTLS when the server offers it.
	StartTLSOpportunistic = "opportunistic"
	// StartTLSNone never encrypts: a relay on localhost or in a trusted
	// network.
	StartTLSNone = "none"
)

// DefaultTimeout bounds each SMTP command.
const DefaultTimeout = 10 * time.Second

// Options configure a Notifier.
type Options struct {
	// Addr is the SMTP server, host:port.
	Addr string
	From string
	To   []string
	// Username and Password authenticate when Username is set; Password is
	// a secret.
	Username string
	Password string
	// StartTLS is mandatory (default), opportunistic or none.
	StartTLS string
	// Timeout bounds each SMTP command; 0 is DefaultTimeout.
	Timeout time.Duration
	// Now dates the messages and the "for 3h12m" of a repeat; nil is
	// time.Now.
	Now func() time.Time
}

// Validate names what is wrong; it never shows the password.
func (o Options) Validate() error {
	var errs []error
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil || host == "" {
		errs = append(errs, fmt.Errorf("email: SMTP address %q: want host:port", o.Addr))
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		errs = append(errs, fmt.Errorf("email: SMTP address %q: bad port", o.Addr))
	}
	if _, err := mail.ParseAddress(o.From); err != nil {
		errs = append(errs, fmt.Errorf("email: from %q: %v", o.From, err))
	}
	if len(o.To) == 0 {
		errs = append(errs, errors.New("email: no recipient (to)"))
	}
	for _, to := range o.To {
		if _, err := mail.ParseAddress(to); err != nil {
			errs = append(errs, fmt.Errorf("email: to %q: %v", to, err))
		}
	}
	switch o.StartTLS {
	case "", StartTLSMandatory, StartTLSOpportunistic, StartTLSNone:
	default:
		errs = append(errs, fmt.Errorf("email: starttls %q: want mandatory, opportunistic or none", o.StartTLS))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("email: timeout %v: want a positive duration", o.Timeout))
	}
	return errors.Join(errs...)
}

// Notifier mails notifications to fixed recipients.
type Notifier struct {
	o    Options
	host string
	port int
}

var _ notify.Notifier = (*Notifier)(nil)

// New returns a Notifier for o.
func New(o Options) (*Notifier, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.StartTLS == "" {
		o.StartTLS = StartTLSMandatory
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	host, portStr, _ := net.SplitHostPort(o.Addr)
	port, _ := strconv.Atoi(portStr)
	return &Notifier{o: o, host: host, port: port}, nil
}

// Notify sends one message about n.
func (e *Notifier) Notify(ctx context.Context, n notify.Notification) (bool, error) {
	now := e.o.Now()
	msg := gomail.NewMsg()
	if err := msg.From(e.o.From); err != nil {
		return false, fmt.Errorf("email: from: %w", err)
	}
	if err := msg.To(e.o.To...); err != nil {
		return false, fmt.Errorf("email: to: %w", err)
	}
	msg.Subject(Subject(n))
	msg.SetDateWithValue(now)
	// A Message-ID derived from the notification ID lets a mail system
	// drop the copy a retry after a lost reply may produce.
	sum := sha256.Sum256([]byte(n.ID))
	msg.SetMessageIDWithValue(hex.EncodeToString(sum[:16]) + "@candlekeep")
	msg.SetBodyString(gomail.TypeTextPlain, Body(n, now))

	opts := []gomail.Option{
		gomail.WithPort(e.port),
		gomail.WithTimeout(e.o.Timeout),
		gomail.WithTLSPolicy(tlsPolicy(e.o.StartTLS)),
	}
	if e.o.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(e.o.Username), gomail.WithPassword(e.o.Password))
	}
	c, err := gomail.NewClient(e.host, opts...)
	if err != nil {
		return false, fmt.Errorf("email: %s", e.redact(err.Error()))
	}
	err = c.DialAndSendWithContext(ctx, msg)
	if err == nil {
		return false, nil
	}
	return e.classify(err), fmt.Errorf("email: send %s to %d recipient(s) via %s: %s", n.Alert, len(e.o.To), e.o.Addr, e.redact(err.Error()))
}

// classify: a 5xx reply, or an address the message cannot carry, will fail
// the same way again; everything else (refused connection, timeout, 4xx)
// may pass later.
func (e *Notifier) classify(err error) (retry bool) {
	var se *gomail.SendError
	if errors.As(err, &se) {
		switch se.Reason {
		case gomail.ErrGetSender, gomail.ErrGetRcpts, gomail.ErrNoUnencoded:
			return false
		}
		return se.ErrorCode() < 500
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code < 500
	}
	return true
}

func (e *Notifier) redact(s string) string {
	if e.o.Password == "" {
		return s
	}
	return strings.ReplaceAll(s, e.o.Password, "(redacted)")
}

func tlsPolicy(p string) gomail.TLSPolicy {
	switch p {
	case StartTLSNone:
		return gomail.NoTLS
	case StartTLSOpportunistic:
		return gomail.TLSOpportunistic
	}
	return gomail.TLSMandatory
}

// Subject is the message's subject:
// "[candlekeep] FIRING critical CandlekeepDataStale: 3 pairs stale".
func Subject(n notify.Notification) string {
	return "[candlekeep] " + notify.Subject(n)
}

// Body is the plain-text message: the same facts as the Slack message.
func Body(n notify.Notification, now time.Time) string {
	var b strings.Builder
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%-10s %s\n", k+":", v)
		}
	}
	b.WriteString(notify.Subject(n) + "\n\n")
	line("Alert", n.Alert)
	line("Severity", n.Severity)
	line("Status", n.Kind.Title())
	if !n.Since.IsZero() {
		since := n.Since.UTC().Format("2006-01-02 15:04 UTC")
		if n.Kind != notify.Firing {
			since += " (for " + notify.FormatDuration(notify.FiringFor(n, now)) + ")"
		}
		line("Since", since)
	}
	if n.Kind == notify.Resolved && !n.ResolvedAt.IsZero() {
		line("Resolved", n.ResolvedAt.UTC().Format("2006-01-02 15:04 UTC"))
	}
	value := n.Value
	if n.Threshold != "" {
		value += " (threshold " + n.Threshold + ")"
	}
	line("Value", value)
	if len(n.Members) > 0 {
		line("Members", fmt.Sprintf("%d: %s", len(n.Members), notify.FormatMembers(n.Members, notify.MaxMembers)))
	}
	if len(n.Details) > 0 {
		b.WriteString("\n" + strings.Join(n.Details, "\n") + "\n\n")
	}
	line("Runbook", n.Runbook)
	line("Group", n.GroupKey)
	line("Source", n.Source)
	if n.Kind == notify.Resolved && !n.Since.IsZero() {
		fmt.Fprintf(&b, "\nThis resolves the alert fired at %s, group %s.\n", notify.ClockUTC(n.Since, now), n.GroupKey)
	}
	return b.String()
}
