// Package natsauth generates candlekeep's NATS credentials: one nkey user
// per service with least-privilege subject permissions (permissions.go),
// a route password for the cluster, `nats` CLI contexts and, optionally, a
// small TLS PKI. `candlekeep auth init` and `candlekeep up` (at first
// start) write them; a nats-server config includes the fragments.
package natsauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
)

// File names inside the credentials directory.
const (
	AuthConf   = "auth.conf"
	RoutesConf = "routes.conf"
	TLSConf    = "tls.conf"
	ContextDir = "context"
	TLSDir     = "tls"
	CAFile     = "ca.pem"
	ServerCert = "server.pem"
	ServerKey  = "server-key.pem"
	ClientCert = "client.pem"
	ClientKey  = "client-key.pem"
	// RouteUser is the user routes authenticate as (routes.conf).
	RouteUser = "route"
	// DefaultServer is the context URL when no --servers are given.
	DefaultServer = "nats://127.0.0.1:4222"
)

// Account names in auth.conf.
const (
	AccountCandlekeep = "CANDLEKEEP"
	AccountSystem     = "SYS"
)

// Options configures Init.
type Options struct {
	// Dir receives every file (created 0700; files 0600).
	Dir string
	// Servers are the URLs written into the contexts.
	Servers []string
	// TLS also writes a CA, a server and a client certificate.
	TLS bool
	// TLSHosts are the server certificate's extra names (DNS or IP);
	// localhost and 127.0.0.1 are always in it.
	TLSHosts []string
	// MountDir is where Dir is seen by the nats-server that includes the
	// fragments (a container's secret mount); tls.conf names files under
	// it. Empty: Dir's absolute path.
	MountDir string
	// Force overwrites existing files; without it Init refuses.
	Force bool
	// Owner, if set, chowns every file and directory (UID, GID).
	Owner *[2]int
	// Now is the clock of the certificates' validity; nil is time.Now.
	Now func() time.Time
}

// ErrExists is returned when Dir holds credentials and Force is false.
var ErrExists = errors.New("credentials exist")

// Result tells what Init wrote.
type Result struct {
	Dir string
	// Files are the paths written, in order.
	Files []string
	// PublicKeys maps each user to its nkey public key.
	PublicKeys map[string]string
}

// SeedPath is the path of user's nkey seed in dir.
func SeedPath(dir, user string) string { return filepath.Join(dir, user+".nk") }

// ContextPath is the path of user's nats CLI context in dir.
func ContextPath(dir, user string) string { return filepath.Join(dir, ContextDir, user+".json") }

// Exists reports whether dir holds generated credentials (its auth.conf).
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, AuthConf))
	return err == nil
}

// Init writes the credentials into o.Dir.
func Init(o Options) (*Result, error) {
	if o.Dir == "" {
		return nil, errors.New("--dir: empty; give the directory for the credentials")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("--dir %s: %w", o.Dir, err)
	}
	if len(o.Servers) == 0 {
		o.Servers = []string{DefaultServer}
	}
	for _, s := range o.Servers {
		if !strings.Contains(s, "://") {
			return nil, fmt.Errorf("--servers %q: want URLs like nats://host:4222", s)
		}
	}
	if o.MountDir == "" {
		o.MountDir = dir
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if !o.Force {
		for _, f := range []string{AuthConf, RoutesConf, TLSConf, ContextDir, TLSDir, SeedPath("", UserOperator)} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				return nil, fmt.Errorf("%w in %s (%s); give --force to replace them (every service then needs the new seeds)", ErrExists, dir, f)
			}
		}
	}
	w := &writer{dir: dir, owner: o.Owner}
	for _, d := range []string{dir, filepath.Join(dir, ContextDir)} {
		if err := w.mkdir(d); err != nil {
			return nil, err
		}
	}
	res := &Result{Dir: dir, PublicKeys: map[string]string{}}
	seeds := map[string][]byte{}
	for _, u := range Users {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("nkey for %s: %w", u, err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("nkey for %s: %w", u, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("nkey for %s: %w", u, err)
		}
		seeds[u], res.PublicKeys[u] = seed, pub
	}
	if err := w.file(AuthConf, []byte(authConf(res.PublicKeys))); err != nil {
		return nil, err
	}
	pw, err := randomPassword()
	if err != nil {
		return nil, err
	}
	routes := fmt.Sprintf("# candlekeep auth init: include inside the cluster {} block; routes then use\n"+
		"# nats-route://%s:<this password>@host:6222 (the password is URL-safe).\n"+
		"authorization {\n  user: %s\n  password: %q\n  timeout: 2\n}\n", RouteUser, RouteUser, pw)
	if err := w.file(RoutesConf, []byte(routes)); err != nil {
		return nil, err
	}
	for _, u := range Users {
		if err := w.file(SeedPath("", u), append(seeds[u], '\n')); err != nil {
			return nil, err
		}
	}
	var tlsFiles *tlsPaths
	if o.TLS {
		if err := w.mkdir(filepath.Join(dir, TLSDir)); err != nil {
			return nil, err
		}
		if err := writePKI(w, o.TLSHosts, o.Now()); err != nil {
			return nil, err
		}
		tlsFiles = &tlsPaths{ca: filepath.Join(dir, TLSDir, CAFile), cert: filepath.Join(dir, TLSDir, ClientCert), key: filepath.Join(dir, TLSDir, ClientKey)}
		m := filepath.Join(o.MountDir, TLSDir)
		conf := fmt.Sprintf("# candlekeep auth init: include inside a tls {} block, for clients\n"+
			"# (tls { include %q }) and for routes (cluster { tls { include %q } }).\n"+
			"cert_file: %q\nkey_file: %q\nca_file: %q\nverify: true\ntimeout: 2\n",
			TLSConf, TLSConf, filepath.Join(m, ServerCert), filepath.Join(m, ServerKey), filepath.Join(m, CAFile))
		if err := w.file(TLSConf, []byte(conf)); err != nil {
			return nil, err
		}
	}
	for _, u := range Users {
		ctx, err := contextJSON(u, strings.Join(o.Servers, ","), SeedPath(dir, u), tlsFiles)
		if err != nil {
			return nil, err
		}
		if err := w.file(filepath.Join(ContextDir, u+".json"), ctx); err != nil {
			return nil, err
		}
	}
	res.Files = w.written
	return res, nil
}

type tlsPaths struct{ ca, cert, key string }

// contextJSON is a natscli context (~/.config/nats/context/NAME.json).
func contextJSON(user, url, seed string, t *tlsPaths) ([]byte, error) {
	c := map[string]string{
		"description": "candlekeep " + user + " (candlekeep auth init)",
		"url":         url,
		"nkey":        seed,
	}
	if t != nil {
		c["ca"], c["cert"], c["key"] = t.ca, t.cert, t.key
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func randomPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("route password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// authConf renders the accounts block for the public keys.
func authConf(pub map[string]string) string {
	var b strings.Builder
	b.WriteString("# candlekeep auth init: NATS accounts and users. Include it from the server\n" +
		"# config (include \"auth.conf\"). One nkey user per service; the seeds are\n" +
		"# the <user>.nk files beside it. Regenerate with candlekeep auth init --force.\n")
	b.WriteString("accounts {\n  " + AccountCandlekeep + " {\n    jetstream: enabled\n    users: [\n")
	for _, u := range Users {
		if u == UserSystem {
			continue
		}
		p, _ := Permission(u)
		fmt.Fprintf(&b, "      # %s\n      { nkey: %q", u, pub[u])
		if perm := renderPermissions(p, "        "); perm != "" {
			b.WriteString(",\n        permissions: " + perm + "\n      }\n")
		} else {
			b.WriteString(" }\n")
		}
	}
	b.WriteString("    ]\n  }\n  " + AccountSystem + " {\n    users: [\n")
	fmt.Fprintf(&b, "      # %s (nats server report, nats server list)\n      { nkey: %q }\n", UserSystem, pub[UserSystem])
	b.WriteString("    ]\n  }\n}\nsystem_account: " + AccountSystem + "\n")
	return b.String()
}

func renderPermissions(p Permissions, indent string) string {
	if len(p.PubAllow)+len(p.PubDeny)+len(p.SubAllow)+len(p.SubDeny) == 0 && !p.Responses {
		return ""
	}
	var b strings.Builder
	b.WriteString("{\n")
	section := func(name string, allow, deny []string) {
		if len(allow)+len(deny) == 0 {
			return
		}
		b.WriteString(indent + "  " + name + ": {\n")
		if len(allow) > 0 {
			b.WriteString(indent + "    allow: " + list(allow) + "\n")
		}
		if len(deny) > 0 {
			b.WriteString(indent + "    deny: " + list(deny) + "\n")
		}
		b.WriteString(indent + "  }\n")
	}
	section("publish", p.PubAllow, p.PubDeny)
	section("subscribe", p.SubAllow, p.SubDeny)
	if p.Responses {
		b.WriteString(indent + "  allow_responses: { max: 1, expires: \"1m\" }\n")
	}
	b.WriteString(indent + "}")
	return b.String()
}

func list(s []string) string {
	seen := map[string]bool{}
	q := make([]string, 0, len(s))
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			q = append(q, fmt.Sprintf("%q", x))
		}
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// writer writes files 0600 and directories 0700, chowning them to owner.
type writer struct {
	dir     string
	owner   *[2]int
	written []string
}

func (w *writer) mkdir(d string) error {
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", d, err)
	}
	return w.chown(d)
}

func (w *writer) file(rel string, data []byte) error {
	p := filepath.Join(w.dir, rel)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", p, err)
	}
	if err := w.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	w.written = append(w.written, p)
	return nil
}

func (w *writer) chown(p string) error {
	if w.owner == nil {
		return nil
	}
	if err := os.Chown(p, w.owner[0], w.owner[1]); err != nil {
		return fmt.Errorf("--owner: chown %s: %w", p, err)
	}
	return nil
}

// Missing returns the files of a complete credentials directory (auth.conf,
// every user's seed and context) that dir lacks; empty means complete.
func Missing(dir string) []string {
	var out []string
	files := []string{AuthConf}
	for _, u := range Users {
		files = append(files, SeedPath("", u), filepath.Join(ContextDir, u+".json"))
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			out = append(out, f)
		}
	}
	return out
}

// SetContextServers rewrites the server URLs of the nats CLI contexts in dir
// (`candlekeep up` started on another --nats-listen), keeping the rest of
// each context; a context that names them already is not rewritten.
func SetContextServers(dir string, servers []string) error {
	url := strings.Join(servers, ",")
	w := &writer{dir: dir}
	for _, u := range Users {
		rel := filepath.Join(ContextDir, u+".json")
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return fmt.Errorf("nats CLI context: %w", err)
		}
		c := map[string]any{}
		if err := json.Unmarshal(b, &c); err != nil {
			return fmt.Errorf("nats CLI context %s: %w", filepath.Join(dir, rel), err)
		}
		if c["url"] == url {
			continue
		}
		c["url"] = url
		out, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return err
		}
		if err := w.file(rel, append(out, '\n')); err != nil {
			return err
		}
	}
	return nil
}

// PublicKeys reads every user's seed in dir and returns its public key.
func PublicKeys(dir string) (map[string]string, error) {
	pub := map[string]string{}
	for _, u := range Users {
		seed, err := os.ReadFile(SeedPath(dir, u))
		if err != nil {
			return nil, fmt.Errorf("nkey seed of %s: %w", u, err)
		}
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", SeedPath(dir, u), err)
		}
		if pub[u], err = kp.PublicKey(); err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", SeedPath(dir, u), err)
		}
		kp.Wipe()
	}
	return pub, nil
}

// RefreshAuthConf renders dir's auth.conf again from the seeds in dir and
// this version's permissions, so a server that loads it at start (the
// embedded one of `candlekeep up`) never runs with the permissions of the
// version that generated the credentials. The seeds do not change. changed
// says whether the file was rewritten.
func RefreshAuthConf(dir string) (changed bool, err error) {
	pub, err := PublicKeys(dir)
	if err != nil {
		return false, err
	}
	conf := []byte(authConf(pub))
	if old, err := os.ReadFile(filepath.Join(dir, AuthConf)); err == nil && string(old) == string(conf) {
		return false, nil
	}
	w := &writer{dir: dir}
	if err := w.file(AuthConf, conf); err != nil {
		return false, err
	}
	return true, nil
}
