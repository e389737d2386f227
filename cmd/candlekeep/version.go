package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=…" (make
// build uses `git describe`); otherwise the module's build info is used.
var version = ""

// versionString is the version with the VCS revision the binary was built from.
func versionString() string {
	v, rev, dirty := version, "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if rev != "" && len(rev) > 12 {
		rev = rev[:12]
	}
	switch {
	case rev != "" && dirty:
		return fmt.Sprintf("%s (%s, modified)", v, rev)
	case rev != "":
		return fmt.Sprintf("%s (%s)", v, rev)
	}
	return v
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer, _ env) int {
	fmt.Fprintln(stdout, "candlekeep", versionString())
	return 0
}
