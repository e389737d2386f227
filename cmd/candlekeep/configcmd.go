package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// runConfig reads and changes the cluster configuration stored in
// JetStream: `candlekeep config get [KEY...]`, `candlekeep config set
// KEY=VALUE...`.
func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) (code int) {
	const synopsis = "candlekeep config get [KEY...] | candlekeep config set KEY=VALUE... [flags]"
	verb := "get"
	if len(args) > 0 && (args[0] == "get" || args[0] == "set") {
		verb, args = args[0], args[1:]
	} else if len(args) == 0 || !isHelp(args[0]) {
		fmt.Fprintf(stderr, "candlekeep config: want get or set\n\n")
		args = []string{"--help"}
		defer func() { code = 2 }()
	}
	fs := flagSet("config", synopsis, configDescription(), stderr)
	var nf natsFlags
	nf.register(fs)
	asJSON := fs.Bool("json", false, "get: print the settings as a JSON object")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for NATS")
	// Flags may follow the keys: split them off first.
	var words, flagArgs []string
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			flagArgs = append(flagArgs, args[i])
			if !strings.Contains(args[i], "=") && i+1 < len(args) && !isHelp(args[i]) && args[i] != "--json" && args[i] != "-json" {
				flagArgs = append(flagArgs, args[i+1])
				i++
			}
			continue
		}
		words = append(words, args[i])
	}
	if code, ok := parseFlags(fs, flagArgs, getenv); !ok {
		return code
	}
	name := "candlekeep config " + verb
	// Check the words before connecting: a typo is refused at once.
	type change struct{ key, value string }
	var changes []change
	switch verb {
	case "get":
		for _, w := range words {
			if _, ok := cluster.KeyByName(w); !ok {
				fmt.Fprintf(stderr, "%s: unknown setting %q; the settings are %s\n", name, w, strings.Join(cluster.KeyNames(), ", "))
				return 2
			}
		}
	case "set":
		if len(words) == 0 {
			fmt.Fprintf(stderr, "%s: nothing to set; give KEY=VALUE, such as sync-schedule=\"@every 15m\"\n", name)
			return 2
		}
		for _, w := range words {
			key, value, ok := strings.Cut(w, "=")
			k, known := cluster.KeyByName(key)
			if !ok || !known {
				fmt.Fprintf(stderr, "%s: %q: want KEY=VALUE with KEY one of %s\n", name, w, strings.Join(cluster.KeyNames(), ", "))
				return 2
			}
			var probe cluster.Settings
			if err := k.Set(&probe, value); err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", name, err)
				return 2
			}
			changes = append(changes, change{key, value})
		}
	}
	nc, err := nf.dial("candlekeep-config", *timeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if verb == "set" {
		for _, c := range changes {
			rev, err := cluster.Set(cctx, js, c.key, c.value, "config set", time.Now())
			if err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", name, err)
				return 1
			}
			fmt.Fprintf(stdout, "%s set (revision %d)\n", c.key, rev)
		}
		return 0
	}
	values, revs, err := cluster.Load(cctx, js)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	keys := words
	if len(keys) == 0 {
		keys = cluster.KeyNames()
	}
	defaults := cluster.Defaults()
	if *asJSON {
		out := map[string]string{}
		for _, k := range keys {
			kk, _ := cluster.KeyByName(k)
			if v, ok := values[k]; ok {
				out[k] = kk.Show(v)
			} else {
				out[k] = kk.Get(&defaults)
			}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tREVISION")
	for _, k := range keys {
		kk, _ := cluster.KeyByName(k)
		if v, ok := values[k]; ok {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", k, kk.Show(v), revs[k])
		} else {
			fmt.Fprintf(tw, "%s\t%s\t(default, not stored)\n", k, kk.Get(&defaults))
		}
	}
	_ = tw.Flush()
	return 0
}

func configDescription() string {
	var b strings.Builder
	b.WriteString("Reads or changes the cluster-wide settings every candlekeep process follows.\n")
	b.WriteString("They live in the JetStream KV bucket " + cluster.ConfigBucket + ", one key per setting,\n")
	b.WriteString("named like the flag; each change is validated, versioned (a KV revision) and\n")
	b.WriteString("announced as a config.changed event. The nats CLI works too:\n")
	b.WriteString("  nats kv get " + cluster.ConfigBucket + " sync-schedule --raw\n\n")
	b.WriteString("Examples:\n  candlekeep config get\n  candlekeep config get sync-schedule symbols\n")
	b.WriteString("  candlekeep config set sync-schedule=\"@every 15m\" intervals=1h,4h\n\n")
	b.WriteString("Settings:\n")
	for _, k := range cluster.Keys() {
		fmt.Fprintf(&b, "  %-16s %s\n", k.Name, k.Usage)
	}
	return strings.TrimRight(b.String(), "\n")
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" || a == "help" }
