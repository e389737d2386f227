package natsauth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What `candlekeep up` does with credentials it generated earlier: the
// public keys come back from the seeds, auth.conf is rendered again (an
// older version's file is replaced, an identical one left alone), the
// contexts follow the server's new address keeping their seed, and a
// directory missing a file is reported.
func TestRefreshKeepsKeysAndFollowsTheServer(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Options{Dir: dir, Servers: []string{"nats://127.0.0.1:-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if m := Missing(dir); len(m) != 0 {
		t.Fatalf("missing %v in a fresh directory", m)
	}
	pub, err := PublicKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	for u, k := range res.PublicKeys {
		if pub[u] != k {
			t.Errorf("%s: %s from the seed, Init said %s", u, pub[u], k)
		}
	}
	if changed, err := RefreshAuthConf(dir); err != nil || changed {
		t.Fatalf("refresh of a current auth.conf: changed=%v err=%v", changed, err)
	}
	old := "accounts { OLD { users: [] } }\n"
	if err := os.WriteFile(filepath.Join(dir, AuthConf), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := RefreshAuthConf(dir); err != nil || !changed {
		t.Fatalf("refresh of an old auth.conf: changed=%v err=%v", changed, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, AuthConf))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != authConf(res.PublicKeys) {
		t.Error("auth.conf after the refresh is not this version's rendering of the same keys")
	}
	if st, err := os.Stat(filepath.Join(dir, AuthConf)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("auth.conf after the refresh: %v %v, want mode 0600", st.Mode(), err)
	}

	if err := SetContextServers(dir, []string{"nats://127.0.0.1:14222"}); err != nil {
		t.Fatal(err)
	}
	for _, u := range Users {
		b, err := os.ReadFile(ContextPath(dir, u))
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]string
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		if c["url"] != "nats://127.0.0.1:14222" || c["nkey"] != SeedPath(dir, u) {
			t.Errorf("%s context: %v", u, c)
		}
	}

	if err := os.Remove(SeedPath(dir, UserWriter)); err != nil {
		t.Fatal(err)
	}
	if m := Missing(dir); len(m) != 1 || m[0] != "writer.nk" {
		t.Errorf("Missing = %v, want [writer.nk]", m)
	}
	if _, err := RefreshAuthConf(dir); err == nil || !strings.Contains(err.Error(), "writer") {
		t.Errorf("refresh without the writer's seed: %v", err)
	}
}
