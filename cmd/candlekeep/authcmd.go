package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/candlekeep/candlekeep/pkg/config"
	"github.com/candlekeep/candlekeep/pkg/natsauth"
)

// runAuth runs `candlekeep auth init`.
func runAuth(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	if len(args) == 0 || args[0] != "init" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return runAuthInit(ctx, []string{"--help"}, stdout, stderr, getenv)
		}
		fmt.Fprintln(stderr, "candlekeep auth: want a subcommand: init (candlekeep auth init --help)")
		return 2
	}
	return runAuthInit(ctx, args[1:], stdout, stderr, getenv)
}

func runAuthInit(_ context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("auth init", "candlekeep auth init --dir DIR [--servers URL,...] [--tls --tls-hosts h1,h2] [--force] [--owner UID:GID]",
		"Writes candlekeep's NATS credentials into DIR (0700, every file 0600):\n"+
			"  auth.conf        accounts CANDLEKEEP (JetStream) and SYS, one nkey user per\n"+
			"                   service (fetcher, writer, backup, monitor) with least-privilege\n"+
			"                   permissions, operator (everything), readonly (dashboards) and\n"+
			"                   system (SYS); include it from the nats-server config\n"+
			"  routes.conf      authorization for the cluster {} block (user route)\n"+
			"  <user>.nk        each user's nkey seed (--nats-nkey of the service)\n"+
			"  context/<user>.json  a nats CLI context per user (nats --context PATH)\n"+
			"  with --tls: tls/ca.pem, server.pem, server-key.pem, client.pem,\n"+
			"  client-key.pem and tls.conf (include inside the tls {} blocks).\n"+
			"Existing credentials are kept unless --force (then every service needs the\n"+
			"new seeds). See docs/security.md.", stderr)
	dir := fs.String("dir", "", "directory for the credentials (required)")
	servers := config.List{natsauth.DefaultServer}
	fs.Var(&servers, "servers", "comma-separated server URLs written into the nats CLI contexts")
	tls := fs.Bool("tls", false, "also write a CA, server and client certificates (ECDSA P-256) and tls.conf")
	var hosts config.List
	fs.Var(&hosts, "tls-hosts", "comma-separated extra names (DNS or IP) of the server certificate; localhost and 127.0.0.1 are always in it")
	mount := fs.String("mount-dir", "", "where the nats-server sees DIR (a container's secret mount), for the paths in tls.conf (default DIR)")
	force := fs.Bool("force", false, "replace existing credentials")
	owner := fs.String("owner", "", "UID:GID to own the files (containers running as a non-root user)")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	o := natsauth.Options{Dir: *dir, Servers: servers, TLS: *tls, TLSHosts: hosts, MountDir: *mount, Force: *force}
	if *dir == "" {
		fmt.Fprintln(stderr, "candlekeep auth init: --dir: required (the directory for the credentials)")
		return 2
	}
	if len(hosts) > 0 && !*tls {
		fmt.Fprintln(stderr, "candlekeep auth init: --tls-hosts: needs --tls")
		return 2
	}
	if *owner != "" {
		ids, err := parseOwner(*owner)
		if err != nil {
			fmt.Fprintf(stderr, "candlekeep auth init: --owner %q: %v\n", *owner, err)
			return 2
		}
		o.Owner = &ids
	}
	res, err := natsauth.Init(o)
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep auth init: %v\n", err)
		return 1
	}
	for _, f := range res.Files {
		fmt.Fprintln(stdout, f)
	}
	fmt.Fprintf(stdout, "\nnats CLI: nats --context %s stream ls\n", natsauth.ContextPath(res.Dir, natsauth.UserOperator))
	return 0
}

// parseOwner parses UID:GID.
func parseOwner(s string) ([2]int, error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return [2]int{}, fmt.Errorf("want UID:GID, e.g. 1000:1000")
	}
	uid, err := strconv.Atoi(u)
	if err != nil || uid < 0 {
		return [2]int{}, fmt.Errorf("want a numeric UID, not %q", u)
	}
	gid, err := strconv.Atoi(g)
	if err != nil || gid < 0 {
		return [2]int{}, fmt.Errorf("want a numeric GID, not %q", g)
	}
	return [2]int{uid, gid}, nil
}
