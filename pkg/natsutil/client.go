package natsutil

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// Client is how a service reaches NATS: one or more server URLs (a
// cluster), and the credentials of its user (an nkey seed or JWT creds
// file, from candlekeep auth init) and TLS files. The zero value but URLs
// connects without credentials (tests' embedded servers).
type Client struct {
	URLs                   []string
	NKeyFile, CredsFile    string
	TLSCA, TLSCert, TLSKey string
}

// URL is a Client of one URL and no credentials.
func URL(u string) Client { return Client{URLs: []string{u}} }

// ServerList is the comma-joined URL list nats.Connect takes.
func (c Client) ServerList() string { return strings.Join(c.URLs, ",") }

// Options checks the files and returns the nats options of the
// credentials. Errors name the flag and the file.
func (c Client) Options() ([]nats.Option, error) {
	if len(c.URLs) == 0 {
		return nil, errors.New("--nats-url: empty; give nats://host:4222 (several, comma-separated, for a cluster)")
	}
	var opts []nats.Option
	if c.NKeyFile != "" && c.CredsFile != "" {
		return nil, errors.New("--nats-nkey and --nats-creds: give one of them")
	}
	if c.NKeyFile != "" {
		if _, err := os.Stat(c.NKeyFile); err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w (candlekeep auth init writes <user>.nk seeds)", c.NKeyFile, err)
		}
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: not an nkey seed: %w", c.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if c.CredsFile != "" {
		if _, err := os.Stat(c.CredsFile); err != nil {
			return nil, fmt.Errorf("--nats-creds %s: %w", c.CredsFile, err)
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("--nats-tls-cert and --nats-tls-key: give both")
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}
