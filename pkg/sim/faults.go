package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// FaultKind names what a Fault does to the requests it matches.
type FaultKind string

// Fault kinds.
const (
	// FaultStatus answers Status (default 503): 502 and 504 with an HTML
	// page as a proxy would, any other status with a -1001 JSON body.
	FaultStatus FaultKind = "status"
	// FaultTimeout hangs until the client gives up, the Sim closes or Delay
	// (default and at most 2 minutes) passes; then it answers 504.
	FaultTimeout FaultKind = "timeout"
	// FaultTruncate answers 200 with the first half of the real body.
	FaultTruncate FaultKind = "truncate"
	// FaultMalformed answers 200 with valid JSON holding a field of the
	// wrong type: in klines the first candle's open price as a JSON number
	// (even matches) or its open time as a string (odd matches); elsewhere
	// serverTime as a string, or an array for ping.
	FaultMalformed FaultKind = "malformed"
	// FaultInvalid (klines only) answers 200 with a well-formed page whose
	// candle at index (len-1)/2 breaks the candle rules, in turn: high below
	// low, a wrong close time, a negative volume.
	FaultInvalid FaultKind = "invalid"
	// FaultInvalidOpen (klines only) answers 200 with the page as served
	// but its still-open last candle breaking the candle rules (high below
	// low); a page without an open candle is left alone. A fetcher that
	// drops the forming candle before it validates stores the closed ones.
	FaultInvalidOpen FaultKind = "invalid_open"
	// FaultRateLimit answers 429 with code -1003 and Retry-After (RetryAfter,
	// default the rest of the weight window), without counting toward a ban.
	FaultRateLimit FaultKind = "ratelimit"
	// FaultBan bans the client's IP for RetryAfter (default BanDuration):
	// this and every request until then get 418 with Retry-After.
	FaultBan FaultKind = "ban"
	// FaultLatency delays the request by Delay and lets it through; later
	// faults still apply.
	FaultLatency FaultKind = "latency"
)

// Fault disturbs matching API requests. Empty Path, Symbol and Interval
// match anything; faults are checked in the order added and the first
// non-latency match decides. With Rate set, a matching request is affected
// only with that probability, drawn from the fault's own RNG seeded with
// Seed, so a test that sends its requests in the same order sees the same
// faults on every run; a request left alone does not count toward Count.
type Fault struct {
	Kind       FaultKind     `json:"kind"`
	Path       string        `json:"path,omitempty"`     // e.g. "/api/v3/klines"
	Symbol     string        `json:"symbol,omitempty"`   // the symbol parameter
	Interval   string        `json:"interval,omitempty"` // the interval parameter
	Count      int           `json:"count,omitempty"`    // matching requests affected; 0 = until cleared
	Status     int           `json:"status,omitempty"`   // for FaultStatus
	Rate       float64       `json:"rate,omitempty"`     // probability 0..1 that a match is affected; 0 = every match
	Seed       uint64        `json:"seed,omitempty"`     // seeds Rate's RNG (0 is a fixed seed too)
	RetryAfter time.Duration `json:"-"`                  // FaultRateLimit, FaultBan; JSON "retry_after":"2s"
	Delay      time.Duration `json:"-"`                  // FaultLatency, FaultTimeout; JSON "delay":"500ms"
}

// MarshalJSON writes durations as Go duration strings ("retry_after":"2s").
func (f Fault) MarshalJSON() ([]byte, error) {
	type plain Fault
	w := struct {
		plain
		RetryAfter string `json:"retry_after,omitempty"`
		Delay      string `json:"delay,omitempty"`
	}{plain: plain(f)}
	if f.RetryAfter != 0 {
		w.RetryAfter = f.RetryAfter.String()
	}
	if f.Delay != 0 {
		w.Delay = f.Delay.String()
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads the form MarshalJSON writes, strictly.
func (f *Fault) UnmarshalJSON(data []byte) error {
	type plain Fault
	var w struct {
		plain
		RetryAfter string `json:"retry_after"`
		Delay      string `json:"delay"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("fault: %w", err)
	}
	*f = Fault(w.plain)
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{{"retry_after", w.RetryAfter, &f.RetryAfter}, {"delay", w.Delay, &f.Delay}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return fmt.Errorf("fault %s: %w", d.name, err)
		}
		*d.dst = v
	}
	return nil
}

// Validate reports a fault that could never act as intended.
func (f Fault) Validate() error {
	switch f.Kind {
	case FaultStatus, FaultTimeout, FaultTruncate, FaultMalformed, FaultInvalid, FaultInvalidOpen, FaultRateLimit, FaultBan, FaultLatency:
	default:
		return fmt.Errorf("fault kind %q: want status, timeout, truncate, malformed, invalid, invalid_open, ratelimit, ban or latency", f.Kind)
	}
	switch {
	case f.Count < 0:
		return fmt.Errorf("fault count %d must not be negative", f.Count)
	case f.Rate < 0 || f.Rate > 1 || math.IsNaN(f.Rate):
		return fmt.Errorf("fault rate %v: want a probability from 0 to 1 (0 affects every match)", f.Rate)
	case f.Kind == FaultStatus && f.Status != 0 && (f.Status < 500 || f.Status > 599):
		return fmt.Errorf("fault status %d: want a 5xx status", f.Status)
	case f.RetryAfter < 0 || f.Delay < 0:
		return fmt.Errorf("fault durations must not be negative")
	case f.Interval != "":
		if _, err := candles.ParseInterval(f.Interval); err != nil {
			return fmt.Errorf("fault interval: %w", err)
		}
	}
	return nil
}

type faultEntry struct {
	f    Fault
	used int
	rng  *rand.Rand // draws Rate; nil without one
}

func (e *faultEntry) matches(path, symbol, interval string) bool {
	return (e.f.Path == "" || e.f.Path == path) && (e.f.Symbol == "" || e.f.Symbol == symbol) &&
		(e.f.Interval == "" || e.f.Interval == interval) &&
		((e.f.Kind != FaultInvalid && e.f.Kind != FaultInvalidOpen) || path == klinesPath)
}

// strikes draws whether a matching request is affected.
func (e *faultEntry) strikes() bool {
	return e.rng == nil || e.rng.Float64() < e.f.Rate
}

// AddFault appends f to the active faults. An invalid fault (see
// Fault.Validate) is logged and ignored.
func (s *Sim) AddFault(f Fault) {
	if err := f.Validate(); err != nil {
		s.log.Error("sim: ignoring fault", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &faultEntry{f: f}
	if f.Rate > 0 {
		e.rng = rand.New(rand.NewPCG(f.Seed, 0x5eed))
	}
	s.faults = append(s.faults, e)
}

// ClearFaults removes every fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Faults returns the active faults, Count reduced by the matches so far.
func (s *Sim) Faults() []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Fault, 0, len(s.faults))
	for _, e := range s.faults {
		f := e.f
		if f.Count > 0 {
			f.Count -= e.used
		}
		out = append(out, f)
	}
	return out
}

// takeFault consumes the faults matching a request: the summed delay of
// latency faults before the first other match, that match (or nil) and how
// many times it matched before.
func (s *Sim) takeFault(path, symbol, interval string) (time.Duration, *Fault, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var delay time.Duration
	for i := 0; i < len(s.faults); {
		e := s.faults[i]
		if !e.matches(path, symbol, interval) || !e.strikes() {
			i++
			continue
		}
		e.used++
		if e.f.Count > 0 && e.used >= e.f.Count {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		} else {
			i++
		}
		if e.f.Kind == FaultLatency {
			delay += e.f.Delay
			continue
		}
		f := e.f
		return delay, &f, e.used - 1
	}
	return delay, nil, 0
}

// faultReply answers for the faults that replace the response; handled is
// false for the ones that reshape the real response instead. A zero status
// means the client left.
func (s *Sim) faultReply(ctx context.Context, w http.ResponseWriter, ip string, f Fault) (r reply, handled bool) {
	switch f.Kind {
	case FaultStatus:
		st := f.Status
		if st == 0 {
			st = http.StatusServiceUnavailable
		}
		if st == http.StatusBadGateway || st == http.StatusGatewayTimeout {
			return reply{status: st, html: true, body: fmt.Appendf(nil,
				"<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1></center>\r\n</body>\r\n</html>\r\n",
				st, http.StatusText(st), st, http.StatusText(st))}, true
		}
		return reply{status: st, body: errorBody(-1001, "Internal error; unable to process your request. Please try again.")}, true
	case FaultTimeout:
		d := f.Delay
		if d <= 0 || d > maxHang {
			d = maxHang
		}
		if !sleep(ctx, s.done, d) {
			return reply{}, true
		}
		return reply{status: http.StatusGatewayTimeout, html: true, body: []byte("<html><body><h1>504 Gateway Time-out</h1></body></html>")}, true
	case FaultRateLimit:
		now := s.wall()
		win := s.opts.WeightWindow.Nanoseconds()
		d := f.RetryAfter
		if d <= 0 {
			d = time.Duration(win - now.UnixNano()%win)
		}
		w.Header().Set("Retry-After", retryAfter(d))
		return reply{status: http.StatusTooManyRequests, body: errorBody(-1003, s.tooMany(ip))}, true
	case FaultBan:
		d := f.RetryAfter
		if d <= 0 {
			d = s.opts.BanDuration
		}
		now := s.wall()
		s.mu.Lock()
		st := s.ips[ip] // admit created it
		s.ban(ip, st, now, d)
		v := s.bannedVerdict(st, now)
		s.mu.Unlock()
		w.Header().Set("Retry-After", retryAfter(v.retry))
		return reply{status: v.status, body: errorBody(-1003, v.msg)}, true
	}
	return reply{}, false
}

// reshape applies the body-rewriting faults (truncate, malformed, invalid,
// invalid_open) to a successful reply; n is how often the fault matched
// before.
func reshape(r reply, f Fault, n int) reply {
	if r.status != http.StatusOK {
		return r
	}
	switch f.Kind {
	case FaultTruncate:
		r.body = r.body[:len(r.body)/2]
	case FaultMalformed:
		r.body = malform(r, n)
	case FaultInvalid:
		if len(r.page) == 0 {
			return r
		}
		page := append([]candles.Candle(nil), r.page...)
		c := &page[(len(page)-1)/2] // a closed one when the last is still open
		switch n % 3 {
		case 0:
			c.High = q(math.Min(c.Open, c.Close) / 2) // below low, and below open and close
		case 1:
			c.CloseTime++
		case 2:
			c.Volume = -c.Volume - 1
		}
		r.body = renderKlines(page, nil)
	case FaultInvalidOpen:
		if len(r.page) == 0 || !r.lastOpen {
			return r
		}
		page := append([]candles.Candle(nil), r.page...)
		c := &page[len(page)-1]
		c.High = q(math.Min(c.Open, c.Close) / 2) // below low, and below open and close
		r.body = renderKlines(page, nil)
	}
	return r
}

// malform rewrites a body to valid JSON with a field of the wrong type.
func malform(r reply, n int) []byte {
	if r.page != nil || bytes.HasPrefix(r.body, []byte("[")) {
		if len(r.page) == 0 {
			return []byte("{}")
		}
		return renderKlines(r.page, func(i int, t []string) {
			switch {
			case i != 0:
			case n%2 == 0:
				t[1] = strings.Trim(t[1], `"`)
			default:
				t[0] = `"` + t[0] + `"`
			}
		})
	}
	const key = `"serverTime":`
	i := bytes.Index(r.body, []byte(key))
	if i < 0 {
		return []byte("[]")
	}
	i += len(key)
	j := i
	for j < len(r.body) && r.body[j] >= '0' && r.body[j] <= '9' {
		j++
	}
	return fmt.Appendf(nil, `%s"%s"%s`, r.body[:i], r.body[i:j], r.body[j:])
}
