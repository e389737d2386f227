// Package sim is a Binance-spot-compatible HTTP simulator for tests, demos
// and benchmarks (`candlekeep sim`). It serves
//
//	GET /api/v3/ping          {}                              weight 1
//	GET /api/v3/time          {"serverTime":ms}               weight 1
//	GET /api/v3/exchangeInfo  symbol=X or symbols=["X","Y"]   weight 20
//	GET /api/v3/klines        symbol, interval, startTime, endTime, limit, timeZone
//
// as Binance documents them: 12-element kline arrays with 8-decimal strings,
// default limit 500 and at most 1000 (larger limits are cut to 1000), the
// still-open last candle, listing dates, request weight per fixed window with
// X-MBX-USED-WEIGHT-1M, 429 with Retry-After over the limit, a 418 ban (whose
// length doubles for repeat offenders) once a client ignores BanAfter 429s in
// one window, and error bodies such as {"code":-1121,"msg":"Invalid symbol."}.
//
// Candles are a pure function of (symbol, interval, open time): Candle and
// Klines give a test the exact floats a correct client must end up with.
// Faults (5xx, hangs, truncated, malformed or rule-breaking bodies, 429
// storms, bans, latency) and withheld ranges (exchange outages) are switched
// at run time, from Go or over HTTP.
//
// Admin endpoints (JSON, no weight, no faults, not counted in Stats):
//
//	GET    /sim/stats          Stats
//	POST   /sim/stats/reset    zero the stats
//	GET    /sim/faults         the active faults
//	POST   /sim/faults         add one Fault: {"kind":"status","path":"/api/v3/klines","symbol":"BTCUSDT",
//	                           "interval":"4h","count":3,"status":503,"retry_after":"2s","delay":"500ms"}
//	DELETE /sim/faults         clear all faults
//	POST   /sim/withhold       {"symbol":"BTCUSDT","interval":"4h","from":ms|"RFC3339","until":ms|"RFC3339"}
//	GET    /sim/clock          {"now":"RFC3339Nano","ms":ms}
//	POST   /sim/clock          {"now":"RFC3339"} fixes the exchange clock, {"offset":"-48h"} shifts the
//	                           real clock, {} restores Options.Now
//	POST   /sim/latency        {"latency":"50ms"} sets the latency added to every request
//	POST   /sim/webhook/NAME   a Slack-compatible incoming webhook: keeps the body, answers 200 "ok"
//	GET    /sim/webhook        {"posts":[{"path":"/sim/webhook/NAME","at":"RFC3339Nano","body":"..."}]}
//	DELETE /sim/webhook        forget the posts
//
// Errors from admin endpoints are {"error":"..."} with status 400 or 404.
package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Defaults for zero Options fields, Binance's published values.
const (
	DefaultWeightLimit  = 6000
	DefaultWeightWindow = time.Minute
	DefaultBanAfter     = 10
	DefaultBanDuration  = 2 * time.Minute
	// maxBan is Binance's longest ban for repeat offenders.
	maxBan = 72 * time.Hour
	// maxHang bounds a "timeout" fault.
	maxHang = 2 * time.Minute
)

// Options configures a Sim. Zero (or negative) fields take the defaults
// above.
type Options struct {
	// Now is the exchange clock: it decides which candles are closed, which
	// one is still open and what serverTime says. Default time.Now.
	Now func() time.Time
	// Symbols that exist; default candles.DefaultSymbols() plus ExtraSymbols.
	Symbols []string
	// Listings overrides the listing date of some symbols; the others get a
	// day derived from a hash of the symbol, 2017-08-17 to 2021-06-01.
	Listings map[string]time.Time
	// WeightLimit is the request weight allowed per window and IP.
	WeightLimit int
	// WeightWindow is the length of the fixed weight windows, aligned to the
	// wall clock (time.Now, not Now) as Binance's per-minute counter is.
	WeightWindow time.Duration
	// BanAfter is how many 429 answers one IP may get in one window before
	// its next over-limit request starts a 418 ban.
	BanAfter int
	// BanDuration is the first ban's length; each further ban doubles it.
	BanDuration time.Duration
	// Latency is added to every request.
	Latency time.Duration
	// KlinesWeight gives the weight of a klines request for its limit
	// parameter (500 when absent). Default SpotKlinesWeight; LimitKlinesWeight
	// is the futures-style table by limit.
	KlinesWeight func(limit int) int
	// Logger receives request and ban logs; default discard.
	Logger *slog.Logger
}

// ExtraSymbols are served besides candles.DefaultSymbols() by default:
// non-USDT quotes and a symbol starting with a digit.
func ExtraSymbols() []string {
	return []string{"ETHBTC", "BNBBTC", "BTCFDUSD", "BTCEUR", "1000SATSUSDT"}
}

// Validate reports the first bad field, naming it.
func (o Options) Validate() error {
	for _, s := range o.Symbols {
		if !candles.ValidSymbol(s) {
			return fmt.Errorf("sim options: Symbols: %q is not a symbol (2-20 upper-case letters and digits)", s)
		}
	}
	switch {
	case o.WeightLimit < 0:
		return fmt.Errorf("sim options: WeightLimit %d must not be negative", o.WeightLimit)
	case o.WeightWindow < 0:
		return fmt.Errorf("sim options: WeightWindow %v must not be negative", o.WeightWindow)
	case o.BanAfter < 0:
		return fmt.Errorf("sim options: BanAfter %d must not be negative", o.BanAfter)
	case o.BanDuration < 0:
		return fmt.Errorf("sim options: BanDuration %v must not be negative", o.BanDuration)
	case o.Latency < 0:
		return fmt.Errorf("sim options: Latency %v must not be negative", o.Latency)
	}
	return nil
}

// Sim is the simulated exchange. It is an http.Handler; all its methods are
// safe for concurrent use.
type Sim struct {
	opts      Options
	log       *slog.Logger
	symbols   []string
	symbolSet map[string]bool
	listings  map[string]time.Time
	adminMux  *http.ServeMux
	done      chan struct{}
	closeOnce sync.Once
	wall      func() time.Time // the rate limiter's clock; tests replace it

	mu      sync.Mutex
	clock   func() time.Time
	latency time.Duration
	held    map[string]spans // by pairKey
	faults  []*faultEntry
	ips     map[string]*ipState
	stats   Stats
	inbox   []WebhookPost
}

// New returns a simulator. Invalid symbols are dropped with a warning; call
// Options.Validate first to refuse them instead.
func New(o Options) *Sim {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Symbols == nil {
		o.Symbols = append(candles.DefaultSymbols(), ExtraSymbols()...)
	}
	if o.WeightLimit <= 0 {
		o.WeightLimit = DefaultWeightLimit
	}
	if o.WeightWindow <= 0 {
		o.WeightWindow = DefaultWeightWindow
	}
	if o.BanAfter <= 0 {
		o.BanAfter = DefaultBanAfter
	}
	if o.BanDuration <= 0 {
		o.BanDuration = DefaultBanDuration
	}
	if o.KlinesWeight == nil {
		o.KlinesWeight = SpotKlinesWeight
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Sim{
		opts: o, log: o.Logger, symbolSet: map[string]bool{}, listings: map[string]time.Time{},
		done: make(chan struct{}), wall: time.Now, clock: o.Now, latency: max(o.Latency, 0),
		held: map[string]spans{}, ips: map[string]*ipState{},
	}
	for _, sym := range o.Symbols {
		if !candles.ValidSymbol(sym) || s.symbolSet[sym] {
			s.log.Warn("sim: ignoring symbol", "symbol", sym)
			continue
		}
		s.symbols = append(s.symbols, sym)
		s.symbolSet[sym] = true
	}
	for sym, t := range o.Listings {
		s.listings[sym] = t.UTC().Truncate(24 * time.Hour)
	}
	s.stats = newStats()
	s.adminMux = s.newAdminMux()
	return s
}

// Close releases requests hanging in a "timeout" fault, so that an
// http.Server holding the Sim can shut down promptly.
func (s *Sim) Close() { s.closeOnce.Do(func() { close(s.done) }) }

// SetLatency sets the latency added to every request.
func (s *Sim) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = max(d, 0)
}

// SetClock replaces the exchange clock; nil restores Options.Now.
func (s *Sim) SetClock(now func() time.Time) {
	if now == nil {
		now = s.opts.Now
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock = now
}

// Withhold makes the candles of symbol/iv opening in [from, until) vanish, as
// in an exchange outage: the API never serves them and Klines skips them.
func (s *Sim) Withhold(symbol string, iv candles.Interval, from, until int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := pairKey(symbol, iv.String())
	s.held[k] = append(s.held[k], span{from, until})
}

func (s *Sim) withheld(symbol string, iv candles.Interval) spans {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(spans(nil), s.held[pairKey(symbol, iv.String())]...)
}

func (s *Sim) now() time.Time {
	s.mu.Lock()
	clock := s.clock
	s.mu.Unlock()
	return clock()
}

func (s *Sim) hasSymbol(sym string) bool { return s.symbolSet[sym] }

func pairKey(symbol, interval string) string { return symbol + "/" + interval }

// ServeHTTP serves the Binance API and the /sim/ admin endpoints.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/sim/") {
		s.adminMux.ServeHTTP(w, r)
		return
	}
	ctx, path, qs := r.Context(), r.URL.Path, r.URL.Query()
	pair := ""
	if path == klinesPath && qs.Get("symbol") != "" && qs.Get("interval") != "" {
		pair = pairKey(qs.Get("symbol"), qs.Get("interval"))
	}
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if !sleep(ctx, s.done, latency) {
		s.finish(w, r, pair, reply{})
		return
	}
	ep := s.endpoint(path)
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	v := s.admit(ip, ep.weight(qs), s.wall())
	s.setHeaders(w, v.used)
	if v.status != 0 {
		w.Header().Set("Retry-After", retryAfter(v.retry))
		s.finish(w, r, pair, reply{status: v.status, body: errorBody(-1003, v.msg)})
		return
	}
	delay, f, n := s.takeFault(path, qs.Get("symbol"), qs.Get("interval"))
	if !sleep(ctx, s.done, delay) {
		s.finish(w, r, pair, reply{})
		return
	}
	if f != nil {
		if rep, handled := s.faultReply(ctx, w, ip, *f); handled {
			s.finish(w, r, pair, rep)
			return
		}
	}
	rep := ep.handle(qs)
	if f != nil {
		rep = reshape(rep, *f, n)
	}
	s.finish(w, r, pair, rep)
}

// finish writes rep and counts it.
func (s *Sim) finish(w http.ResponseWriter, r *http.Request, pair string, rep reply) {
	if rep.status == 0 { // the client left during latency or a hanging fault
		s.record(r.URL.Path, pair, 0)
		return
	}
	if rep.html {
		w.Header().Set("Content-Type", "text/html")
	}
	w.WriteHeader(rep.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(rep.body)
	}
	s.record(r.URL.Path, pair, rep.status)
	s.log.Debug("sim request", "path", r.URL.Path, "query", r.URL.RawQuery, "status", rep.status)
}

// sleep waits d, or less if the Sim closes; it reports false if ctx ended
// first (the client is gone).
func sleep(ctx context.Context, done <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-done:
		return true
	}
}
