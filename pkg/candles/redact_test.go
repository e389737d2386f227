package candles

import (
	"strings"
	"testing"
)

func TestRedactURLHidesUserInfoAndQueryValues(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://api.binance.com", "https://api.binance.com"},
		{"http://user:pass@127.0.0.1:9100/?apikey=s3cr3t", "http://redacted@127.0.0.1:9100/?apikey=redacted"},
		{"https://h/api/v3/klines?symbol=BTCUSDT&signature=abc", "https://h/api/v3/klines?signature=redacted&symbol=BTCUSDT"},
		{"https://hooks.example/x?token=abc&X-Api-Key=abc", "https://hooks.example/x?X-Api-Key=redacted&token=redacted"},
		{"http://[::1", "(unparsable URL redacted)"},
	} {
		got := RedactURL(tc.in)
		if got != tc.want {
			t.Errorf("RedactURL(%q) = %q; want %q", tc.in, got, tc.want)
		}
		for _, secret := range []string{"pass", "s3cr3t", "abc"} {
			if strings.Contains(got, secret) {
				t.Errorf("RedactURL(%q) leaks %q", tc.in, secret)
			}
		}
	}
}
