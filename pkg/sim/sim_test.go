package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	binance "github.com/adshao/go-binance/v2"
	"github.com/adshao/go-binance/v2/common"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/testclock"
)

// testNow is the exchange clock in most tests: mid-candle for every
// interval from 1h up.
var testNow = time.Date(2024, 3, 15, 10, 30, 15, 0, time.UTC)

var (
	iv4h = candles.MustInterval("4h")
	iv1d = candles.MustInterval("1d")
)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// start serves a Sim on 127.0.0.1. A non-nil wall replaces the limiter's
// clock.
func start(t *testing.T, o Options, wall *testclock.Clock) (*Sim, *httptest.Server) {
	t.Helper()
	if o.Now == nil {
		o.Now = fixed(testNow)
	}
	s := New(o)
	if wall != nil {
		s.wall = wall.Now
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	return s, srv
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func get(t *testing.T, base, pathAndQuery string) response {
	t.Helper()
	return do(t, http.MethodGet, base+pathAndQuery, "")
}

func do(t *testing.T, method, u, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return response{res.StatusCode, res.Header, b}
}

func klinesQuery(symbol string, iv candles.Interval, kv ...any) string {
	q := url.Values{"symbol": {symbol}, "interval": {iv.String()}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i].(string), fmt.Sprint(kv[i+1]))
	}
	return klinesPath + "?" + q.Encode()
}

// parseKlines decodes kline arrays strictly: 12 elements, integers where
// Binance has integers and decimal strings elsewhere.
func parseKlines(body []byte) ([]candles.Candle, error) {
	var rows [][]json.RawMessage
	if err := json.Unmarshal(body, &rows); err != nil {
		return nil, err
	}
	out := make([]candles.Candle, 0, len(rows))
	for i, row := range rows {
		if len(row) != 12 {
			return nil, fmt.Errorf("row %d: %d elements", i, len(row))
		}
		var err error
		ints := func(j int) int64 {
			var n int64
			if e := json.Unmarshal(row[j], &n); e != nil && err == nil {
				err = fmt.Errorf("row %d field %d: %s is not an integer", i, j, row[j])
			}
			return n
		}
		floats := func(j int) float64 {
			var s string
			if e := json.Unmarshal(row[j], &s); e != nil && err == nil {
				err = fmt.Errorf("row %d field %d: %s is not a string", i, j, row[j])
				return 0
			}
			f, e := strconv.ParseFloat(s, 64)
			if e != nil && err == nil {
				err = fmt.Errorf("row %d field %d: %w", i, j, e)
			}
			return f
		}
		c := candles.Candle{OpenTime: ints(0), Open: floats(1), High: floats(2), Low: floats(3), Close: floats(4),
			Volume: floats(5), CloseTime: ints(6), QuoteVolume: floats(7), Trades: ints(8),
			TakerBuyBaseVolume: floats(9), TakerBuyQuoteVolume: floats(10)}
		if floats(11) != 0 {
			err = fmt.Errorf("row %d: ignored field is not \"0\"", i)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func mustKlines(t *testing.T, base, pathAndQuery string) []candles.Candle {
	t.Helper()
	r := get(t, base, pathAndQuery)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", pathAndQuery, r.status, r.body)
	}
	cs, err := parseKlines(r.body)
	if err != nil {
		t.Fatalf("GET %s: %v", pathAndQuery, err)
	}
	return cs
}

func equalCandles(t *testing.T, what string, got, want []candles.Candle) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d candles, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: candle %d = %+v, want %+v", what, i, got[i], want[i])
		}
	}
}

func TestCandleIsAPureValidFunction(t *testing.T) {
	a, b := New(Options{Now: fixed(testNow)}), New(Options{Now: fixed(testNow.Add(time.Hour))})
	open := iv4h.Align(testNow.UnixMilli()) - 100*4*3_600_000
	if a.Candle("BTCUSDT", iv4h, open) != b.Candle("BTCUSDT", iv4h, open) {
		t.Fatal("Candle depends on more than (symbol, interval, open time)")
	}
	if a.Candle("BTCUSDT", iv4h, open) == a.Candle("ETHUSDT", iv4h, open) {
		t.Fatal("two symbols have the same candle")
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, sym := range a.symbols {
		for _, name := range candles.IntervalNames() {
			iv := candles.MustInterval(name)
			page := make([]candles.Candle, 0, 40)
			for o, i := iv.Align(testNow.UnixMilli()), 0; i < 40; o, i = iv.Add(o, -1), i+1 {
				page = append([]candles.Candle{a.Candle(sym, iv, o)}, page...)
			}
			if err := candles.Validate(iv, page); err != nil {
				t.Fatalf("%s %s: %v", sym, name, err)
			}
			for _, c := range page {
				if c.TakerBuyBaseVolume > c.Volume || c.TakerBuyQuoteVolume > c.QuoteVolume || c.Low <= 0 || c.Trades < 1 {
					t.Fatalf("%s %s: implausible candle %+v", sym, name, c)
				}
				for _, v := range []float64{c.Open, c.High, c.Low, c.Close, c.Volume, c.QuoteVolume, c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume} {
					if back, _ := strconv.ParseFloat(decimal(v), 64); back != v {
						t.Fatalf("%s %s: %v does not survive its own 8-decimal string %s", sym, name, v, decimal(v))
					}
				}
				lo, hi = math.Min(lo, c.Low), math.Max(hi, c.High)
			}
		}
	}
	if lo > 0.01 || hi < 1000 {
		t.Fatalf("prices span [%v, %v]; want both tiny and large prices", lo, hi)
	}
}

func TestListing(t *testing.T) {
	listed := time.Date(2023, 8, 17, 0, 0, 0, 0, time.UTC) // a Thursday
	s, srv := start(t, Options{Listings: map[string]time.Time{"BTCUSDT": listed.Add(7 * time.Hour)}}, nil)
	if got := s.Listing("BTCUSDT"); !got.Equal(listed) {
		t.Fatalf("Listing = %v, want %v (aligned to the day)", got, listed)
	}
	for _, sym := range s.symbols {
		l := s.Listing(sym)
		if sym != "BTCUSDT" && (l.Before(time.UnixMilli(listingFromMs)) || l.After(time.UnixMilli(listingToMs)) || !l.Equal(l.Truncate(24*time.Hour))) {
			t.Fatalf("Listing(%s) = %v: outside 2017-08-17..2021-06-01 or not a day", sym, l)
		}
		if sym != "BTCUSDT" && l != New(Options{}).Listing(sym) {
			t.Fatalf("Listing(%s) is not deterministic", sym)
		}
	}
	for _, tc := range []struct {
		iv    string
		first time.Time
	}{
		{"4h", listed},
		{"1w", time.Date(2023, 8, 21, 0, 0, 0, 0, time.UTC)}, // the next Monday
		{"1M", time.Date(2023, 9, 1, 0, 0, 0, 0, time.UTC)},
	} {
		iv := candles.MustInterval(tc.iv)
		truth := s.Klines("BTCUSDT", iv, 0, math.MaxInt64)
		if len(truth) == 0 || truth[0].OpenTime != tc.first.UnixMilli() {
			t.Fatalf("%s: truth starts at %v, want %v", tc.iv, time.UnixMilli(truth[0].OpenTime).UTC(), tc.first)
		}
		api := mustKlines(t, srv.URL, klinesQuery("BTCUSDT", iv, "startTime", 0, "limit", 5))
		equalCandles(t, tc.iv+" from startTime=0", api, truth[:5])
		if got := mustKlines(t, srv.URL, klinesQuery("BTCUSDT", iv, "endTime", tc.first.UnixMilli()-1)); len(got) != 0 {
			t.Fatalf("%s: %d candles before the listing", tc.iv, len(got))
		}
	}
}

// TestPaging walks a 90-day range the way a fetcher does and must collect
// exactly the truth, every float bit-identical.
func TestPaging(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	until := iv4h.Align(testNow.UnixMilli()) - 10*4*3_600_000
	from := until - 90*dayMs
	want := s.Klines("ETHUSDT", iv4h, from, until)
	if len(want) != 540 {
		t.Fatalf("truth has %d candles, want 540", len(want))
	}
	for _, limit := range []int{1000, 7} {
		var got []candles.Candle
		for next := from; ; {
			page := mustKlines(t, srv.URL, klinesQuery("ETHUSDT", iv4h, "startTime", next, "endTime", until-1, "limit", limit))
			got = append(got, page...)
			if len(page) < limit {
				break
			}
			next = page[len(page)-1].OpenTime + 1
		}
		equalCandles(t, fmt.Sprintf("pages of %d", limit), got, want)
		if err := candles.Validate(iv4h, got); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKlinesSelection(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	now := testNow.UnixMilli()
	openNow := iv4h.Align(now)
	truth := s.Klines("BTCUSDT", iv4h, 0, math.MaxInt64)
	last := func(n int) []candles.Candle { return truth[len(truth)-n:] }
	endAt := openNow - 50*4*3_600_000 + 1 // inside a candle
	var before []candles.Candle
	for _, c := range truth {
		if c.OpenTime <= endAt {
			before = append(before, c)
		}
	}
	for _, tc := range []struct {
		name       string
		query      []any
		want       []candles.Candle // closed candles expected
		openLast   bool             // plus the open candle at the end
		wantWeight string
	}{
		{"no times: the most recent 500", nil, last(499), true, "2"},
		{"limit 1000", []any{"limit", 1000}, last(999), true, "2"},
		{"limit above 1000 is cut to 1000", []any{"limit", 5000}, last(999), true, "2"},
		{"limit 3", []any{"limit", 3}, last(2), true, "2"},
		{"only endTime: the latest before it", []any{"endTime", endAt, "limit", 10}, before[len(before)-10:], false, "2"},
		{"startTime only ascends", []any{"startTime", truth[7].OpenTime - 1, "limit", 4}, truth[7:11], false, "2"},
		{"startTime and endTime inclusive", []any{"startTime", truth[7].OpenTime, "endTime", truth[9].OpenTime}, truth[7:10], false, "2"},
		{"startTime after endTime", []any{"startTime", truth[9].OpenTime, "endTime", truth[7].OpenTime}, nil, false, "2"},
		{"startTime in the future", []any{"startTime", now + dayMs}, nil, false, "2"},
		{"open candle only", []any{"startTime", openNow}, nil, true, "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.ResetStats()
			r := get(t, srv.URL, klinesQuery("BTCUSDT", iv4h, tc.query...))
			got, err := parseKlines(r.body)
			if err != nil {
				t.Fatal(err)
			}
			if tc.openLast {
				if len(got) == 0 {
					t.Fatal("no open candle")
				}
				open := got[len(got)-1]
				got = got[:len(got)-1]
				full := s.Candle("BTCUSDT", iv4h, openNow)
				if open.OpenTime != openNow || open.CloseTime != full.CloseTime || open.CloseTime < now || open.Open != full.Open {
					t.Fatalf("open candle %+v, want open %d close_time %d", open, openNow, full.CloseTime)
				}
				if err := candles.Validate(iv4h, []candles.Candle{open}); err != nil || open.Volume >= full.Volume {
					t.Fatalf("open candle %+v not a consistent partial of %+v: %v", open, full, err)
				}
			}
			equalCandles(t, tc.name, got, tc.want)
			if h := r.header.Get("X-MBX-USED-WEIGHT-1M"); h == "" {
				t.Fatal("no X-MBX-USED-WEIGHT-1M")
			}
		})
	}
	if got := s.Klines("BTCUSDT", iv4h, openNow, math.MaxInt64); len(got) != 0 {
		t.Fatalf("Klines returns the open candle: %+v", got)
	}
}

func TestTimeZone(t *testing.T) {
	_, srv := start(t, Options{}, nil)
	cs := mustKlines(t, srv.URL, klinesQuery("BTCUSDT", iv1d, "timeZone", "8", "limit", 3))
	for i, c := range cs {
		if h := time.UnixMilli(c.OpenTime).UTC().Hour(); h != 16 {
			t.Fatalf("candle %d opens at %02d:00 UTC, want 16:00 (midnight UTC+8)", i, h)
		}
		if c.CloseTime != c.OpenTime+dayMs-1 || c.High < math.Max(c.Open, c.Close) || c.Low > math.Min(c.Open, c.Close) {
			t.Fatalf("candle %d broken: %+v", i, c)
		}
	}
	if got := cs[len(cs)-1]; got.OpenTime > testNow.UnixMilli() || got.CloseTime < testNow.UnixMilli() {
		t.Fatalf("last candle %+v does not contain now", got)
	}
	if r := get(t, srv.URL, klinesQuery("BTCUSDT", iv1d, "timeZone", "15")); r.status != http.StatusBadRequest {
		t.Fatalf("timeZone 15: %d %s", r.status, r.body)
	}
}

func TestWithhold(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	openNow := iv4h.Align(testNow.UnixMilli())
	gapFrom, gapUntil := openNow-40*4*3_600_000, openNow-30*4*3_600_000
	before := s.Klines("SOLUSDT", iv4h, openNow-60*4*3_600_000, openNow)
	s.Withhold("SOLUSDT", iv4h, gapFrom, gapUntil)
	r := do(t, http.MethodPost, srv.URL+"/sim/withhold",
		fmt.Sprintf(`{"symbol":"SOLUSDT","interval":"4h","from":%q,"until":%d}`,
			time.UnixMilli(openNow-20*4*3_600_000).UTC().Format(time.RFC3339), openNow-18*4*3_600_000))
	if r.status != http.StatusOK {
		t.Fatalf("POST /sim/withhold: %d %s", r.status, r.body)
	}
	var want []candles.Candle
	for _, c := range before {
		if (c.OpenTime < gapFrom || c.OpenTime >= gapUntil) && (c.OpenTime < openNow-20*4*3_600_000 || c.OpenTime >= openNow-18*4*3_600_000) {
			want = append(want, c)
		}
	}
	equalCandles(t, "Klines", s.Klines("SOLUSDT", iv4h, openNow-60*4*3_600_000, openNow), want)
	asc := mustKlines(t, srv.URL, klinesQuery("SOLUSDT", iv4h, "startTime", openNow-60*4*3_600_000, "endTime", openNow-1))
	equalCandles(t, "API by startTime", asc, want)
	desc := mustKlines(t, srv.URL, klinesQuery("SOLUSDT", iv4h, "endTime", openNow-1, "limit", len(want)))
	equalCandles(t, "API by endTime", desc, want)
	if other := s.Klines("SOLUSDT", iv1d, gapFrom, gapUntil); len(other) == 0 {
		t.Fatal("withholding 4h removed 1d candles")
	}
}

func TestWeights(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		path   string
		weight int
	}{
		{"ping", Options{}, pingPath, 1},
		{"time", Options{}, timePath, 1},
		{"exchangeInfo", Options{}, exchangeInfoPath, 20},
		{"klines, spot weight", Options{}, klinesQuery("BTCUSDT", iv4h, "limit", 1000), 2},
		{"klines error still weighs", Options{}, klinesQuery("NOPEUSDT", iv4h), 2},
		{"unknown path", Options{}, "/api/v3/nope", 1},
		{"limit table: 50", Options{KlinesWeight: LimitKlinesWeight}, klinesQuery("BTCUSDT", iv4h, "limit", 50), 1},
		{"limit table: 100", Options{KlinesWeight: LimitKlinesWeight}, klinesQuery("BTCUSDT", iv4h, "limit", 100), 2},
		{"limit table: default 500", Options{KlinesWeight: LimitKlinesWeight}, klinesQuery("BTCUSDT", iv4h), 5},
		{"limit table: 1000", Options{KlinesWeight: LimitKlinesWeight}, klinesQuery("BTCUSDT", iv4h, "limit", 1000), 5},
		{"limit table: 1001", Options{KlinesWeight: LimitKlinesWeight}, klinesQuery("BTCUSDT", iv4h, "limit", 1001), 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, srv := start(t, tc.opts, nil)
			for i := 1; i <= 2; i++ {
				r := get(t, srv.URL, tc.path)
				want := strconv.Itoa(i * tc.weight)
				if r.header.Get("X-MBX-USED-WEIGHT-1M") != want || r.header.Get("X-MBX-USED-WEIGHT") != want {
					t.Fatalf("request %d: used weight %q/%q, want %s", i, r.header.Get("X-MBX-USED-WEIGHT-1M"), r.header.Get("X-MBX-USED-WEIGHT"), want)
				}
				if ct := r.header.Get("Content-Type"); tc.path != "/api/v3/nope" && ct != "application/json;charset=UTF-8" {
					t.Fatalf("Content-Type %q", ct)
				}
			}
			if st := s.Stats(); st.MaxUsedWeight != 2*tc.weight || len(st.Windows) != 1 || st.Windows[0].Weight != 2*tc.weight {
				t.Fatalf("stats %+v, want weight %d in one window", st, 2*tc.weight)
			}
		})
	}
	t.Run("header named after a short window", func(t *testing.T) {
		_, srv := start(t, Options{WeightLimit: 600, WeightWindow: 6 * time.Second}, nil)
		r := get(t, srv.URL, pingPath)
		if r.header.Get("X-MBX-USED-WEIGHT-6S") != "1" || r.header.Get("X-MBX-USED-WEIGHT-1M") != "1" {
			t.Fatalf("headers %v", r.header)
		}
	})
}

type apiErr struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

func decodeErr(t *testing.T, r response) apiErr {
	t.Helper()
	var e apiErr
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	return e
}

func TestRateLimitAndBan(t *testing.T) {
	wall := testclock.New(time.Date(2025, 1, 1, 12, 0, 1, 0, time.UTC))
	s, srv := start(t, Options{WeightLimit: 10, BanAfter: 3, BanDuration: 2 * time.Second}, wall)
	expect := func(status int, retryAfter string, code int, msg string) response {
		t.Helper()
		r := get(t, srv.URL, pingPath)
		if r.status != status || r.header.Get("Retry-After") != retryAfter {
			t.Fatalf("got %d Retry-After %q (%s), want %d %q", r.status, r.header.Get("Retry-After"), r.body, status, retryAfter)
		}
		if code != 0 {
			if e := decodeErr(t, r); e.Code != code || !strings.Contains(e.Msg, msg) {
				t.Fatalf("body %s, want code %d containing %q", r.body, code, msg)
			}
		}
		return r
	}
	for range 10 {
		expect(http.StatusOK, "", 0, "")
	}
	r := expect(http.StatusTooManyRequests, "59", -1003,
		"Too many requests; current limit of IP(127.0.0.1) request weight is 10 request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid bans.")
	if r.header.Get("X-MBX-USED-WEIGHT-1M") != "11" {
		t.Fatalf("used weight %q after the 11th request", r.header.Get("X-MBX-USED-WEIGHT-1M"))
	}
	expect(http.StatusTooManyRequests, "59", -1003, "")
	expect(http.StatusTooManyRequests, "59", -1003, "")
	until := wall.Now().Add(2 * time.Second).UnixMilli()
	expect(http.StatusTeapot, "2", -1003, fmt.Sprintf("Way too much request weight used; IP banned until %d. Please use WebSocket Streams for live updates to avoid bans.", until))
	if r := get(t, srv.URL, klinesQuery("BTCUSDT", iv4h)); r.status != http.StatusTeapot {
		t.Fatalf("klines during a ban: %d", r.status)
	}
	wall.Add(1500 * time.Millisecond)
	expect(http.StatusTeapot, "1", -1003, "")
	wall.Add(500 * time.Millisecond) // the ban is over, the window's weight is not
	expect(http.StatusTooManyRequests, "57", -1003, "")

	wall.Add(time.Minute) // a new window
	expect(http.StatusOK, "", 0, "")
	for range 9 {
		get(t, srv.URL, pingPath)
	}
	for range 3 {
		expect(http.StatusTooManyRequests, "57", -1003, "")
	}
	expect(http.StatusTeapot, "4", -1003, "") // a repeat offender's ban doubles

	st := s.Stats()
	if st.RateLimited != 7 || st.Banned != 4 || st.Requests != 31 || st.MaxUsedWeight != 15 || len(st.Windows) != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFaults(t *testing.T) {
	btc := klinesQuery("BTCUSDT", iv4h, "limit", 5)
	type check func(t *testing.T, i int, r response, real []byte)
	isJSONError := func(status, code int) check {
		return func(t *testing.T, _ int, r response, _ []byte) {
			if e := decodeErr(t, r); r.status != status || e.Code != code {
				t.Fatalf("got %d %s, want %d code %d", r.status, r.body, status, code)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		fault Fault
		path  string
		check check
	}{
		{"status 503 JSON", Fault{Kind: FaultStatus, Count: 2}, btc, isJSONError(503, -1001)},
		{"status 502 HTML", Fault{Kind: FaultStatus, Status: 502, Count: 2}, btc, func(t *testing.T, _ int, r response, _ []byte) {
			if r.status != 502 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !strings.Contains(string(r.body), "<html>") {
				t.Fatalf("got %d %q %s", r.status, r.header.Get("Content-Type"), r.body)
			}
		}},
		{"timeout with a cap", Fault{Kind: FaultTimeout, Delay: 50 * time.Millisecond, Count: 2}, btc, func(t *testing.T, _ int, r response, _ []byte) {
			if r.status != http.StatusGatewayTimeout {
				t.Fatalf("got %d", r.status)
			}
		}},
		{"truncate", Fault{Kind: FaultTruncate, Path: klinesPath, Count: 2}, btc, func(t *testing.T, _ int, r response, real []byte) {
			if r.status != 200 || json.Valid(r.body) || len(r.body) != len(real)/2 || string(r.body) != string(real[:len(real)/2]) {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		}},
		{"malformed", Fault{Kind: FaultMalformed, Symbol: "BTCUSDT", Count: 2}, btc, func(t *testing.T, i int, r response, _ []byte) {
			var rows [][]any
			if err := json.Unmarshal(r.body, &rows); r.status != 200 || err != nil {
				t.Fatalf("got %d %s: %v", r.status, r.body, err)
			}
			if _, err := parseKlines(r.body); err == nil {
				t.Fatal("a strict parser accepts the malformed page")
			}
			_, priceIsNumber := rows[0][1].(float64)
			_, timeIsString := rows[0][0].(string)
			if i == 0 && !priceIsNumber || i == 1 && !timeIsString {
				t.Fatalf("match %d: first row %v", i, rows[0])
			}
		}},
		{"malformed time", Fault{Kind: FaultMalformed, Count: 2}, timePath, func(t *testing.T, _ int, r response, _ []byte) {
			var v struct{ ServerTime any }
			if err := json.Unmarshal(r.body, &v); err != nil {
				t.Fatal(err)
			}
			if _, ok := v.ServerTime.(string); !ok {
				t.Fatalf("serverTime %v is not a string", v.ServerTime)
			}
		}},
		{"invalid", Fault{Kind: FaultInvalid, Interval: "4h", Count: 2}, btc, func(t *testing.T, _ int, r response, _ []byte) {
			cs, err := parseKlines(r.body)
			if err != nil {
				t.Fatal(err)
			}
			var ve *candles.ValidationError
			if err := candles.Validate(iv4h, cs[:len(cs)-1]); !errors.As(err, &ve) || ve.Index != 2 {
				t.Fatalf("invalid page passes or fails elsewhere: %v", err)
			}
		}},
		{"ratelimit storm", Fault{Kind: FaultRateLimit, RetryAfter: 3 * time.Second, Count: 2}, btc, func(t *testing.T, _ int, r response, _ []byte) {
			isJSONError(429, -1003)(t, 0, r, nil)
			if r.header.Get("Retry-After") != "3" {
				t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
			}
		}},
		{"latency", Fault{Kind: FaultLatency, Delay: 30 * time.Millisecond, Count: 2}, btc, func(t *testing.T, _ int, r response, real []byte) {
			if r.status != 200 || string(r.body) != string(real) {
				t.Fatalf("got %d", r.status)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, srv := start(t, Options{}, nil)
			real := get(t, srv.URL, tc.path).body
			s.AddFault(Fault{Kind: FaultStatus, Symbol: "ETHUSDT"}) // never matches BTCUSDT
			s.AddFault(tc.fault)
			for i := range 2 {
				t0 := time.Now()
				tc.check(t, i, get(t, srv.URL, tc.path), real)
				if tc.fault.Kind == FaultLatency && time.Since(t0) < tc.fault.Delay {
					t.Fatalf("answered in %v, before the fault's delay", time.Since(t0))
				}
			}
			if r := get(t, srv.URL, tc.path); r.status != 200 || string(r.body) != string(real) {
				t.Fatalf("after Count matches: %d %s", r.status, r.body)
			}
			if r := get(t, srv.URL, klinesQuery("ETHUSDT", iv4h)); r.status != 503 {
				t.Fatalf("earlier fault for ETHUSDT: %d", r.status)
			}
			if st := s.Stats(); st.RateLimited != 0 && tc.fault.Kind != FaultRateLimit {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestFaultTimeoutHangsUntilTheClientGivesUp(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	s.AddFault(Fault{Kind: FaultTimeout})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+pingPath, nil)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the client's deadline", err)
	}
	deadline := time.Now().Add(time.Second)
	for s.Stats().Statuses[0] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the hanging request was not released: %+v", s.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFaultBan(t *testing.T) {
	wall := testclock.New(time.Date(2025, 1, 1, 12, 0, 1, 0, time.UTC))
	s, srv := start(t, Options{}, wall)
	s.AddFault(Fault{Kind: FaultBan, Path: klinesPath, RetryAfter: 5 * time.Second, Count: 1})
	for i, path := range []string{klinesQuery("BTCUSDT", iv4h), pingPath, timePath} {
		if r := get(t, srv.URL, path); r.status != http.StatusTeapot || r.header.Get("Retry-After") != "5" {
			t.Fatalf("request %d: %d Retry-After %q", i, r.status, r.header.Get("Retry-After"))
		}
	}
	wall.Add(5 * time.Second)
	if r := get(t, srv.URL, klinesQuery("BTCUSDT", iv4h)); r.status != http.StatusOK {
		t.Fatalf("after the ban: %d %s", r.status, r.body)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		path   string
		status int
		code   int
		msg    string
	}{
		{"missing symbol", klinesPath + "?interval=4h", 400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."},
		{"empty symbol", klinesPath + "?symbol=&interval=4h", 400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."},
		{"missing interval", klinesPath + "?symbol=BTCUSDT", 400, -1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed."},
		{"unknown symbol", klinesPath + "?symbol=NOPEUSDT&interval=4h", 400, -1121, "Invalid symbol."},
		{"lower-case symbol", klinesPath + "?symbol=btcusdt&interval=4h", 400, -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."},
		{"bad interval", klinesPath + "?symbol=BTCUSDT&interval=5h", 400, -1120, "Invalid interval."},
		{"interval case matters", klinesPath + "?symbol=BTCUSDT&interval=4H", 400, -1120, "Invalid interval."},
		{"letters in startTime", klinesPath + "?symbol=BTCUSDT&interval=4h&startTime=abc", 400, -1100, "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'."},
		{"negative limit", klinesPath + "?symbol=BTCUSDT&interval=4h&limit=-1", 400, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."},
		{"limit 0", klinesPath + "?symbol=BTCUSDT&interval=4h&limit=0", 400, -1130, "Data sent for parameter 'limit' is not valid."},
		{"repeated parameter", klinesPath + "?symbol=BTCUSDT&symbol=ETHUSDT&interval=4h", 400, -1101, "Duplicate values for a parameter detected."},
		{"unknown parameter", klinesPath + "?symbol=BTCUSDT&interval=4h&fromId=1", 400, -1104, "Not all sent parameters were read; read '2' parameter(s) but was sent '3'."},
		{"exchangeInfo unknown symbol", exchangeInfoPath + "?symbol=NOPEUSDT", 400, -1121, "Invalid symbol."},
		{"exchangeInfo unknown in symbols", exchangeInfoPath + `?symbols=["BTCUSDT","NOPEUSDT"]`, 400, -1121, "Invalid symbol."},
		{"exchangeInfo bad symbols", exchangeInfoPath + `?symbols=BTCUSDT`, 400, -1100, ""},
		{"unknown path", "/api/v3/nope", 404, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, srv := start(t, Options{}, nil)
			r := get(t, srv.URL, tc.path)
			if r.status != tc.status || r.header.Get("X-MBX-USED-WEIGHT-1M") == "" {
				t.Fatalf("got %d %s (weight %q), want %d", r.status, r.body, r.header.Get("X-MBX-USED-WEIGHT-1M"), tc.status)
			}
			if tc.code == 0 {
				return
			}
			if e := decodeErr(t, r); e.Code != tc.code || (tc.msg != "" && e.Msg != tc.msg) {
				t.Fatalf("got %s, want code %d msg %q", r.body, tc.code, tc.msg)
			}
		})
	}
}

func TestPingTimeExchangeInfo(t *testing.T) {
	s, srv := start(t, Options{WeightLimit: 600, WeightWindow: 6 * time.Second}, nil)
	if r := get(t, srv.URL, pingPath); r.status != 200 || string(r.body) != "{}" {
		t.Fatalf("ping: %d %s", r.status, r.body)
	}
	if r := get(t, srv.URL, timePath); string(r.body) != fmt.Sprintf(`{"serverTime":%d}`, testNow.UnixMilli()) {
		t.Fatalf("time: %s", r.body)
	}
	s.SetClock(fixed(testNow.Add(time.Hour)))
	if r := get(t, srv.URL, timePath); string(r.body) != fmt.Sprintf(`{"serverTime":%d}`, testNow.Add(time.Hour).UnixMilli()) {
		t.Fatalf("time after SetClock: %s", r.body)
	}
	var info binance.ExchangeInfo
	if err := json.Unmarshal(get(t, srv.URL, exchangeInfoPath).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.Timezone != "UTC" || len(info.Symbols) != len(s.symbols) || len(info.RateLimits) != 4 {
		t.Fatalf("exchangeInfo: %+v", info)
	}
	if rl := info.RateLimits[0]; rl.RateLimitType != "REQUEST_WEIGHT" || rl.Interval != "SECOND" || rl.IntervalNum != 6 || rl.Limit != 600 {
		t.Fatalf("weight limit %+v", rl)
	}
	for _, tc := range []struct{ query, first, base, quote string }{
		{"?symbol=BTCUSDT", "BTCUSDT", "BTC", "USDT"},
		{`?symbols=["ETHBTC","BTCFDUSD"]`, "ETHBTC", "ETH", "BTC"},
	} {
		var one binance.ExchangeInfo
		r := get(t, srv.URL, exchangeInfoPath+tc.query)
		if err := json.Unmarshal(r.body, &one); err != nil {
			t.Fatal(err)
		}
		if sym := one.Symbols[0]; sym.Symbol != tc.first || sym.Status != "TRADING" || sym.BaseAsset != tc.base || sym.QuoteAsset != tc.quote || sym.PriceFilter() == nil {
			t.Fatalf("%s: %+v", tc.query, sym)
		}
	}
}

func TestAdmin(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	admin := func(method, path, body string, status int) []byte {
		t.Helper()
		r := do(t, method, srv.URL+path, body)
		if r.status != status {
			t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.body, status)
		}
		return r.body
	}
	get(t, srv.URL, klinesQuery("BTCUSDT", iv4h))
	get(t, srv.URL, pingPath)
	var st Stats
	if err := json.Unmarshal(admin("GET", "/sim/stats", "", 200), &st); err != nil {
		t.Fatal(err)
	}
	if st.Requests != 2 || st.Klines["BTCUSDT/4h"] != 1 || st.Paths[pingPath] != 1 || st.Statuses[200] != 2 || st.MaxUsedWeight != 3 {
		t.Fatalf("stats %+v", st)
	}
	admin("POST", "/sim/stats/reset", "", 200)
	if st := s.Stats(); st.Requests != 0 || len(st.Windows) != 0 {
		t.Fatalf("after reset: %+v", st)
	}

	admin("POST", "/sim/faults", `{"kind":"status","path":"/api/v3/ping","status":500,"count":1}`, 200)
	admin("POST", "/sim/faults", `{"kind":"latency","delay":"10ms"}`, 200)
	admin("POST", "/sim/faults", `{"kind":"nope"}`, 400)
	admin("POST", "/sim/faults", `{"kind":"ban","retry_after":"soon"}`, 400)
	var faults []Fault
	if err := json.Unmarshal(admin("GET", "/sim/faults", "", 200), &faults); err != nil {
		t.Fatal(err)
	}
	if len(faults) != 2 || faults[0].Status != 500 || faults[1].Delay != 10*time.Millisecond {
		t.Fatalf("faults %+v", faults)
	}
	if r := get(t, srv.URL, pingPath); r.status != 500 {
		t.Fatalf("ping with a fault: %d", r.status)
	}
	admin("DELETE", "/sim/faults", "", 200)
	if len(s.Faults()) != 0 {
		t.Fatal("faults not cleared")
	}

	admin("POST", "/sim/withhold", `{"symbol":"BTCUSDT","interval":"4h","from":10,"until":5}`, 400)
	admin("POST", "/sim/withhold", `{"symbol":"BTCUSDT","interval":"4x","from":1,"until":5}`, 400)

	admin("POST", "/sim/clock", `{"now":"2024-01-02T03:04:05Z"}`, 200)
	if got := s.now(); !got.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("clock %v", got)
	}
	admin("POST", "/sim/clock", `{"offset":"-48h"}`, 200)
	if d := time.Since(s.now()); d < 47*time.Hour || d > 49*time.Hour {
		t.Fatalf("clock offset by %v, want 48h", d)
	}
	admin("POST", "/sim/clock", `{}`, 200)
	if !s.now().Equal(testNow) {
		t.Fatalf("clock not restored: %v", s.now())
	}
	admin("POST", "/sim/clock", `{"now":"yesterday"}`, 400)
	admin("POST", "/sim/latency", `{"latency":"5ms"}`, 200)
	admin("POST", "/sim/latency", `{"latency":"-5ms"}`, 400)
	admin("GET", "/sim/nope", "", 404)
	if st := s.Stats(); st.Requests != 1 {
		t.Fatalf("admin requests were counted: %+v", st)
	}
}

// TestWebhookInbox: the inbox keeps every post, in order, answers as
// Slack does, and is not the Binance API (no weight, no stats).
func TestWebhookInbox(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	for _, body := range []string{`{"text":"one"}`, `{"text":"two"}`} {
		r := do(t, "POST", srv.URL+"/sim/webhook/slack", body)
		if r.status != 200 || string(r.body) != "ok" {
			t.Fatalf("post: %d %q, want 200 ok", r.status, r.body)
		}
	}
	if r := do(t, "POST", srv.URL+"/sim/webhook/other/x", "plain"); r.status != 200 {
		t.Fatalf("post to another name: %d %s", r.status, r.body)
	}
	if r := do(t, "POST", srv.URL+"/sim/webhook/slack", strings.Repeat("x", maxWebhookBody+1)); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized post: %d, want 413", r.status)
	}
	r := do(t, "GET", srv.URL+"/sim/webhook", "")
	var got struct{ Posts []WebhookPost }
	if err := json.Unmarshal(r.body, &got); err != nil || r.status != 200 {
		t.Fatalf("list: %d %s %v", r.status, r.body, err)
	}
	want := []WebhookPost{{Path: "/sim/webhook/slack", Body: `{"text":"one"}`}, {Path: "/sim/webhook/slack", Body: `{"text":"two"}`},
		{Path: "/sim/webhook/other/x", Body: "plain"}}
	if len(got.Posts) != len(want) {
		t.Fatalf("posts %+v, want %+v", got.Posts, want)
	}
	for i, p := range got.Posts {
		if p.Path != want[i].Path || p.Body != want[i].Body || p.At.IsZero() {
			t.Fatalf("post %d: %+v, want %+v", i, p, want[i])
		}
	}
	if st := s.Stats(); st.Requests != 0 {
		t.Fatalf("webhook posts were counted as API requests: %+v", st)
	}
	if r := do(t, "DELETE", srv.URL+"/sim/webhook", ""); r.status != 200 || len(s.Webhooks()) != 0 {
		t.Fatalf("delete: %d, %d posts left", r.status, len(s.Webhooks()))
	}
	if r := do(t, "PUT", srv.URL+"/sim/webhook/slack", "x"); r.status != http.StatusMethodNotAllowed && r.status != 404 {
		t.Fatalf("PUT: %d, want 405 or 404", r.status)
	}
}

// TestGoBinanceClient fetches through the client the fetcher uses and must
// end with the truth, bit for bit.
func TestGoBinanceClient(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	c := binance.NewClient("", "")
	c.BaseURL = srv.URL
	ctx := context.Background()
	if err := c.NewPingService().Do(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.NewServerTimeService().Do(ctx); err != nil || st != testNow.UnixMilli() {
		t.Fatalf("server time %d, %v", st, err)
	}
	info, err := c.NewExchangeInfoService().Symbol("PEPEUSDT").Do(ctx)
	if err != nil || len(info.Symbols) != 1 || info.Symbols[0].BaseAsset != "PEPE" {
		t.Fatalf("exchange info %+v, %v", info, err)
	}
	for _, sym := range []string{"BTCUSDT", "PEPEUSDT"} {
		until := iv1d.Align(testNow.UnixMilli())
		want := s.Klines(sym, iv1d, until-400*dayMs, until)
		var got []candles.Candle
		for next := until - 400*dayMs; ; {
			ks, err := c.NewKlinesService().Symbol(sym).Interval("1d").StartTime(next).EndTime(until - 1).Limit(100).Do(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				f := func(s string) float64 {
					v, err := strconv.ParseFloat(s, 64)
					if err != nil {
						t.Fatal(err)
					}
					return v
				}
				got = append(got, candles.Candle{OpenTime: k.OpenTime, Open: f(k.Open), High: f(k.High), Low: f(k.Low), Close: f(k.Close),
					Volume: f(k.Volume), CloseTime: k.CloseTime, QuoteVolume: f(k.QuoteAssetVolume), Trades: k.TradeNum,
					TakerBuyBaseVolume: f(k.TakerBuyBaseAssetVolume), TakerBuyQuoteVolume: f(k.TakerBuyQuoteAssetVolume)})
			}
			if len(ks) < 100 {
				break
			}
			next = ks[len(ks)-1].OpenTime + 1
		}
		equalCandles(t, sym, got, want)
	}
	_, err = c.NewKlinesService().Symbol("NOPEUSDT").Interval("1d").Do(ctx)
	var apiErr *common.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != -1121 || apiErr.Message != "Invalid symbol." {
		t.Fatalf("unknown symbol: %v", err)
	}
	if c.UsedWeight.Used1M == 0 {
		t.Fatal("go-binance saw no X-MBX-USED-WEIGHT-1M")
	}
}

func TestConcurrentUse(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	const workers, each = 16, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			sym := s.symbols[w%len(s.symbols)]
			for i := range each {
				switch i % 4 {
				case 0:
					s.AddFault(Fault{Kind: FaultLatency, Delay: time.Millisecond, Count: 1})
				case 1:
					s.Withhold(sym, iv1d, 0, int64(i))
				case 2:
					s.Stats()
				}
				r, err := http.Get(srv.URL + klinesQuery(sym, iv4h, "limit", 50))
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(r.Body)
				r.Body.Close()
				if cs, err := parseKlines(body); r.StatusCode != 200 || err != nil || len(cs) != 50 {
					t.Errorf("%s: %d %v", sym, r.StatusCode, err)
				}
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.Requests != workers*each || st.Statuses[200] != workers*each || st.MaxUsedWeight != 2*workers*each {
		t.Fatalf("stats %+v", st)
	}
}

// q's arithmetic shortcut must equal parsing the 8-decimal string it stands for.
func TestRoundingMatchesTheWireForm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		v := math.Exp(r.Float64()*math.Log(2e7)) * math.Pow(10, -float64(r.IntN(8)))
		want, _ := strconv.ParseFloat(decimal(v), 64)
		if got := q(v); got != want {
			t.Fatalf("q(%v) = %v, the wire form %s parses to %v", v, got, decimal(v), want)
		}
		if back, _ := strconv.ParseFloat(decimal(q(v)), 64); back != q(v) {
			t.Fatalf("q(%v) = %v does not survive its own string %s", v, q(v), decimal(q(v)))
		}
	}
}

// A fault with a rate affects that share of the matching requests, the same
// ones on every run with the same seed, and counts only the ones it affects.
func TestFaultRate(t *testing.T) {
	statuses := func(f Fault, n int) []int {
		s, srv := start(t, Options{}, nil)
		s.AddFault(f)
		out := make([]int, n)
		for i := range out {
			out[i] = get(t, srv.URL, pingPath).status
		}
		return out
	}
	const n = 400
	f := Fault{Kind: FaultStatus, Path: pingPath, Rate: 0.3, Seed: 7}
	a, b := statuses(f, n), statuses(f, n)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave different faults")
	}
	failed := 0
	for _, st := range a {
		if st == 503 {
			failed++
		} else if st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	if failed < n*20/100 || failed > n*40/100 {
		t.Fatalf("%d of %d requests failed at rate 0.3", failed, n)
	}
	if c := statuses(Fault{Kind: FaultStatus, Path: pingPath, Rate: 0.3, Seed: 8}, n); slices.Equal(a, c) {
		t.Fatal("another seed gave the same faults")
	}
	// Count counts affected requests only: three 503s, then none.
	c := statuses(Fault{Kind: FaultStatus, Path: pingPath, Rate: 0.5, Count: 3}, n)
	if count503(c) != 3 {
		t.Fatalf("rate with count 3: %d 503s", count503(c))
	}

	var back Fault
	data, _ := json.Marshal(Fault{Kind: FaultTimeout, Rate: 0.1, Seed: 3, Delay: time.Second})
	if err := json.Unmarshal(data, &back); err != nil || back.Rate != 0.1 || back.Seed != 3 || back.Delay != time.Second {
		t.Fatalf("round trip of %s: %+v %v", data, back, err)
	}
	for _, r := range []float64{-0.1, 1.5} {
		if err := (Fault{Kind: FaultStatus, Rate: r}).Validate(); err == nil {
			t.Fatalf("rate %v accepted", r)
		}
	}
}

func count503(ss []int) int {
	n := 0
	for _, s := range ss {
		if s == 503 {
			n++
		}
	}
	return n
}

// invalid_open breaks only the still-open last candle: the closed ones
// validate, and a page without an open candle is served as it is.
func TestFaultInvalidOpen(t *testing.T) {
	s, srv := start(t, Options{}, nil)
	latest := klinesQuery("BTCUSDT", iv4h, "limit", 5) // ends with the open candle
	older := klinesQuery("BTCUSDT", iv4h, "limit", 5, "endTime", testNow.Add(-48*time.Hour).UnixMilli())
	realOlder := get(t, srv.URL, older).body
	s.AddFault(Fault{Kind: FaultInvalidOpen, Path: klinesPath})
	cs, err := parseKlines(get(t, srv.URL, latest).body)
	if err != nil {
		t.Fatal(err)
	}
	if err := candles.Validate(iv4h, cs[:len(cs)-1]); err != nil {
		t.Fatalf("the closed candles are broken too: %v", err)
	}
	var ve *candles.ValidationError
	if err := candles.Validate(iv4h, cs); !errors.As(err, &ve) || ve.Index != len(cs)-1 {
		t.Fatalf("the open candle passes or the page fails elsewhere: %v", err)
	}
	if r := get(t, srv.URL, older); string(r.body) != string(realOlder) {
		t.Fatalf("a page of closed candles was changed: %s", r.body)
	}
}
