package natsutil

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// ExitConfig is the exit code of a service whose configuration cannot work
// (EX_CONFIG of sysexits.h): the server rejects its credentials. The
// systemd units do not restart on it (RestartPreventExitStatus=78), since
// a restart would be rejected the same way.
const ExitConfig = 78

// AuthError is the server rejecting a client's credentials (Authorization
// Violation, expired or revoked credentials), at connect or on reconnect.
// Its message names the credentials and says what to do.
type AuthError struct {
	// Who names the credentials: the seed or creds file and its user.
	Who string
	// Flag is the flag that gives them.
	Flag string
	Err  error
}

func (e *AuthError) Error() string {
	if e.Flag == "" {
		return fmt.Sprintf("the NATS server rejected %s (%v): the server requires credentials; "+
			"give this service's nkey seed with --nats-nkey (CANDLEKEEP_NATS_NKEY; candlekeep auth init writes DIR/<user>.nk) or a creds file with --nats-creds",
			e.Who, e.Err)
	}
	return fmt.Sprintf("the NATS server rejected %s (%v): check %s names this service's user, "+
		"or regenerate the credentials with candlekeep auth init and reload the server's auth.conf", e.Who, e.Err, e.Flag)
}

func (e *AuthError) Unwrap() error { return e.Err }

// IsAuthError reports whether err is the server rejecting the credentials.
func IsAuthError(err error) bool {
	if err == nil {
		return false
	}
	var ae *AuthError
	return errors.As(err, &ae) || errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// authError wraps err, an authorization error, naming c's credentials.
func (c Client) authError(err error) *AuthError {
	switch {
	case c.NKeyFile != "":
		who := "the user of --nats-nkey " + c.NKeyFile
		if pub := seedPublicKey(c.NKeyFile); pub != "" {
			who += " (public key " + pub + ")"
		}
		return &AuthError{Who: who, Flag: "--nats-nkey (CANDLEKEEP_NATS_NKEY)", Err: err}
	case c.CredsFile != "":
		return &AuthError{Who: "the user of --nats-creds " + c.CredsFile, Flag: "--nats-creds (CANDLEKEEP_NATS_CREDS)", Err: err}
	default:
		return &AuthError{Who: "a connection without credentials", Err: err}
	}
}

// seedPublicKey is the public key of the seed in file, or "".
func seedPublicKey(file string) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(data))))
	if err != nil {
		return ""
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return ""
	}
	return pub
}

// ConnectError is the error of a failed connection: an *AuthError when the
// server rejected the credentials, otherwise one naming the (redacted)
// servers; hint says what to check.
func (c Client) ConnectError(err error, hint string) error {
	if IsAuthError(err) {
		var ae *AuthError
		if errors.As(err, &ae) {
			return ae
		}
		return c.authError(err)
	}
	msg := err.Error()
	for _, u := range c.URLs {
		msg = strings.ReplaceAll(msg, u, candles.RedactURL(u))
	}
	if hint != "" {
		msg += ": " + hint
	}
	return fmt.Errorf("connect to %s: %s", c.Redacted(), msg)
}

// Redacted is the server list fit for logs and errors.
func (c Client) Redacted() string {
	r := make([]string, len(c.URLs))
	for i, u := range c.URLs {
		r[i] = candles.RedactURL(u)
	}
	return strings.Join(r, ",")
}

// permissionRE finds the subject in the server's "Permissions Violation for
// Publish to "x"" and "... Subscription to "x"".
var permissionRE = regexp.MustCompile(`(?i)(publish|subscription) to "?([^"\s]+)"?`)

// DeniedSubject returns the operation (publish, subscription) and the
// subject a permissions violation names, or ok false for other errors.
func DeniedSubject(err error) (op, subject string, ok bool) {
	if err == nil || !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		return "", "", false
	}
	m := permissionRE.FindStringSubmatch(err.Error())
	if m == nil {
		return "", "", true
	}
	return strings.ToLower(m[1]), m[2], true
}

// errorHandler is every service's nats.ErrorHandler: permission violations
// are errors naming the denied subject; authorization errors are left to
// the closed connection (the service exits with one line saying what to
// do); the rest are logged with the subscription's subject.
func errorHandler(log *slog.Logger) nats.ErrHandler {
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if op, subject, ok := DeniedSubject(err); ok {
			log.Error("nats permission denied: this service's user may not use the subject; "+
				"check the permissions of its user in the server's auth.conf (candlekeep auth init writes them)",
				"subject", subject, "operation", op, "err", err)
			return
		}
		if IsAuthError(err) {
			log.Debug("nats authorization error", "err", err)
			return
		}
		subject := ""
		if sub != nil {
			subject = sub.Subject
		}
		log.Error("nats async error", "subject", subject, "err", err)
	}
}

// Unavailable reports an error of NATS itself not answering for a moment:
// no reply in time, no responders, no response from a stream, JetStream
// temporarily unavailable (503, a stream or bucket electing a leader after
// a node went). Work that failed on one is not at fault and is tried again
// without counting against it.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrNoServers) ||
		errors.Is(err, nats.ErrJetStreamNotEnabled) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.Code == 503 {
		return true
	}
	return false
}
