package sim

import (
	"math"
	"strconv"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Bounds of the generated world. Base prices are log-uniform between the two
// prices so that both sub-cent and five-digit symbols occur; default listing
// dates fall between Binance's first spot day and mid-2021.
const (
	minBasePrice  = 1e-4
	maxBasePrice  = 6e4
	listingFromMs = 1502928000000 // 2017-08-17T00:00:00Z
	listingToMs   = 1622505600000 // 2021-06-01T00:00:00Z
	dayMs         = 24 * 60 * 60 * 1000
)

// Candle returns the exact candle the API serves for a closed candle of
// symbol opening at openTime: every float is strconv.ParseFloat of the
// 8-decimal string written on the wire. It is a pure function of its
// arguments (symbol existence, listing and withheld ranges do not matter).
func (s *Sim) Candle(symbol string, iv candles.Interval, openTime int64) candles.Candle {
	return makeCandle(symbol, iv.String(), openTime, iv.Next(openTime))
}

// Klines returns every closed candle (close_time < Now) of symbol opening in
// [from, until), skipping pre-listing time and withheld ranges: exactly what
// a correct client can fetch. An unknown symbol has no candles.
func (s *Sim) Klines(symbol string, iv candles.Interval, from, until int64) []candles.Candle {
	if !s.hasSymbol(symbol) {
		return nil
	}
	g, now, held := grid{iv: iv}, s.now().UnixMilli(), s.withheld(symbol, iv)
	var out []candles.Candle
	for open := g.alignUp(max(from, s.Listing(symbol).UnixMilli())); open < until; {
		if r, ok := held.find(open); ok {
			open = g.alignUp(r.until)
			continue
		}
		next := g.next(open)
		if next > now { // close_time = next-1 is not yet in the past
			break
		}
		out = append(out, makeCandle(symbol, iv.String(), open, next))
		open = next
	}
	return out
}

// Listing returns the day symbol's candles start: Options.Listings, or a
// day derived from a hash of the symbol.
func (s *Sim) Listing(symbol string) time.Time {
	if t, ok := s.listings[symbol]; ok {
		return t
	}
	days := uint64((listingToMs-listingFromMs)/dayMs + 1)
	return time.UnixMilli(listingFromMs + int64(mix64(fnv(symbol)^0x6c697374)%days)*dayMs).UTC()
}

// grid is an interval's candle boundaries, shifted by a time-zone offset
// (ms) for the klines timeZone parameter; off 0 is Binance's UTC grid.
type grid struct {
	iv  candles.Interval
	off int64
}

func (g grid) align(ms int64) int64  { return g.iv.Align(ms+g.off) - g.off }
func (g grid) next(open int64) int64 { return g.iv.Next(open+g.off) - g.off }

// alignUp returns the first open time >= ms.
func (g grid) alignUp(ms int64) int64 {
	a := g.align(ms)
	if a < ms {
		a = g.next(a)
	}
	return a
}

// span is a withheld range of open times [from, until).
type span struct{ from, until int64 }

type spans []span

func (ss spans) find(open int64) (span, bool) {
	for _, r := range ss {
		if open >= r.from && open < r.until {
			return r, true
		}
	}
	return span{}, false
}

// makeCandle derives a closed candle from hashes of (symbol, interval,
// open). Open and close are a smooth per-symbol price curve times a small
// per-timestamp jitter, so a candle opens where the previous one closed;
// high, low, volumes and trades come from further hashes. Every value is
// rounded to 8 decimals exactly as served, and the rounding is monotone, so
// the candle rules survive it.
func makeCandle(symbol, ivName string, open, next int64) candles.Candle {
	seed, ivh := fnv(symbol), fnv(ivName)
	hours := float64(next-open) / float64(time.Hour/time.Millisecond)
	amp := math.Min(math.Max(0.002*math.Sqrt(hours), 0.0005), 0.05)
	k := mix64(mix64(seed^ivh^0x63616e646c65) ^ uint64(open))
	u := func(i uint64) float64 { return unit(mix64(k + i*0x9e3779b97f4a7c15)) }

	o, c := q(price(seed, ivh, open, amp)), q(price(seed, ivh, next, amp))
	h := q(math.Max(o, c) * (1 + 1.5*amp*u(1)))
	l := q(math.Min(o, c) * (1 - 1.5*amp*u(2)))
	quotePerHour := math.Exp(math.Log(1e4) + unit(mix64(seed+3))*math.Log(1e3))
	activity := 0.5 + u(3)
	vwap := l + (h-l)*(0.25+0.5*u(4))
	v := q(quotePerHour * hours * activity / vwap)
	qv := q(v * vwap)
	taker := 0.3 + 0.4*u(5)
	tradesPerMinute := 1 + 99*unit(mix64(seed+4))
	return candles.Candle{
		OpenTime: open, Open: o, High: h, Low: l, Close: c, Volume: v,
		CloseTime: next - 1, QuoteVolume: qv,
		Trades:             int64(1 + tradesPerMinute*hours*60*activity),
		TakerBuyBaseVolume: q(v * taker), TakerBuyQuoteVolume: q(qv * taker),
	}
}

// partial is the still-open candle c as seen at now: every quantity scaled
// by the elapsed fraction, keeping high >= max(open, close) >= min(open,
// close) >= low.
func partial(c candles.Candle, now int64) candles.Candle {
	frac := float64(now-c.OpenTime) / float64(c.CloseTime+1-c.OpenTime)
	cl := q(c.Open + (c.Close-c.Open)*frac)
	c.High = q(math.Max(c.Open, cl) + (c.High-math.Max(c.Open, c.Close))*frac)
	c.Low = q(math.Min(c.Open, cl) - (math.Min(c.Open, c.Close)-c.Low)*frac)
	c.Close = cl
	c.Volume, c.QuoteVolume = q(c.Volume*frac), q(c.QuoteVolume*frac)
	c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume = q(c.TakerBuyBaseVolume*frac), q(c.TakerBuyQuoteVolume*frac)
	c.Trades = int64(float64(c.Trades) * frac)
	return c
}

// price is the symbol's price at t: a base price from the symbol's hash,
// two slow sine waves, and a jitter of +-amp per timestamp.
func price(seed, ivh uint64, t int64, amp float64) float64 {
	base := math.Exp(math.Log(minBasePrice) + unit(mix64(seed))*(math.Log(maxBasePrice)-math.Log(minBasePrice)))
	days := float64(t) / dayMs
	ph1, ph2 := 2*math.Pi*unit(mix64(seed+1)), 2*math.Pi*unit(mix64(seed+2))
	smooth := base * math.Exp(0.25*math.Sin(2*math.Pi*days/97+ph1)+0.08*math.Sin(2*math.Pi*days/6.3+ph2))
	return smooth * (1 + amp*(2*unit(mix64(mix64(seed^ivh^0x6a6974)^uint64(t)))-1))
}

// q rounds v to 8 decimals, the float a client gets by parsing what the API
// writes.
//
// Below 1e7, the 8-decimal number is an integer float64 holds exactly divided
// by 1e8, and one IEEE division yields the double nearest to it: exactly what
// parsing its string gives, without the string (the simulator must stay cheap
// next to the code it measures). Only where v*1e8 lies so close to a half
// that its own rounding could tip the result is the string made.
func q(v float64) float64 {
	if a := math.Abs(v); a < 1e7 {
		p := a * 1e8
		ulp := math.Nextafter(p, math.Inf(1)) - p
		if math.Abs(p-math.Trunc(p)-0.5) > 2*ulp {
			return math.Copysign(math.Round(p)/1e8, v)
		}
	}
	f, _ := strconv.ParseFloat(decimal(v), 64)
	return f
}

// decimal is Binance's wire form of a price or quantity.
func decimal(v float64) string { return strconv.FormatFloat(v, 'f', 8, 64) }

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// unit maps a hash to [0, 1).
func unit(x uint64) float64 { return float64(x>>11) / (1 << 53) }

// fnv is FNV-1a, 64 bits.
func fnv(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}
