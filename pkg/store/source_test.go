package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/candlekeep/candlekeep/pkg/store"
)

func TestCanonicalSource(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "https://api.binance.com", want: "https://api.binance.com"},
		{in: "HTTPS://API.Binance.com/", want: "https://api.binance.com"},
		{in: "http://user:secret@127.0.0.1:9100/?key=abc#x", want: "http://127.0.0.1:9100"},
		{in: "https://example.com/binance/", want: "https://example.com/binance"},
		{in: "127.0.0.1:9100", err: "exchange URL"},
		{in: "ftp://example.com", err: "want http(s)://"},
		{in: "http://user:secret@", err: "want http(s)://"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := store.CanonicalSource(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "secret") {
					t.Fatalf("CanonicalSource(%q) = %q, %v; want an error with %q and no secret", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CanonicalSource(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// An empty database takes the first source; the same source again is
// fine; another one is refused naming both, and taken only when asked to
// rebind. The binding survives reopening.
func TestBindSource(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	s := openStore(t, path)
	if src, err := s.Source(ctx); err != nil || src != "" {
		t.Fatalf("Source of a new database = %q, %v", src, err)
	}
	if b, _, err := s.BindSource(ctx, "https://user:pw@api.binance.com/?x=1", false); err != nil || b != store.BoundNew {
		t.Fatalf("first BindSource = %v, %v", b, err)
	}
	s.Close()

	s = openStore(t, path)
	if b, prev, err := s.BindSource(ctx, "https://api.binance.com/", false); err != nil || b != store.BoundAlready || prev != "https://api.binance.com" {
		t.Fatalf("same source = %v, %q, %v", b, prev, err)
	}
	_, _, err := s.BindSource(ctx, "http://127.0.0.1:9100", false)
	var mismatch *store.SourceMismatchError
	if !errors.As(err, &mismatch) || mismatch.Recorded != "https://api.binance.com" || mismatch.Configured != "http://127.0.0.1:9100" {
		t.Fatalf("other source = %v, want a SourceMismatchError", err)
	}
	for _, want := range []string{"https://api.binance.com", "http://127.0.0.1:9100", "--data-dir", "--rebind-source"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if src, _ := s.Source(ctx); src != "https://api.binance.com" {
		t.Fatalf("a refused source changed the binding to %q", src)
	}
	if b, prev, err := s.BindSource(ctx, "http://127.0.0.1:9100", true); err != nil || b != store.Rebound || prev != "https://api.binance.com" {
		t.Fatalf("rebind = %v, %q, %v", b, prev, err)
	}
	if src, _ := s.Source(ctx); src != "http://127.0.0.1:9100" {
		t.Fatalf("Source after rebind = %q", src)
	}
	if _, _, err := s.BindSource(ctx, "not a url", true); err == nil {
		t.Fatal("BindSource accepted a bad URL")
	}
}
