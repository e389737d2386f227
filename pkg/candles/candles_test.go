package candles

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func TestIntervalAlignment(t *testing.T) {
	tests := []struct {
		iv, at, open, next string
	}{
		{"4h", "2024-01-01T05:59:00Z", "2024-01-01T04:00:00Z", "2024-01-01T08:00:00Z"},
		{"1m", "2024-01-01T00:00:30Z", "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z"},
		{"1d", "2024-03-10T23:00:00Z", "2024-03-10T00:00:00Z", "2024-03-11T00:00:00Z"},
		{"1w", "2024-01-03T12:00:00Z", "2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z"}, // weeks open on Monday
		{"1M", "2024-02-29T12:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"},
		{"1M", "2023-12-31T23:59:59Z", "2023-12-01T00:00:00Z", "2024-01-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.iv+"@"+tt.at, func(t *testing.T) {
			iv := MustInterval(tt.iv)
			if got := iv.Align(ms(tt.at)); got != ms(tt.open) {
				t.Fatalf("Align = %s, want %s", time.UnixMilli(got).UTC(), tt.open)
			}
			if got := iv.Next(ms(tt.open)); got != ms(tt.next) {
				t.Fatalf("Next = %s, want %s", time.UnixMilli(got).UTC(), tt.next)
			}
			if !iv.Aligned(ms(tt.open)) || iv.Aligned(ms(tt.open)+1) {
				t.Fatal("Aligned wrong")
			}
			if got := iv.Add(iv.Add(ms(tt.open), 5), -5); got != ms(tt.open) {
				t.Fatalf("Add round trip = %d", got)
			}
		})
	}
	if n := MustInterval("4h").Count(ms("2024-01-01T00:00:00Z"), ms("2024-01-02T00:00:00Z")); n != 7 {
		t.Fatalf("Count = %d, want 7", n)
	}
	if n := MustInterval("1M").Count(ms("2024-01-01T00:00:00Z"), ms("2024-12-01T00:00:00Z")); n != 12 {
		t.Fatalf("monthly Count = %d, want 12", n)
	}
	if _, err := ParseInterval("7m"); err == nil || !strings.Contains(err.Error(), "allowed") {
		t.Fatalf("ParseInterval(7m) err = %v", err)
	}
}

func good(open int64) Candle {
	iv := MustInterval("1h")
	return Candle{OpenTime: open, Open: 10, High: 12.5, Low: 9.75, Close: 11, Volume: 100.125,
		CloseTime: iv.Next(open) - 1, QuoteVolume: 1100.5, Trades: 42, TakerBuyBaseVolume: 50, TakerBuyQuoteVolume: 550.25}
}

func TestCandleJSONRoundTrip(t *testing.T) {
	c := good(ms("2024-01-01T00:00:00Z"))
	c.Open = 0.00000123
	c.Low = 0.00000101
	data, err := json.Marshal([]Candle{c})
	if err != nil {
		t.Fatal(err)
	}
	var back []Candle
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 1 || back[0] != c {
		t.Fatalf("round trip: %+v != %+v (json %s)", back, c, data)
	}
	for _, bad := range []string{`[1,2]`, `{"open":1}`, `[1,"2",3,4,5,6,7,8,9,10,11]`, `[1,2,3,4,5,6,7,8,9,10,11,12]`, `[1.5,2,3,4,5,6,7,8,9,10,11]`} {
		var c Candle
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("Unmarshal(%s) accepted", bad)
		}
	}
	if _, err := json.Marshal(Candle{Open: math.NaN()}); err == nil {
		t.Error("NaN marshalled")
	}
}

func TestValidate(t *testing.T) {
	iv := MustInterval("1h")
	t0 := ms("2024-01-01T00:00:00Z")
	next := iv.Next(t0)
	tests := []struct {
		name   string
		mutate func([]Candle) []Candle
		reason string // "" = valid
	}{
		{"valid", func(cs []Candle) []Candle { return cs }, ""},
		{"misaligned", func(cs []Candle) []Candle { cs[0].OpenTime++; cs[0].CloseTime++; return cs }, "not aligned"},
		{"close time", func(cs []Candle) []Candle { cs[1].CloseTime--; return cs }, "close_time"},
		{"high below close", func(cs []Candle) []Candle { cs[0].High = 10.5; return cs }, "high"},
		{"low above open", func(cs []Candle) []Candle { cs[1].Low = 10.5; return cs }, "low"},
		{"negative volume", func(cs []Candle) []Candle { cs[1].Volume = -1; return cs }, "volume"},
		{"NaN", func(cs []Candle) []Candle { cs[1].QuoteVolume = math.NaN(); return cs }, "quote_volume"},
		{"not increasing", func(cs []Candle) []Candle { cs[1] = cs[0]; return cs }, "not after"},
		{"negative trades", func(cs []Candle) []Candle { cs[0].Trades = -1; return cs }, "trades"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(iv, tt.mutate([]Candle{good(t0), good(next)}))
			var ve *ValidationError
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("unexpected %v", err)
			case tt.reason != "" && (!errors.As(err, &ve) || !strings.Contains(err.Error(), tt.reason)):
				t.Fatalf("err = %v, want one about %q", err, tt.reason)
			}
		})
	}
}

func TestDecodeSyncRequest(t *testing.T) {
	tests := []struct {
		name, body, field, msg string // field "-" = valid
	}{
		{"empty body means everything", ``, "-", ""},
		{"full", `{"symbols":["BTCUSDT"],"intervals":["4h","1d"],"start":"2024-01-01T00:00:00Z","end":"2024-02-01T00:00:00Z","lookback":10,"reason":"manual"}`, "-", ""},
		{"malformed", `{"symbols":["BTCUSDT"`, "", "truncated"},
		{"not json", `hello`, "", "malformed JSON"},
		{"trailing", `{} {}`, "", "trailing"},
		{"unknown field", `{"symbol":"BTCUSDT"}`, "symbol", "unknown field"},
		{"wrong type", `{"symbols":"BTCUSDT"}`, "symbols", "list of strings"},
		{"unknown interval", `{"intervals":["7m"]}`, "intervals", "unknown interval"},
		{"start after end", `{"start":"2024-02-01T00:00:00Z","end":"2024-01-01T00:00:00Z"}`, "start", "not before end"},
		{"bad time", `{"start":"yesterday"}`, "start", "RFC 3339"},
		{"empty symbols", `{"symbols":[]}`, "symbols", "empty list"},
		{"oversized symbols", `{"symbols":[` + strings.Repeat(`"BTCUSDT",`, MaxSymbols) + `"ETHUSDT"]}`, "symbols", "at most"},
		{"bad symbol", `{"symbols":["btc-usdt"]}`, "symbols", "not a symbol"},
		{"duplicate symbol", `{"symbols":["BTCUSDT","BTCUSDT"]}`, "symbols", "twice"},
		{"negative lookback", `{"lookback":-1}`, "lookback", "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeSyncRequest([]byte(tt.body))
			if tt.field == "-" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want field %q with %q", err, tt.field, tt.msg)
			}
		})
	}
}

func TestDecodeBatchChecksSubjectAndRules(t *testing.T) {
	b := Batch{V: Version, RunID: "r", Symbol: "BTCUSDT", Interval: "1h", Candles: []Candle{good(ms("2024-01-01T00:00:00Z"))}}
	data, _ := json.Marshal(b)
	if _, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), data); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeBatch(BatchSubject("1h", "ETHUSDT"), data); err == nil {
		t.Fatal("batch on the wrong subject accepted")
	}
	b.Candles[0].High = 1
	data, _ = json.Marshal(b)
	if _, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), data); err == nil {
		t.Fatal("rule-breaking batch accepted")
	}
	if _, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), []byte(`{"v":1,`)); err == nil {
		t.Fatal("truncated batch accepted")
	}
	if len(DefaultSymbols()) != 60 {
		t.Fatalf("%d default symbols, want 60", len(DefaultSymbols()))
	}
}

func TestBatchEncodeDecodeRoundTrip(t *testing.T) {
	iv := MustInterval("1h")
	t0 := ms("2024-01-01T00:00:00Z")
	b := Batch{V: Version, RunID: "r1", Symbol: "BTCUSDT", Interval: "1h", Page: 3, Final: true,
		From: t0, Until: iv.Add(t0, 3), Repair: true, Candles: []Candle{good(t0), good(iv.Next(t0))}}
	data, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var viaStd map[string]any
	if err := json.Unmarshal(data, &viaStd); err != nil || viaStd["run_id"] != "r1" || len(viaStd["candles"].([]any)) != 2 {
		t.Fatalf("Encode wrote invalid JSON %s: %v", data, err)
	}
	back, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), data)
	if err != nil {
		t.Fatal(err)
	}
	if back.RunID != b.RunID || back.Page != 3 || !back.Final || !back.Repair || back.From != b.From || back.Until != b.Until ||
		len(back.Candles) != 2 || back.Candles[0] != b.Candles[0] || back.Candles[1] != b.Candles[1] {
		t.Fatalf("round trip: %+v", back)
	}
	empty, _ := Batch{V: Version, RunID: "r", Symbol: "BTCUSDT", Interval: "1h", Final: true}.Encode()
	if e, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), empty); err != nil || len(e.Candles) != 0 || !e.Final {
		t.Fatalf("empty batch: %+v %v (%s)", e, err, empty)
	}
	for _, bad := range []string{
		`{"v":1,"symbol":"BTCUSDT","interval":"1h","candles":[[1,2]]}`,
		`{"v":1,"symbol":"BTCUSDT","interval":"1h","candles":{}}`,
		`{"v":1,"symbol":"BTCUSDT","interval":"1h","candles":[[1704067200000,1,1,1,1,1,1704070799999,1,1,1,1],]}`,
		`{"v":1,"symbol":"BTCUSDT","interval":"1h","candles":[[1704067200000,1,1,1,1,1,1704070799999,1,1,1,1] [1704067200000,1,1,1,1,1,1704070799999,1,1,1,1]]}`,
	} {
		if _, err := DecodeBatch(BatchSubject("1h", "BTCUSDT"), []byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
