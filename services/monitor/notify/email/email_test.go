package email_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
	"github.com/candlekeep/candlekeep/services/monitor/notify/email"
)

// smtpServer speaks just enough SMTP on loopback for one client at a
// time: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. reply overrides the
// answer to a command ("MAIL", "RCPT", "DATA" for the DATA command, "."
// for the end of the data).
type smtpServer struct {
	l     net.Listener
	reply map[string]string
	mu    sync.Mutex
	cmds  []string
	data  []string
}

func newSMTPServer(t *testing.T, reply map[string]string) *smtpServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpServer{l: l, reply: reply}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		// A client that gave up mid-conversation may leave its
		// connection open; the test is over, so close it.
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { s.serve(c) })
		}
	})
	return s
}

func (s *smtpServer) addr() string { return s.l.Addr().String() }

func (s *smtpServer) answer(cmd, def string) string {
	if r, ok := s.reply[cmd]; ok {
		return r
	}
	return def
}

func (s *smtpServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	say := func(line string) { _, _ = io.WriteString(c, line+"\r\n") }
	say("220 candlekeep-test ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		if verb == "MAIL" || verb == "RCPT" {
			verb = strings.ToUpper(line[:4])
		}
		s.mu.Lock()
		s.cmds = append(s.cmds, line)
		s.mu.Unlock()
		switch verb {
		case "EHLO":
			say("250-candlekeep-test")
			say("250 8BITMIME")
		case "HELO":
			say("250 candlekeep-test")
		case "MAIL":
			say(s.answer("MAIL", "250 2.1.0 ok"))
		case "RCPT":
			say(s.answer("RCPT", "250 2.1.5 ok"))
		case "DATA":
			a := s.answer("DATA", "354 go ahead")
			say(a)
			if !strings.HasPrefix(a, "354") {
				continue
			}
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				b.WriteString(strings.TrimPrefix(l, "."))
			}
			s.mu.Lock()
			s.data = append(s.data, b.String())
			s.mu.Unlock()
			say(s.answer(".", "250 2.0.0 queued"))
		case "RSET", "NOOP":
			say("250 2.0.0 ok")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("502 5.5.2 not implemented")
		}
	}
}

func (s *smtpServer) got() (cmds, data []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...), append([]string(nil), s.data...)
}

var (
	since    = time.Date(2026, 12, 4, 12, 3, 0, 0, time.UTC)
	resolved = since.Add(3*time.Hour + 12*time.Minute)
)

func stale(kind notify.Kind) notify.Notification {
	n := notify.Notification{
		ID: "CandlekeepDataStale:1764849780000:" + string(kind), GroupKey: "CandlekeepDataStale", Kind: kind,
		Alert: "CandlekeepDataStale", Severity: "critical", Summary: "2 pairs have no candle newer than 5m",
		Value: "17m", Threshold: "5m", Members: []string{"BTCUSDT/4h", "ETHUSDT/1h"}, Since: since,
		Runbook: "https://git.example.org/docs/alerts.md#candlekeepdatastale", Source: "host-a",
	}
	if kind == notify.Resolved {
		n.ResolvedAt = resolved
	}
	return n
}

func notifier(t *testing.T, o email.Options) *email.Notifier {
	t.Helper()
	if o.From == "" {
		o.From = "candlekeep@example.org"
	}
	if o.To == nil {
		o.To = []string{"oncall@example.org", "ops@example.org"}
	}
	o.StartTLS = email.StartTLSNone
	o.Now = func() time.Time { return resolved }
	n, err := email.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// readMessage parses what the server got and decodes subject and body.
func readMessage(t *testing.T, data string) (subject, body string, h mail.Header) {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("message does not parse: %v\n%s", err, data)
	}
	subject, err = new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader = m.Body
	if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		r = quotedprintable.NewReader(m.Body)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return subject, strings.ReplaceAll(string(b), "\r\n", "\n"), m.Header
}

func TestSendsPlainTextMessage(t *testing.T) {
	for _, tc := range []struct {
		kind    notify.Kind
		subject string
		body    string
	}{
		{notify.Firing, "[candlekeep] FIRING critical CandlekeepDataStale: 2 pairs have no candle newer than 5m",
			`FIRING critical CandlekeepDataStale: 2 pairs have no candle newer than 5m

Alert:     CandlekeepDataStale
Severity:  critical
Status:    FIRING
Since:     2026-12-04 12:03 UTC
Value:     17m (threshold 5m)
Members:   2: BTCUSDT/4h, ETHUSDT/1h
Runbook:   https://git.example.org/docs/alerts.md#candlekeepdatastale
Group:     CandlekeepDataStale
Source:    host-a
`},
		{notify.Resolved, "[candlekeep] RESOLVED critical CandlekeepDataStale: 2 pairs have no candle newer than 5m",
			`RESOLVED critical CandlekeepDataStale: 2 pairs have no candle newer than 5m

Alert:     CandlekeepDataStale
Severity:  critical
Status:    RESOLVED
Since:     2026-12-04 12:03 UTC (for 3h12m)
Resolved:  2026-12-04 15:15 UTC
Value:     17m (threshold 5m)
Members:   2: BTCUSDT/4h, ETHUSDT/1h
Runbook:   https://git.example.org/docs/alerts.md#candlekeepdatastale
Group:     CandlekeepDataStale
Source:    host-a

This resolves the alert fired at 12:03 UTC, group CandlekeepDataStale.
`},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			s := newSMTPServer(t, nil)
			retry, err := notifier(t, email.Options{Addr: s.addr()}).Notify(context.Background(), stale(tc.kind))
			if err != nil || retry {
				t.Fatalf("Notify = %v, %v; want delivered", retry, err)
			}
			cmds, data := s.got()
			if len(data) != 1 {
				t.Fatalf("server got %d messages, want 1 (commands %q)", len(data), cmds)
			}
			var envelope []string
			for _, c := range cmds {
				if strings.HasPrefix(c, "MAIL") || strings.HasPrefix(c, "RCPT") {
					envelope = append(envelope, strings.SplitN(c, " BODY=", 2)[0])
				}
			}
			wantEnv := []string{"MAIL FROM:<candlekeep@example.org>", "RCPT TO:<oncall@example.org>", "RCPT TO:<ops@example.org>"}
			if strings.Join(envelope, "|") != strings.Join(wantEnv, "|") {
				t.Errorf("envelope %q, want %q", envelope, wantEnv)
			}
			subject, body, h := readMessage(t, data[0])
			if subject != tc.subject {
				t.Errorf("subject %q, want %q", subject, tc.subject)
			}
			if body != tc.body {
				t.Errorf("body:\n%s\nwant:\n%s", body, tc.body)
			}
			if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q, want text/plain", ct)
			}
			if to := h.Get("To"); !strings.Contains(to, "oncall@example.org") || !strings.Contains(to, "ops@example.org") {
				t.Errorf("To %q, want both recipients", to)
			}
		})
	}
}

func TestNotifyClassifiesFailures(t *testing.T) {
	refused := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	for _, tc := range []struct {
		name  string
		reply map[string]string
		addr  string
		retry bool
		err   string
	}{
		{"450 on RCPT", map[string]string{"RCPT": "450 4.2.1 mailbox busy"}, "", true, `450 "4.2.1 mailbox busy"`},
		{"421 on MAIL", map[string]string{"MAIL": "421 4.3.2 shutting down"}, "", true, `421 "4.3.2 shutting down"`},
		{"550 on RCPT", map[string]string{"RCPT": "550 5.1.1 no such user"}, "", false, `550 "5.1.1 no such user"`},
		{"554 after DATA", map[string]string{".": "554 5.7.1 spam"}, "", false, `554 "5.7.1 spam"`},
		{"connection refused", nil, refused, true, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr
			if addr == "" {
				addr = newSMTPServer(t, tc.reply).addr()
			}
			retry, err := notifier(t, email.Options{Addr: addr}).Notify(context.Background(), stale(notify.Firing))
			if err == nil {
				t.Fatal("Notify succeeded, want an error")
			}
			if retry != tc.retry {
				t.Errorf("retry = %v, want %v (err %v)", retry, tc.retry, err)
			}
			prefix := "email: send CandlekeepDataStale to 2 recipient(s) via " + addr + ": "
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %q, want %q… containing %q", err, prefix, tc.err)
			}
		})
	}
}

func TestPasswordNeverInErrors(t *testing.T) {
	// The test server offers no AUTH, so authenticating fails; the error
	// must not carry the password.
	s := newSMTPServer(t, nil)
	const password = "hunter2-PASSWORD"
	n := notifier(t, email.Options{Addr: s.addr(), Username: "candlekeep", Password: password})
	_, err := n.Notify(context.Background(), stale(notify.Firing))
	if err == nil {
		t.Fatal("Notify succeeded against a server without AUTH")
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("err %q shows the password", err)
	}
	_, data := s.got()
	if len(data) != 0 {
		t.Errorf("server got %d messages without authentication", len(data))
	}
}

func TestOptionsValidate(t *testing.T) {
	good := email.Options{Addr: "smtp.example.org:587", From: "a@example.org", To: []string{"b@example.org"}}
	for _, tc := range []struct {
		name string
		edit func(*email.Options)
		want string
	}{
		{"no port", func(o *email.Options) { o.Addr = "smtp.example.org" }, `email: SMTP address "smtp.example.org": want host:port`},
		{"bad port", func(o *email.Options) { o.Addr = "smtp.example.org:0" }, "bad port"},
		{"bad from", func(o *email.Options) { o.From = "nobody" }, `email: from "nobody"`},
		{"no to", func(o *email.Options) { o.To = nil }, "email: no recipient"},
		{"bad to", func(o *email.Options) { o.To = []string{"x"} }, `email: to "x"`},
		{"bad starttls", func(o *email.Options) { o.StartTLS = "always" }, `email: starttls "always": want mandatory, opportunistic or none`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			o.Password = "hunter2-PASSWORD"
			tc.edit(&o)
			err := o.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), o.Password) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	if err := good.Validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

func ExampleSubject() {
	fmt.Println(email.Subject(stale(notify.Repeat)))
	// Output: [candlekeep] STILL FIRING critical CandlekeepDataStale: 2 pairs have no candle newer than 5m
}
