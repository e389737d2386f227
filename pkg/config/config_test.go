package config

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestParsePrecedence(t *testing.T) {
	env := map[string]string{"CANDLEKEEP_BINANCE_URL": "http://env", "CANDLEKEEP_SYMBOLS": "ETHUSDT, BNBUSDT", "CANDLEKEEP_DATA_DIR": "/env"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		name                  string
		args                  []string
		wantURL, wantDir, sym string
	}{
		{"env fills unset flags", nil, "http://env", "/env", "ETHUSDT,BNBUSDT"},
		{"command line wins", []string{"--binance-url", "http://cli", "--symbols=BTCUSDT"}, "http://cli", "/env", "BTCUSDT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			url := fs.String("binance-url", "https://api.binance.com", "")
			dir := fs.String("data-dir", "./data", "")
			syms := List{"A"}
			fs.Var(&syms, "symbols", "")
			if err := Parse(fs, tt.args, lookup); err != nil {
				t.Fatal(err)
			}
			if *url != tt.wantURL || *dir != tt.wantDir || syms.String() != tt.sym {
				t.Fatalf("got %s %s %s", *url, *dir, syms.String())
			}
		})
	}
}

func TestParseErrorsNameTheVariable(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int("lookback", 10, "")
	err := Parse(fs, nil, func(k string) (string, bool) { return "ten", k == "CANDLEKEEP_LOOKBACK" })
	if err == nil || !strings.Contains(err.Error(), "CANDLEKEEP_LOOKBACK") || !strings.Contains(err.Error(), "--lookback") {
		t.Fatalf("err = %v", err)
	}
	if err := Parse(flag.NewFlagSet("y", flag.ContinueOnError), []string{"stray"}, func(string) (string, bool) { return "", false }); err == nil {
		t.Fatal("stray argument accepted")
	}
}
