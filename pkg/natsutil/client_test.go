package natsutil

import (
	"path/filepath"
	"strings"
	"testing"
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
