package natsauth

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

func TestAuthInitFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	res, err := Init(Options{Dir: dir, TLS: true, TLSHosts: []string{"nats1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PublicKeys) != len(Users) {
		t.Fatalf("public keys: %v", res.PublicKeys)
	}
	for _, f := range res.Files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	for _, d := range []string{dir, filepath.Join(dir, ContextDir), filepath.Join(dir, TLSDir)} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, st.Mode().Perm())
		}
	}
	if _, err := Init(Options{Dir: dir}); !errors.Is(err, ErrExists) {
		t.Fatalf("second init without --force: %v, want ErrExists", err)
	}
	if _, err := Init(Options{Dir: dir, Force: true}); err != nil {
		t.Fatalf("init --force: %v", err)
	}
	// The fragments make a config the real server accepts.
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\njetstream { store_dir: \""+t.TempDir()+"\" }\ninclude \"auth.conf\"\ncluster { name: c, listen: 127.0.0.1:-1\n include \"routes.conf\" }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects the generated config: %v", err)
	}
	if len(o.Nkeys) != len(Users) {
		t.Fatalf("server sees %d nkey users, want %d", len(o.Nkeys), len(Users))
	}
}
