package binance

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// klineFields is how many leading fields of a kline row candlekeep reads:
// open time, open, high, low, close, volume, close time, quote volume,
// trades, taker buy base volume, taker buy quote volume. Binance sends a
// twelfth ("ignore"); any further fields are skipped.
const klineFields = 11

// parseKlines reads a /api/v3/klines body, an array of rows such as
// [1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100",
// "148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397",
// "28.46694368","0"], in one pass over the bytes. It is as strict as the
// fields demand: a time or trade count must be a JSON integer, a price or
// volume a JSON string holding a decimal; anything else, a short row or a
// truncated body makes the whole page bad. As with go-binance, valid JSON
// that is not an array (such as {}) is an empty page.
func parseKlines(body []byte) ([]candles.Candle, error) {
	p := klineParser{b: body}
	if p.peek() != '[' {
		if json.Valid(body) {
			return nil, nil
		}
		return nil, errors.New("the body is not JSON")
	}
	p.i++
	// Rows are about 200 bytes: size the slice once.
	out := make([]candles.Candle, 0, len(body)/160+1)
	if p.peek() == ']' {
		p.i++
	} else {
		for {
			c, err := p.row()
			if err != nil {
				return nil, fmt.Errorf("kline %d: %w", len(out), err)
			}
			out = append(out, c)
			if p.next(',') {
				continue
			}
			if p.next(']') {
				break
			}
			return nil, fmt.Errorf("after kline %d: %w", len(out)-1, p.unexpected("',' or ']'"))
		}
	}
	if p.peek() != 0 {
		return nil, p.unexpected("the end of the body")
	}
	return out, nil
}

// klineParser is a cursor over a klines body.
type klineParser struct {
	b []byte
	i int
}

// peek skips white space and returns the next byte, 0 at the end.
func (p *klineParser) peek() byte {
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return c
		}
	}
	return 0
}

// next consumes c if it comes next.
func (p *klineParser) next(c byte) bool {
	if p.peek() == c {
		p.i++
		return true
	}
	return false
}

func (p *klineParser) unexpected(want string) error {
	if p.i >= len(p.b) {
		return fmt.Errorf("the body ends where %s should be (truncated)", want)
	}
	return fmt.Errorf("byte %d is %q, want %s", p.i, p.b[p.i], want)
}

// row reads one kline row.
func (p *klineParser) row() (candles.Candle, error) {
	var c candles.Candle
	if !p.next('[') {
		return c, p.unexpected("'[' (a kline row)")
	}
	for f := 0; f < klineFields; f++ {
		if f > 0 && !p.next(',') {
			return c, fmt.Errorf("a row of %d fields, want at least %d: %w", f, klineFields, p.unexpected("','"))
		}
		var err error
		switch f {
		case 0:
			c.OpenTime, err = p.integer("open_time")
		case 1:
			c.Open, err = p.decimal("open")
		case 2:
			c.High, err = p.decimal("high")
		case 3:
			c.Low, err = p.decimal("low")
		case 4:
			c.Close, err = p.decimal("close")
		case 5:
			c.Volume, err = p.decimal("volume")
		case 6:
			c.CloseTime, err = p.integer("close_time")
		case 7:
			c.QuoteVolume, err = p.decimal("quote_volume")
		case 8:
			c.Trades, err = p.integer("trades")
		case 9:
			c.TakerBuyBaseVolume, err = p.decimal("taker_buy_base_volume")
		case 10:
			c.TakerBuyQuoteVolume, err = p.decimal("taker_buy_quote_volume")
		}
		if err != nil {
			return c, err
		}
	}
	for p.next(',') {
		if err := p.skip(); err != nil {
			return c, err
		}
	}
	if !p.next(']') {
		return c, p.unexpected("',' or ']' (the end of the row)")
	}
	if c.OpenTime <= 0 || c.CloseTime <= 0 {
		return c, fmt.Errorf("open_time %d / close_time %d must be positive", c.OpenTime, c.CloseTime)
	}
	return c, nil
}

// integer reads a JSON integer.
func (p *klineParser) integer(name string) (int64, error) {
	p.peek()
	start := p.i
	for p.i < len(p.b) && (p.b[p.i] == '-' || p.b[p.i] >= '0' && p.b[p.i] <= '9') {
		p.i++
	}
	v, err := strconv.ParseInt(string(p.b[start:p.i]), 10, 64)
	if err == nil && p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		err = errors.New("a fraction or an exponent")
	}
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer: %w", name, p.unexpected("an integer"))
	}
	return v, nil
}

// decimal reads a JSON string holding a decimal number.
func (p *klineParser) decimal(name string) (float64, error) {
	if !p.next('"') {
		return 0, fmt.Errorf("%s is not a decimal string: %w", name, p.unexpected("'\"'"))
	}
	start := p.i
	for p.i < len(p.b) && p.b[p.i] != '"' && p.b[p.i] != '\\' && p.b[p.i] >= ' ' {
		p.i++
	}
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return 0, fmt.Errorf("%s is not a decimal string: %w", name, p.unexpected("'\"'"))
	}
	end := p.i
	p.i++
	// ParseFloat(string(b)) does not allocate as long as the string is
	// used nowhere else; the error path makes its own copy.
	v, err := strconv.ParseFloat(string(p.b[start:end]), 64)
	if err != nil || end == start {
		return 0, fmt.Errorf("%s %q is not a decimal string", name, p.b[start:end])
	}
	return v, nil
}

// skip passes over one JSON value of a field candlekeep does not read.
func (p *klineParser) skip() error {
	switch p.peek() {
	case '"':
		p.i++
		for p.i < len(p.b) {
			switch p.b[p.i] {
			case '\\':
				p.i += 2
				continue
			case '"':
				p.i++
				return nil
			}
			p.i++
		}
		return p.unexpected("the end of a string")
	case '[', '{':
		start := p.i
		depth := 0
		for p.i < len(p.b) {
			switch p.b[p.i] {
			case '"':
				if err := p.skip(); err != nil {
					return err
				}
				continue
			case '[', '{':
				depth++
			case ']', '}':
				depth--
			}
			p.i++
			if depth == 0 {
				if !json.Valid(p.b[start:p.i]) {
					return fmt.Errorf("bytes %d to %d are not JSON", start, p.i)
				}
				return nil
			}
		}
		return p.unexpected("the end of a nested value")
	default:
		start := p.i
		for p.i < len(p.b) && p.b[p.i] != ',' && p.b[p.i] != ']' && p.b[p.i] != ' ' && p.b[p.i] != '\n' && p.b[p.i] != '\t' && p.b[p.i] != '\r' {
			p.i++
		}
		if start == p.i || !json.Valid(p.b[start:p.i]) {
			return fmt.Errorf("bytes %d to %d are not a JSON value: %w", start, p.i, p.unexpected("a value"))
		}
		return nil
	}
}
