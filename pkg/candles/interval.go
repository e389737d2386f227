package candles

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Interval is one of Binance's kline intervals. Fixed intervals are aligned to
// the Unix epoch, weekly candles open on Monday 00:00 UTC and monthly candles
// on the first day of the month, as Binance opens them.
type Interval struct {
	name string
	dur  time.Duration // zero for the calendar month
}

const weekOffset = 4 * 24 * time.Hour // 1970-01-01 was a Thursday; Monday is 4 days later

var intervals = map[string]time.Duration{
	"1s": time.Second, "1m": time.Minute, "3m": 3 * time.Minute, "5m": 5 * time.Minute,
	"15m": 15 * time.Minute, "30m": 30 * time.Minute, "1h": time.Hour, "2h": 2 * time.Hour,
	"4h": 4 * time.Hour, "6h": 6 * time.Hour, "8h": 8 * time.Hour, "12h": 12 * time.Hour,
	"1d": 24 * time.Hour, "3d": 72 * time.Hour, "1w": 7 * 24 * time.Hour, "1M": 0,
}

// IntervalNames lists the accepted interval names, shortest first.
func IntervalNames() []string {
	names := make([]string, 0, len(intervals))
	for n := range intervals {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := intervals[names[i]], intervals[names[j]]
		if a == 0 {
			return false
		}
		if b == 0 {
			return true
		}
		return a < b
	})
	return names
}

// ParseInterval returns the interval named s ("1m", "4h", "1M", ...).
func ParseInterval(s string) (Interval, error) {
	d, ok := intervals[s]
	if !ok {
		return Interval{}, fmt.Errorf("unknown interval %q (allowed: %s)", s, strings.Join(IntervalNames(), ", "))
	}
	return Interval{name: s, dur: d}, nil
}

// MustInterval is ParseInterval for constants known to be valid.
func MustInterval(s string) Interval {
	iv, err := ParseInterval(s)
	if err != nil {
		panic(err)
	}
	return iv
}

// String returns Binance's name of the interval.
func (iv Interval) String() string { return iv.name }

// Duration is the nominal length of one candle (31 days for a month).
func (iv Interval) Duration() time.Duration {
	if iv.dur == 0 {
		return 31 * 24 * time.Hour
	}
	return iv.dur
}

// Align returns the open time (ms) of the candle that contains ms.
func (iv Interval) Align(ms int64) int64 {
	if iv.dur == 0 {
		t := time.UnixMilli(ms).UTC()
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	d := iv.dur.Milliseconds()
	off := int64(0)
	if iv.name == "1w" {
		off = weekOffset.Milliseconds()
	}
	return floorDiv(ms-off, d)*d + off
}

// Aligned reports whether ms is the open time of a candle.
func (iv Interval) Aligned(ms int64) bool { return iv.Align(ms) == ms }

// Next returns the open time of the candle after the one opening at open.
func (iv Interval) Next(open int64) int64 {
	if iv.dur == 0 {
		t := time.UnixMilli(open).UTC()
		return time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return open + iv.dur.Milliseconds()
}

// Add returns the open time n candles after (n < 0: before) open.
func (iv Interval) Add(open int64, n int) int64 {
	if iv.dur == 0 {
		t := time.UnixMilli(open).UTC()
		return time.Date(t.Year(), t.Month()+time.Month(n), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return open + int64(n)*iv.dur.Milliseconds()
}

// Count returns how many candles open in [from, to], both aligned open times.
func (iv Interval) Count(from, to int64) int64 {
	if to < from {
		return 0
	}
	if iv.dur == 0 {
		a, b := time.UnixMilli(from).UTC(), time.UnixMilli(to).UTC()
		return int64((b.Year()-a.Year())*12+int(b.Month()-a.Month())) + 1
	}
	return (to-from)/iv.dur.Milliseconds() + 1
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
