// Package config parses command-line flags with CANDLEKEEP_* environment
// fallbacks: a flag given on the command line wins, then the environment
// variable (--binance-url <-> CANDLEKEEP_BINANCE_URL), then the default.
package config

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// EnvPrefix prefixes every environment variable candlekeep reads.
const EnvPrefix = "CANDLEKEEP_"

// EnvName returns the environment variable that backs flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs, then fills every flag not set on the command
// line from its environment variable (read with lookup, e.g. os.LookupEnv).
// The error names the flag or variable at fault.
func Parse(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --; see --help)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		v, ok := lookup(EnvName(f.Name))
		if !ok {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q (for --%s): %w", EnvName(f.Name), v, f.Name, e)
		}
	})
	return err
}

// SetUsage makes fs print a usage page that lists every flag with its
// default and environment variable.
func SetUsage(fs *flag.FlagSet, synopsis, description string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\n%s\n\nFlags (each also read from the environment variable shown):\n", synopsis, description)
		PrintFlags(w, fs)
	}
}

// PrintFlags writes one entry per flag.
func PrintFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s  [%s]%s\n      %s\n", f.Name, EnvName(f.Name), def, f.Usage)
	})
}

// List is a comma-separated list flag.
type List []string

// String implements flag.Value.
func (l *List) String() string { return strings.Join(*l, ",") }

// Set implements flag.Value; it replaces the list.
func (l *List) Set(s string) error {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return fmt.Errorf("empty list")
	}
	*l = out
	return nil
}
