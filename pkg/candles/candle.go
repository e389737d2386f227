package candles

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Candle is one closed kline, its decimal strings parsed to float64. Times are
// ms since the Unix epoch, UTC; CloseTime is the next candle's open time - 1.
type Candle struct {
	OpenTime            int64
	Open                float64
	High                float64
	Low                 float64
	Close               float64
	Volume              float64
	CloseTime           int64
	QuoteVolume         float64
	Trades              int64
	TakerBuyBaseVolume  float64
	TakerBuyQuoteVolume float64
}

// candleFields is the number of elements in a candle's JSON array.
const candleFields = 11

// MarshalJSON encodes a candle as Binance orders a kline, without the ignored
// 12th field and with numbers instead of decimal strings:
// [open_time, open, high, low, close, volume, close_time, quote_volume,
// trades, taker_buy_base_volume, taker_buy_quote_volume].
func (c Candle) MarshalJSON() ([]byte, error) {
	return c.AppendJSON(make([]byte, 0, 160))
}

// AppendJSON appends the JSON array form of c to b.
func (c Candle) AppendJSON(b []byte) ([]byte, error) {
	for _, f := range [...]float64{c.Open, c.High, c.Low, c.Close, c.Volume, c.QuoteVolume, c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume} {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("candle %d: non-finite value", c.OpenTime)
		}
	}
	b = append(b, '[')
	b = strconv.AppendInt(b, c.OpenTime, 10)
	for _, f := range [...]float64{c.Open, c.High, c.Low, c.Close, c.Volume} {
		b = append(b, ',')
		b = strconv.AppendFloat(b, f, 'g', -1, 64)
	}
	b = append(b, ',')
	b = strconv.AppendInt(b, c.CloseTime, 10)
	b = append(b, ',')
	b = strconv.AppendFloat(b, c.QuoteVolume, 'g', -1, 64)
	b = append(b, ',')
	b = strconv.AppendInt(b, c.Trades, 10)
	for _, f := range [...]float64{c.TakerBuyBaseVolume, c.TakerBuyQuoteVolume} {
		b = append(b, ',')
		b = strconv.AppendFloat(b, f, 'g', -1, 64)
	}
	return append(b, ']'), nil
}

var errCandleShape = errors.New("candle must be a JSON array of 11 numbers")

// UnmarshalJSON decodes the array form written by MarshalJSON. It is strict:
// exactly 11 plain numbers, integers where Binance has integers.
func (c *Candle) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) < 2 || data[0] != '[' || data[len(data)-1] != ']' {
		return errCandleShape
	}
	var fields [candleFields][]byte
	rest := data[1 : len(data)-1]
	for i := 0; i < candleFields; i++ {
		j := bytes.IndexByte(rest, ',')
		if i == candleFields-1 {
			if j >= 0 {
				return errCandleShape
			}
			j = len(rest)
		} else if j < 0 {
			return errCandleShape
		}
		fields[i] = bytes.TrimSpace(rest[:j])
		if j < len(rest) {
			rest = rest[j+1:]
		}
	}
	var err error
	ints := func(i int) int64 {
		v, e := strconv.ParseInt(string(fields[i]), 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("candle field %d: %q is not an integer", i, fields[i])
		}
		return v
	}
	floats := func(i int) float64 {
		v, e := strconv.ParseFloat(string(fields[i]), 64)
		if e != nil && err == nil {
			err = fmt.Errorf("candle field %d: %q is not a number", i, fields[i])
		}
		return v
	}
	*c = Candle{
		OpenTime: ints(0), Open: floats(1), High: floats(2), Low: floats(3), Close: floats(4),
		Volume: floats(5), CloseTime: ints(6), QuoteVolume: floats(7), Trades: ints(8),
		TakerBuyBaseVolume: floats(9), TakerBuyQuoteVolume: floats(10),
	}
	return err
}

// ValidationError says why a page of candles was refused.
type ValidationError struct {
	Index  int   // position of the offending candle in the page
	Open   int64 // its open time
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("candle %d (open_time %d): %s", e.Index, e.Open, e.Reason)
}

// Validate checks a page of closed candles for one pair: open times aligned to
// the interval, close_time = next open - 1 ms, high >= max(open, close),
// low <= min(open, close), finite non-negative values and strictly increasing
// open times. The first violation is returned as a *ValidationError.
func Validate(iv Interval, cs []Candle) error {
	prev := int64(math.MinInt64)
	for i, c := range cs {
		bad := func(format string, args ...any) error {
			return &ValidationError{Index: i, Open: c.OpenTime, Reason: fmt.Sprintf(format, args...)}
		}
		if c.OpenTime <= 0 {
			return bad("open_time %d is not a time", c.OpenTime)
		}
		if !iv.Aligned(c.OpenTime) {
			return bad("open_time not aligned to %s", iv)
		}
		if c.OpenTime <= prev {
			return bad("open_time not after the previous candle's %d", prev)
		}
		prev = c.OpenTime
		if want := iv.Next(c.OpenTime) - 1; c.CloseTime != want {
			return bad("close_time %d, want %d", c.CloseTime, want)
		}
		for _, v := range [...]struct {
			name string
			f    float64
		}{{"open", c.Open}, {"high", c.High}, {"low", c.Low}, {"close", c.Close}, {"volume", c.Volume},
			{"quote_volume", c.QuoteVolume}, {"taker_buy_base_volume", c.TakerBuyBaseVolume},
			{"taker_buy_quote_volume", c.TakerBuyQuoteVolume}} {
			if math.IsNaN(v.f) || math.IsInf(v.f, 0) || v.f < 0 {
				return bad("%s %v is not a finite non-negative number", v.name, v.f)
			}
		}
		if c.Trades < 0 {
			return bad("trades %d is negative", c.Trades)
		}
		if c.High < math.Max(c.Open, c.Close) {
			return bad("high %v below max(open %v, close %v)", c.High, c.Open, c.Close)
		}
		if c.Low > math.Min(c.Open, c.Close) {
			return bad("low %v above min(open %v, close %v)", c.Low, c.Open, c.Close)
		}
	}
	return nil
}
