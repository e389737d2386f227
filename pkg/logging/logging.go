// Package logging builds the one slog.Logger a process uses: tint on a
// terminal, JSON elsewhere.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
)

// Formats accepted by --log-format.
const (
	FormatAuto = "auto"
	FormatText = "text"
	FormatJSON = "json"
)

// ParseLevel parses --log-level (debug, info, warn, error).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// New returns a logger writing to w. Format auto picks tint when w is a
// terminal and JSON otherwise.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(format) {
	case FormatAuto, "":
		if isTerminal(w) {
			return slog.New(tint.NewHandler(w, &tint.Options{Level: lvl, TimeFormat: time.TimeOnly})), nil
		}
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl, ReplaceAttr: humanDurations})), nil
	case FormatText:
		return slog.New(tint.NewHandler(w, &tint.Options{Level: lvl, TimeFormat: time.DateTime, NoColor: !isTerminal(w)})), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl, ReplaceAttr: humanDurations})), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want auto, text or json", format)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// humanDurations writes durations as Go duration strings ("1.5s", "2m0s")
// instead of slog's JSON default, integer nanoseconds, which no operator
// reads at a glance; tint already prints them this way.
func humanDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
