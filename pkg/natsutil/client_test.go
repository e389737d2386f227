package natsutil

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestClientOptionsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		c    Client
		want string
	}{
		{Client{}, "--nats-url"},
		{Client{URLs: []string{"nats://x"}, NKeyFile: filepath.Join(t.TempDir(), "missing.nk")}, "--nats-nkey"},
		{Client{URLs: []string{"nats://x"}, TLSCert: "a"}, "--nats-tls-key"},
	} {
		if _, err := tc.c.Options(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want one naming %s", tc.c, err, tc.want)
		}
	}
}

func TestErrorsNameWhatToDo(t *testing.T) {
	perm := fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Publish to "$JS.API.STREAM.DELETE.CANDLES"`)
	if op, subject, ok := DeniedSubject(perm); !ok || op != "publish" || subject != "$JS.API.STREAM.DELETE.CANDLES" {
		t.Errorf("DeniedSubject(%v) = %q %q %v", perm, op, subject, ok)
	}
	if _, _, ok := DeniedSubject(nats.ErrTimeout); ok {
		t.Error("a timeout is not a permission violation")
	}
	c := Client{URLs: []string{"nats://alice:hunter2@127.0.0.1:1"}}
	err := c.ConnectError(errors.New("dial nats://alice:hunter2@127.0.0.1:1: refused"), "is candlekeep running?")
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "is candlekeep running?") || IsAuthError(err) {
		t.Errorf("connect error %q: want the password redacted and the hint", err)
	}
	c.NKeyFile = "/etc/candlekeep/writer.nk"
	err = c.ConnectError(nats.ErrAuthorization, "")
	if !IsAuthError(err) || !strings.Contains(err.Error(), c.NKeyFile) || !strings.Contains(err.Error(), "candlekeep auth init") {
		t.Errorf("auth error %q: want it to name %s and the fix", err, c.NKeyFile)
	}
}
