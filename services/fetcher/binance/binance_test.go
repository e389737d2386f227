package binance

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/sim"
)

func TestKlinesClassifiesFaults(t *testing.T) {
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	tests := []struct {
		name  string
		fault sim.Fault
		check func(t *testing.T, e *Error)
	}{
		{"a hang is a timeout", sim.Fault{Kind: sim.FaultTimeout, Delay: 5 * time.Second}, func(t *testing.T, e *Error) {
			if !errors.Is(e, ErrTemporary) || !e.Timeout || e.Response.Status != 0 {
				t.Fatalf("%+v: want a temporary timeout without a response", e)
			}
		}},
		{"a 503 is temporary", sim.Fault{Kind: sim.FaultStatus, Status: 503}, func(t *testing.T, e *Error) {
			if !errors.Is(e, ErrTemporary) || e.Timeout || e.Response.Status != 503 {
				t.Fatalf("%+v: want a temporary HTTP 503", e)
			}
		}},
		{"a 429 carries Retry-After", sim.Fault{Kind: sim.FaultRateLimit, RetryAfter: 3 * time.Second}, func(t *testing.T, e *Error) {
			if !errors.Is(e, ErrRateLimited) || e.Response.RetryAfter != 3*time.Second || e.Response.UsedWeight < 0 {
				t.Fatalf("%+v: want a 429 with Retry-After 3s and the used weight", e)
			}
		}},
		{"a 418 says when the ban ends", sim.Fault{Kind: sim.FaultBan, RetryAfter: 2 * time.Second}, func(t *testing.T, e *Error) {
			if !errors.Is(e, ErrBanned) {
				t.Fatalf("%+v: want a ban", e)
			}
			if d := time.Until(e.BannedUntil); d < time.Second || d > 2*time.Second {
				t.Fatalf("ban ends in %v, want about 2s (until %v)", d, e.BannedUntil)
			}
		}},
		{"a truncated body is a bad page", sim.Fault{Kind: sim.FaultTruncate}, func(t *testing.T, e *Error) {
			if !errors.Is(e, ErrBadPage) || e.Response.Status != 200 {
				t.Fatalf("%+v: want a bad page", e)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim.New(sim.Options{})
			srv := httptest.NewServer(s)
			t.Cleanup(func() { s.Close(); srv.Close() })
			c := New(srv.URL, &http.Client{Timeout: 300 * time.Millisecond})
			tt.fault.Path = "/api/v3/klines"
			s.AddFault(tt.fault)
			_, _, err := c.Klines(context.Background(), "BTCUSDT", "1h", start, start+10*3600_000, 10)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v is not an *Error", err)
			}
			tt.check(t, e)
		})
	}
}

func TestKlinesReportsTheUsedWeightPerRequest(t *testing.T) {
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	c := New(srv.URL, nil)
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	for want := 2; want <= 6; want += 2 {
		cs, r, err := c.Klines(context.Background(), "BTCUSDT", "1h", start, start+10*3600_000, 10)
		if err != nil || len(cs) != 10 {
			t.Fatalf("%d candles, %v", len(cs), err)
		}
		if r.UsedWeight != want {
			t.Fatalf("used weight %d, want %d", r.UsedWeight, want)
		}
	}
	if c.api.UsedWeight.Used1M != 0 {
		t.Fatal("go-binance's shared weight field was written; concurrent requests would race on it")
	}
}

func TestBannedUntil(t *testing.T) {
	for msg, want := range map[string]int64{
		"Way too much request weight used; IP banned until 1521191542000. Please use WebSocket Streams": 1521191542000,
		"IP banned until 1700000000123":    1700000000123,
		"Too many requests; current limit": 0,
		"IP banned until soon":             0,
	} {
		got := bannedUntil(msg)
		if (want == 0 && !got.IsZero()) || (want != 0 && got.UnixMilli() != want) {
			t.Errorf("bannedUntil(%q) = %v, want %d", msg, got, want)
		}
	}
}

// Klines reads its body itself (klines.go): what it returns must be exactly
// the simulator's candles, and every body that is not a well-formed page
// must be a bad page, never a zero in a candle.
func TestKlinesParsesTheExchangesPagesExactly(t *testing.T) {
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	c := New(srv.URL, nil)
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	end := start + 999*60_000
	got, r, err := c.Klines(context.Background(), "ETHUSDT", "1m", start, end, 1000)
	if err != nil || r.Status != 200 {
		t.Fatalf("status %d: %v", r.Status, err)
	}
	want := s.Klines("ETHUSDT", candles.MustInterval("1m"), start, end+60_000)
	if len(got) != 1000 || !slices.Equal(got, want) {
		t.Fatalf("%d candles differ from the simulator's %d", len(got), len(want))
	}

	for _, f := range []sim.Fault{
		{Kind: sim.FaultMalformed, Count: 2}, // a price as a number, then a time as a string
		{Kind: sim.FaultTruncate, Count: 1},
	} {
		f.Path = "/api/v3/klines"
		s.AddFault(f)
		for range f.Count {
			_, _, err := c.Klines(context.Background(), "ETHUSDT", "1m", start, end, 1000)
			if !errors.Is(err, ErrBadPage) {
				t.Fatalf("%s: err %v, want a bad page", f.Kind, err)
			}
		}
	}
}

func TestParseKlines(t *testing.T) {
	const row = `[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4","0"]`
	want := candles.Candle{OpenTime: 1499040000000, Open: 0.0163, High: 0.8, Low: 0.0157, Close: 0.0157, Volume: 148976.1,
		CloseTime: 1499040059999, QuoteVolume: 2434.1, Trades: 308, TakerBuyBaseVolume: 1756.8, TakerBuyQuoteVolume: 28.4}
	for body, n := range map[string]int{
		"[" + row + "]":                   1,
		" [ " + row + " , " + row + "]\n": 2,
		"[]":                              0,
		"{}":                              0, // valid JSON that is not an array: empty, as go-binance reads it
		`[[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4","0",{"x":[1,"]"]},null]]`: 1,
	} {
		got, err := parseKlines([]byte(body))
		if err != nil || len(got) != n {
			t.Fatalf("%s: %d candles, %v; want %d", body, len(got), err, n)
		}
		for _, c := range got {
			if c != want {
				t.Fatalf("%s: %+v, want %+v", body, c, want)
			}
		}
	}
	for _, body := range []string{
		"",
		"[" + row,
		"[" + row + "]x",
		"[" + row[:len(row)/2],
		`[[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8"]]`,      // 10 fields
		`[[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8",28.4]]`, // a number for a decimal string
		`[["1499040000000","0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4"]]`,
		`[[1499040000000.5,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4"]]`,
		`[[1499040000000,"","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4"]]`,
		`[[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",0,"2434.1",308,"1756.8","28.4"]]`,
		`[[1499040000000,"0.0163","0.8","0.0157","0.0157","148976.1",1499040059999,"2434.1",308,"1756.8","28.4",tru]]`,
	} {
		if cs, err := parseKlines([]byte(body)); err == nil {
			t.Fatalf("%s: %d candles, want an error", body, len(cs))
		}
	}
}
