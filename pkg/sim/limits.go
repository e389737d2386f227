package sim

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"strconv"
	"time"
)

// maxWindows bounds Stats.Windows (a day of one-minute windows).
const maxWindows = 1440

// Stats counts what the API answered since New or ResetStats. Admin
// requests are not counted; requests refused with 429 or 418 are.
type Stats struct {
	Requests      int64            `json:"requests"`
	Paths         map[string]int64 `json:"paths"`           // by URL path
	Klines        map[string]int64 `json:"klines"`          // by "SYMBOL/interval", as requested
	Statuses      map[int]int64    `json:"statuses"`        // by HTTP status; 0 = client gave up first
	RateLimited   int64            `json:"rate_limited"`    // 429 answers
	Banned        int64            `json:"banned"`          // 418 answers
	MaxUsedWeight int              `json:"max_used_weight"` // highest X-MBX-USED-WEIGHT of any IP in any window
	Windows       []WindowWeight   `json:"windows"`         // weight used per window, all IPs, oldest first
}

// WindowWeight is the request weight used in one rate-limit window.
type WindowWeight struct {
	Start  time.Time `json:"start"`
	Weight int       `json:"weight"`
}

func newStats() Stats {
	return Stats{Paths: map[string]int64{}, Klines: map[string]int64{}, Statuses: map[int]int64{}}
}

// Stats returns a copy of the request counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Paths, st.Klines, st.Statuses = maps.Clone(st.Paths), maps.Clone(st.Klines), maps.Clone(st.Statuses)
	st.Windows = append([]WindowWeight(nil), st.Windows...)
	return st
}

// ResetStats zeroes the counters; rate-limit state is kept.
func (s *Sim) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = newStats()
}

func (s *Sim) record(path, pair string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	s.stats.Paths[path]++
	if pair != "" {
		s.stats.Klines[pair]++
	}
	s.stats.Statuses[status]++
	switch status {
	case http.StatusTooManyRequests:
		s.stats.RateLimited++
	case http.StatusTeapot:
		s.stats.Banned++
	}
}

// ipState is one client IP's weight in the current window and its ban.
type ipState struct {
	window   int64 // start of the current window, Unix ns
	used     int
	n429     int // 429 answers in this window
	banUntil time.Time
	bans     int
}

// verdict is the rate limiter's answer: status 0 lets the request through.
type verdict struct {
	status int
	used   int
	retry  time.Duration
	msg    string
}

// admit charges weight to ip at wall-clock time now. Over the limit it
// answers 429 until the IP has had BanAfter of them in this window; the next
// one bans the IP, and every request during a ban gets 418.
func (s *Sim) admit(ip string, weight int, now time.Time) verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	win := s.opts.WeightWindow.Nanoseconds()
	start := now.UnixNano() - now.UnixNano()%win
	st := s.ips[ip]
	if st == nil {
		st = &ipState{}
		s.ips[ip] = st
	}
	if st.window != start {
		st.window, st.used, st.n429 = start, 0, 0
	}
	if now.Before(st.banUntil) {
		return s.bannedVerdict(st, now)
	}
	st.used += weight
	s.noteWeight(start, weight, st.used)
	if st.used <= s.opts.WeightLimit {
		return verdict{used: st.used}
	}
	if st.n429 >= s.opts.BanAfter {
		s.ban(ip, st, now, min(s.opts.BanDuration<<min(st.bans, 20), maxBan))
		st.bans++
		return s.bannedVerdict(st, now)
	}
	st.n429++
	return verdict{
		status: http.StatusTooManyRequests, used: st.used, retry: time.Duration(start + win - now.UnixNano()),
		msg: s.tooMany(ip),
	}
}

// ban bans ip for d from now; once it ends, the IP again gets BanAfter 429s
// before the next ban. The caller holds s.mu.
func (s *Sim) ban(ip string, st *ipState, now time.Time, d time.Duration) {
	st.banUntil, st.n429 = now.Add(d), 0
	s.log.Info("sim: IP banned", "ip", ip, "until", st.banUntil, "duration", d)
}

func (s *Sim) bannedVerdict(st *ipState, now time.Time) verdict {
	return verdict{
		status: http.StatusTeapot, used: st.used, retry: st.banUntil.Sub(now),
		msg: fmt.Sprintf("Way too much request weight used; IP banned until %d. "+
			"Please use WebSocket Streams for live updates to avoid bans.", st.banUntil.UnixMilli()),
	}
}

// noteWeight adds weight to the window starting at start (Unix ns) in the
// stats. The caller holds s.mu.
func (s *Sim) noteWeight(start int64, weight, used int) {
	ws := &s.stats.Windows
	if n := len(*ws); n == 0 || (*ws)[n-1].Start.UnixNano() != start {
		*ws = append(*ws, WindowWeight{Start: time.Unix(0, start).UTC()})
		if len(*ws) > maxWindows {
			*ws = (*ws)[1:]
		}
	}
	(*ws)[len(*ws)-1].Weight += weight
	s.stats.MaxUsedWeight = max(s.stats.MaxUsedWeight, used)
}

// window names the weight window as Binance does: (1, "MINUTE") for the
// header suffix "1M" and the message "1 MINUTE", or (6, "SECOND").
func (s *Sim) window() (int, string) {
	if w := s.opts.WeightWindow; w%time.Minute == 0 {
		return int(w / time.Minute), "MINUTE"
	}
	return max(int(s.opts.WeightWindow.Round(time.Second)/time.Second), 1), "SECOND"
}

// tooMany is the -1003 message of a 429.
func (s *Sim) tooMany(ip string) string {
	n, unit := s.window()
	return fmt.Sprintf("Too many requests; current limit of IP(%s) request weight is %d request weight per %d %s. "+
		"Please use WebSocket Streams for live updates to avoid bans.", ip, s.opts.WeightLimit, n, unit)
}

// setHeaders sets the headers every API response carries.
func (s *Sim) setHeaders(w http.ResponseWriter, used int) {
	h, v := w.Header(), strconv.Itoa(used)
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("X-MBX-USED-WEIGHT", v)
	h.Set("X-MBX-USED-WEIGHT-1M", v)
	if n, unit := s.window(); n != 1 || unit != "MINUTE" {
		h.Set(fmt.Sprintf("X-MBX-USED-WEIGHT-%d%c", n, unit[0]), v)
	}
}

// retryAfter formats d as whole seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(int(math.Ceil(d.Seconds())), 1))
}
