package candles

import (
	_ "embed"
	"strings"
)

//go:embed symbols.txt
var defaultSymbols string

// DefaultSymbols returns the 60 symbols shipped with candlekeep.
func DefaultSymbols() []string {
	var out []string
	for _, line := range strings.Split(defaultSymbols, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out
}
