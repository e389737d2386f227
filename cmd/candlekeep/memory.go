package main

import (
	"flag"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultMemoryLimit is the Go runtime's soft memory limit for a service
// process. It is one part of keeping a service under the 100 MB target:
// the embedded nats-server holds recently used file-store blocks (up to
// 8 MB each) through references the garbage collector may drop, and with
// the default GOGC the heap doubles before anyone asks it to. The limit
// makes the collector reclaim them as the heap nears it; what the services
// hold themselves is bounded by their buffers (docs/architecture.md,
// "Memory"). Above the limit the collector runs more often, never fails.
const defaultMemoryLimit = 64 << 20

// memoryFlag is --memory-limit: bytes with an optional KiB/MiB/GiB (or
// KB/MB/GB) suffix; 0 or "off" leaves the runtime's default (GOMEMLIMIT).
type memoryFlag struct{ bytes int64 }

func (m *memoryFlag) register(fs *flag.FlagSet) {
	m.bytes = defaultMemoryLimit
	fs.Var(m, "memory-limit", `soft memory limit of the Go runtime, e.g. 64MiB, 1GiB; "off" (or 0) to use GOMEMLIMIT or none`)
}

func (m *memoryFlag) String() string {
	if m == nil || m.bytes == 0 {
		return "off"
	}
	if m.bytes%(1<<20) == 0 {
		return strconv.FormatInt(m.bytes>>20, 10) + "MiB"
	}
	return strconv.FormatInt(m.bytes, 10)
}

func (m *memoryFlag) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		m.bytes = 0
		return nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return fmt.Errorf("want a size such as 64MiB or 1GiB, or off")
	}
	if n*mult < 16<<20 {
		return fmt.Errorf("%d bytes is below 16MiB: the runtime would collect garbage without pause", n*mult)
	}
	m.bytes = n * mult
	return nil
}

// apply sets the limit; with "off" the runtime keeps GOMEMLIMIT, if set.
func (m *memoryFlag) apply() {
	if m.bytes > 0 {
		debug.SetMemoryLimit(m.bytes)
	}
}
