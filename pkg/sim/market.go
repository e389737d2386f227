package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Paths of the market endpoints.
const (
	pingPath         = "/api/v3/ping"
	timePath         = "/api/v3/time"
	exchangeInfoPath = "/api/v3/exchangeInfo"
	klinesPath       = "/api/v3/klines"
)

// Kline limits of GET /api/v3/klines.
const (
	defaultKlinesLimit = 500
	maxKlinesLimit     = 1000
)

// SpotKlinesWeight is the weight Binance documents for spot GET
// /api/v3/klines: 2 whatever the limit.
func SpotKlinesWeight(int) int { return 2 }

// LimitKlinesWeight is the weight table by limit Binance documents for its
// futures klines (/fapi/v1/klines): [1,100) 1, [100,500) 2, [500,1000] 5,
// above 1000 10. Set it as Options.KlinesWeight to pace a client harder.
func LimitKlinesWeight(limit int) int {
	switch {
	case limit < 100:
		return 1
	case limit < 500:
		return 2
	case limit <= 1000:
		return 5
	default:
		return 10
	}
}

// reply is a response before faults reshape it.
type reply struct {
	status int
	body   []byte
	html   bool
	page   []candles.Candle // klines served, for faults that rewrite them
	// lastOpen: the page's last candle is the one still open.
	lastOpen bool
}

// endpoint is one API route: its weight and its handler.
type endpoint struct {
	weight func(url.Values) int
	handle func(url.Values) reply
}

func (s *Sim) endpoint(path string) endpoint {
	fixed := func(w int) func(url.Values) int { return func(url.Values) int { return w } }
	switch path {
	case pingPath:
		return endpoint{fixed(1), func(url.Values) reply { return reply{status: http.StatusOK, body: []byte("{}")} }}
	case timePath:
		return endpoint{fixed(1), func(url.Values) reply {
			return reply{status: http.StatusOK, body: fmt.Appendf(nil, `{"serverTime":%d}`, s.now().UnixMilli())}
		}}
	case exchangeInfoPath:
		return endpoint{fixed(20), s.exchangeInfo}
	case klinesPath:
		return endpoint{func(q url.Values) int {
			limit, err := strconv.Atoi(q.Get("limit"))
			if err != nil {
				limit = defaultKlinesLimit
			}
			return s.opts.KlinesWeight(limit)
		}, s.klines}
	}
	return endpoint{fixed(1), func(url.Values) reply {
		return reply{status: http.StatusNotFound, html: true, body: []byte("<html><body><h2>404 Not found</h2></body></html>")}
	}}
}

// apiError is a Binance error: HTTP 400 with {"code":..,"msg":..}.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) reply() reply {
	return reply{status: http.StatusBadRequest, body: errorBody(e.code, e.msg)}
}

func errorBody(code int, msg string) []byte {
	return mustJSON(struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}{code, msg})
}

// Binance's messages, from its spot error-code documentation.
func errMandatory(p string) *apiError {
	return &apiError{-1102, fmt.Sprintf("Mandatory parameter '%s' was not sent, was empty/null, or malformed.", p)}
}

func errIllegal(p, legal string) *apiError {
	return &apiError{-1100, fmt.Sprintf("Illegal characters found in parameter '%s'; legal range is '%s'.", p, legal)}
}

func errNotValid(p string) *apiError {
	return &apiError{-1130, fmt.Sprintf("Data sent for parameter '%s' is not valid.", p)}
}

func errDuplicate() *apiError   { return &apiError{-1101, "Duplicate values for a parameter detected."} }
func errBadSymbol() *apiError   { return &apiError{-1121, "Invalid symbol."} }
func errBadInterval() *apiError { return &apiError{-1120, "Invalid interval."} }
func errBadCombination() *apiError {
	return &apiError{-1128, "Combination of optional parameters invalid."}
}

const (
	symbolLegal = `^[A-Z0-9-_.]{1,20}$`
	numberLegal = `^[0-9]{1,20}$`
)

// checkParams rejects repeated parameters and, after the mandatory ones are
// known to be present, parameters the endpoint does not read.
func checkParams(q url.Values, mandatory []string, optional ...string) *apiError {
	for _, v := range q {
		if len(v) > 1 {
			return errDuplicate()
		}
	}
	for _, p := range mandatory {
		if q.Get(p) == "" {
			return errMandatory(p)
		}
	}
	read := 0
	for p := range q {
		if slices.Contains(mandatory, p) || slices.Contains(optional, p) {
			read++
		}
	}
	if read < len(q) {
		return &apiError{-1104, fmt.Sprintf("Not all sent parameters were read; read '%d' parameter(s) but was sent '%d'.", read, len(q))}
	}
	return nil
}

func legalSymbol(s string) bool {
	return len(s) >= 1 && len(s) <= 20 && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) < 0
}

// number parses an optional LONG/INT parameter; nil when absent.
func number(q url.Values, p string) (*int64, *apiError) {
	v, ok := q[p]
	if !ok {
		return nil, nil
	}
	if len(v[0]) < 1 || len(v[0]) > 20 || strings.Trim(v[0], "0123456789") != "" {
		return nil, errIllegal(p, numberLegal)
	}
	n, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil {
		return nil, errIllegal(p, numberLegal)
	}
	return &n, nil
}

// klines serves GET /api/v3/klines.
func (s *Sim) klines(q url.Values) reply {
	if e := checkParams(q, []string{"symbol", "interval"}, "startTime", "endTime", "limit", "timeZone"); e != nil {
		return e.reply()
	}
	sym := q.Get("symbol")
	if !legalSymbol(sym) {
		return errIllegal("symbol", symbolLegal).reply()
	}
	start, e := number(q, "startTime")
	if e != nil {
		return e.reply()
	}
	end, e := number(q, "endTime")
	if e != nil {
		return e.reply()
	}
	lim, e := number(q, "limit")
	if e != nil {
		return e.reply()
	}
	if !s.hasSymbol(sym) {
		return errBadSymbol().reply()
	}
	iv, err := candles.ParseInterval(q.Get("interval"))
	if err != nil {
		return errBadInterval().reply()
	}
	off, ok := int64(0), true
	if tz, sent := q["timeZone"]; sent {
		if off, ok = parseTimeZone(tz[0]); !ok {
			return errNotValid("timeZone").reply()
		}
	}
	limit := defaultKlinesLimit
	if lim != nil {
		if *lim < 1 {
			return errNotValid("limit").reply()
		}
		limit = int(min(*lim, maxKlinesLimit)) // Binance cuts larger limits to its maximum
	}
	now := s.now().UnixMilli()
	page := s.page(sym, grid{iv, off}, start, end, limit, now)
	open := len(page) > 0 && page[len(page)-1].CloseTime >= now
	return reply{status: http.StatusOK, body: renderKlines(page, nil), page: page, lastOpen: open}
}

// page selects candles as Binance does: with startTime the first limit
// candles opening at or after it, else the last limit candles opening at or
// before endTime (or now); never past endTime, before the listing, inside a
// withheld range or after the candle containing now, which is served open.
func (s *Sim) page(sym string, g grid, start, end *int64, limit int, now int64) []candles.Candle {
	first := g.alignUp(s.Listing(sym).UnixMilli())
	hi := g.align(now)
	if end != nil {
		hi = min(hi, g.align(*end))
	}
	held := s.withheld(sym, g.iv)
	var out []candles.Candle
	if start != nil {
		if end != nil && *start > *end {
			return nil // spot answers an empty page; only futures say -1023
		}
		for open := g.alignUp(max(*start, first)); open <= hi && len(out) < limit; {
			if r, ok := held.find(open); ok {
				open = g.alignUp(r.until)
				continue
			}
			out = append(out, s.served(sym, g, open, now))
			open = g.next(open)
		}
		return out
	}
	for open := hi; open >= first && len(out) < limit; {
		if r, ok := held.find(open); ok {
			open = g.align(r.from - 1)
			continue
		}
		out = append(out, s.served(sym, g, open, now))
		open = g.align(open - 1)
	}
	slices.Reverse(out)
	return out
}

// served is the candle opening at open as the API shows it at now.
func (s *Sim) served(sym string, g grid, open, now int64) candles.Candle {
	c := makeCandle(sym, g.iv.String(), open, g.next(open))
	if c.CloseTime >= now {
		c = partial(c, now)
	}
	return c
}

// parseTimeZone accepts Binance's timeZone forms ("8", "-1:00", "05:45") in
// [-12:00, +14:00] and returns the offset in ms.
func parseTimeZone(tz string) (int64, bool) {
	sign, rest := int64(1), tz
	if strings.HasPrefix(rest, "-") {
		sign, rest = -1, rest[1:]
	} else {
		rest = strings.TrimPrefix(rest, "+")
	}
	hs, ms, hasMin := strings.Cut(rest, ":")
	h, err := strconv.Atoi(hs)
	if err != nil || len(hs) == 0 || len(hs) > 2 {
		return 0, false
	}
	m := 0
	if hasMin {
		if m, err = strconv.Atoi(ms); err != nil || len(ms) != 2 || m > 59 {
			return 0, false
		}
	}
	off := sign * int64(h*60+m) * 60_000
	if off < -12*3_600_000 || off > 14*3_600_000 {
		return 0, false
	}
	return off, true
}

// renderKlines writes Binance's kline arrays. mut may rewrite the JSON
// tokens of candle i (used by the "malformed" fault).
func renderKlines(cs []candles.Candle, mut func(i int, tokens []string)) []byte {
	b := make([]byte, 0, 32+200*len(cs))
	b = append(b, '[')
	for i, c := range cs {
		if i > 0 {
			b = append(b, ',')
		}
		if mut != nil {
			t := []string{
				strconv.FormatInt(c.OpenTime, 10), quoted(c.Open), quoted(c.High), quoted(c.Low), quoted(c.Close),
				quoted(c.Volume), strconv.FormatInt(c.CloseTime, 10), quoted(c.QuoteVolume),
				strconv.FormatInt(c.Trades, 10), quoted(c.TakerBuyBaseVolume), quoted(c.TakerBuyQuoteVolume), `"0"`,
			}
			mut(i, t)
			b = append(b, '[')
			b = append(b, strings.Join(t, ",")...)
			b = append(b, ']')
			continue
		}
		// The common case, written straight into the buffer.
		b = append(b, '[')
		b = strconv.AppendInt(b, c.OpenTime, 10)
		for _, v := range [...]float64{c.Open, c.High, c.Low, c.Close, c.Volume} {
			b = appendQuoted(append(b, ','), v)
		}
		b = strconv.AppendInt(append(b, ','), c.CloseTime, 10)
		b = appendQuoted(append(b, ','), c.QuoteVolume)
		b = strconv.AppendInt(append(b, ','), c.Trades, 10)
		b = appendQuoted(append(b, ','), c.TakerBuyBaseVolume)
		b = appendQuoted(append(b, ','), c.TakerBuyQuoteVolume)
		b = append(b, `,"0"]`...)
	}
	return append(b, ']')
}

func appendQuoted(b []byte, v float64) []byte {
	b = append(b, '"')
	b = strconv.AppendFloat(b, v, 'f', 8, 64)
	return append(b, '"')
}

func quoted(v float64) string { return `"` + decimal(v) + `"` }

// exchangeInfo serves GET /api/v3/exchangeInfo.
func (s *Sim) exchangeInfo(q url.Values) reply {
	if e := checkParams(q, nil, "symbol", "symbols", "permissions", "showPermissionSets", "symbolStatus"); e != nil {
		return e.reply()
	}
	syms := s.symbols
	_, one := q["symbol"]
	_, many := q["symbols"]
	switch {
	case one && many:
		return errBadCombination().reply()
	case one:
		if !legalSymbol(q.Get("symbol")) {
			return errIllegal("symbol", symbolLegal).reply()
		}
		syms = []string{q.Get("symbol")}
	case many:
		syms = nil
		if err := json.Unmarshal([]byte(q.Get("symbols")), &syms); err != nil || len(syms) == 0 || !all(syms, legalSymbol) {
			return errIllegal("symbols", `^\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\]$`).reply()
		}
	}
	if !all(syms, s.hasSymbol) {
		return errBadSymbol().reply()
	}
	type rateLimit struct {
		Type        string `json:"rateLimitType"`
		Interval    string `json:"interval"`
		IntervalNum int    `json:"intervalNum"`
		Limit       int    `json:"limit"`
	}
	weightLimit := rateLimit{"REQUEST_WEIGHT", "MINUTE", 1, s.opts.WeightLimit}
	if s.opts.WeightWindow != time.Minute {
		weightLimit.Interval, weightLimit.IntervalNum = "SECOND", max(int(s.opts.WeightWindow.Round(time.Second)/time.Second), 1)
	}
	info := map[string]any{
		"timezone":   "UTC",
		"serverTime": s.now().UnixMilli(),
		"rateLimits": []rateLimit{weightLimit, {"ORDERS", "SECOND", 10, 50}, {"ORDERS", "DAY", 1, 160000},
			{"RAW_REQUESTS", "MINUTE", 5, 61000}},
		"exchangeFilters": []any{},
	}
	list := make([]map[string]any, 0, len(syms))
	for _, sym := range syms {
		list = append(list, symbolInfo(sym))
	}
	info["symbols"] = list
	return reply{status: http.StatusOK, body: mustJSON(info)}
}

// symbolInfo is one exchangeInfo symbol, shaped like Binance's.
func symbolInfo(sym string) map[string]any {
	base, quote := sym, ""
	for _, qa := range []string{"FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY"} {
		if strings.HasSuffix(sym, qa) && len(sym) > len(qa) {
			base, quote = strings.TrimSuffix(sym, qa), qa
			break
		}
	}
	return map[string]any{
		"symbol": sym, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
		"quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
		"baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
		"orderTypes":     []string{"LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"},
		"icebergAllowed": true, "ocoAllowed": true, "otoAllowed": true, "quoteOrderQtyMarketAllowed": true,
		"allowTrailingStop": true, "cancelReplaceAllowed": true, "isSpotTradingAllowed": true,
		"isMarginTradingAllowed": false,
		"filters": []map[string]any{
			{"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000.00000000", "tickSize": "0.00000001"},
			{"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "9000000000.00000000", "stepSize": "0.00000001"},
			{"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": true,
				"maxNotional": "9000000.00000000", "applyMaxToMarket": false, "avgPriceMins": 5},
		},
		"permissions": []string{}, "permissionSets": [][]string{{"SPOT"}},
		"defaultSelfTradePreventionMode":  "EXPIRE_MAKER",
		"allowedSelfTradePreventionModes": []string{"EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"},
	}
}

func all(ss []string, ok func(string) bool) bool {
	for _, s := range ss {
		if !ok(s) {
			return false
		}
	}
	return true
}

// mustJSON encodes values that cannot fail to encode, without HTML escaping.
func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("sim: encode %T: %v", v, err))
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
