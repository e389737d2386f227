package candles

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Limits of a sync request.
const (
	MaxSymbols      = 1000
	MaxIntervals    = 16
	MaxLookback     = 100000
	MaxReasonLength = 200
)

// SyncRequest asks for candles of some pairs. Every field is optional: no
// symbols or intervals means the configured set, no Start means "from the
// last stored candle of each pair" (Lookback bars back for an empty pair) and
// no End means now. The range is half-open: candles whose open time is in
// [Start, End).
type SyncRequest struct {
	Symbols   []string `json:"symbols,omitempty"`
	Intervals []string `json:"intervals,omitempty"`
	Start     string   `json:"start,omitempty"`
	End       string   `json:"end,omitempty"`
	Lookback  int      `json:"lookback,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	// DryRun asks candles.api.sync for the plan (pairs, pages, weight,
	// estimated time) without fetching anything.
	DryRun bool `json:"dry_run,omitempty"`
	// Confirm lets a plan over the fetcher's size limit (very many klines
	// requests, or an estimated time over a day) run: without it such a
	// request is refused with the dry-run estimate, so an operator decides
	// knowingly.
	Confirm bool `json:"confirm,omitempty"`
}

// StartListing as Start asks for a pair's full history, from its listing.
const StartListing = "listing"

// FieldError is a sync request error that names the offending field.
type FieldError struct {
	Field string // JSON field name; empty for the body as a whole
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

var symbolRE = regexp.MustCompile(`^[A-Z0-9]{2,20}$`)

// ValidSymbol reports whether s has the shape of a Binance spot symbol.
func ValidSymbol(s string) bool { return symbolRE.MatchString(s) }

// DecodeSyncRequest parses and validates a sync request strictly: unknown
// fields, trailing data, bad symbols or intervals and a start after the end
// are errors (*FieldError). An empty body is a request for everything.
func DecodeSyncRequest(data []byte) (SyncRequest, error) {
	var r SyncRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return r, nil
	}
	if err := DecodeStrict(data, &r, "symbols, intervals, start, end, lookback, reason, dry_run, confirm", syncFieldType); err != nil {
		return SyncRequest{}, err
	}
	return r, r.Validate()
}

func syncFieldType(field string) string {
	switch {
	case field == "":
		return `{"symbols":["BTCUSDT"],"intervals":["4h"],"lookback":10}`
	case field == "symbols" || field == "intervals":
		return "a list of strings"
	case field == "lookback":
		return "a whole number"
	case field == "dry_run" || field == "confirm":
		return "true or false"
	default:
		return "a string"
	}
}

// DecodeStrict decodes the one JSON object in data into v, as every
// candlekeep request is read: unknown fields and trailing data are errors,
// and every error is a *FieldError naming the field. allowed lists the field
// names for an unknown-field error; want(field) says what a field of the
// wrong type should be (want("") gives an example of the whole object).
func DecodeStrict(data []byte, v any, allowed string, want func(field string) string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonFieldError(err, allowed, want)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &FieldError{Msg: "malformed JSON: trailing data after the request object"}
	}
	return nil
}

func jsonFieldError(err error, allowed string, want func(string) string) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return &FieldError{Field: "request", Msg: fmt.Sprintf("must be a JSON object like %s, not a JSON %s", want(""), typeErr.Value)}
	case errors.As(err, &typeErr):
		return &FieldError{Field: typeErr.Field, Msg: fmt.Sprintf("wrong type (a JSON %s); want %s", typeErr.Value, want(typeErr.Field))}
	case errors.As(err, &syntaxErr):
		return &FieldError{Msg: fmt.Sprintf("malformed JSON at byte %d: %v", syntaxErr.Offset, err)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &FieldError{Field: name, Msg: "unknown field (allowed: " + allowed + ")"}
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return &FieldError{Msg: "malformed JSON: the request is truncated"}
	default:
		return &FieldError{Msg: "malformed JSON: " + err.Error()}
	}
}

// Validate checks every field and returns the first problem as a *FieldError.
func (r SyncRequest) Validate() error {
	if r.Symbols != nil {
		if len(r.Symbols) == 0 {
			return &FieldError{Field: "symbols", Msg: "empty list; omit the field to sync the configured symbols"}
		}
		if len(r.Symbols) > MaxSymbols {
			return &FieldError{Field: "symbols", Msg: fmt.Sprintf("%d symbols, at most %d per request", len(r.Symbols), MaxSymbols)}
		}
		seen := make(map[string]bool, len(r.Symbols))
		for _, s := range r.Symbols {
			if !ValidSymbol(s) {
				return &FieldError{Field: "symbols", Msg: fmt.Sprintf("%q is not a symbol (2-20 upper-case letters and digits, e.g. BTCUSDT)", s)}
			}
			if seen[s] {
				return &FieldError{Field: "symbols", Msg: fmt.Sprintf("%s is listed twice", s)}
			}
			seen[s] = true
		}
	}
	if r.Intervals != nil {
		if len(r.Intervals) == 0 {
			return &FieldError{Field: "intervals", Msg: "empty list; omit the field to sync the configured intervals"}
		}
		if len(r.Intervals) > MaxIntervals {
			return &FieldError{Field: "intervals", Msg: fmt.Sprintf("%d intervals, at most %d", len(r.Intervals), MaxIntervals)}
		}
		seen := make(map[string]bool, len(r.Intervals))
		for _, s := range r.Intervals {
			if _, err := ParseInterval(s); err != nil {
				return &FieldError{Field: "intervals", Msg: err.Error()}
			}
			if seen[s] {
				return &FieldError{Field: "intervals", Msg: fmt.Sprintf("%s is listed twice", s)}
			}
			seen[s] = true
		}
	}
	start, end, err := r.Range()
	if err != nil {
		return err
	}
	if start != nil && end != nil && !start.Before(*end) {
		return &FieldError{Field: "start", Msg: fmt.Sprintf("start %s is not before end %s", start.Format(time.RFC3339), end.Format(time.RFC3339))}
	}
	if r.Lookback < 0 || r.Lookback > MaxLookback {
		return &FieldError{Field: "lookback", Msg: fmt.Sprintf("%d is out of range (1 to %d bars)", r.Lookback, MaxLookback)}
	}
	if len(r.Reason) > MaxReasonLength {
		return &FieldError{Field: "reason", Msg: fmt.Sprintf("%d characters, at most %d", len(r.Reason), MaxReasonLength)}
	}
	return nil
}

// Listing reports whether the request asks for full history.
func (r SyncRequest) Listing() bool { return r.Start == StartListing }

// Range returns the parsed Start and End (nil where absent; Start is nil for
// "listing", see Listing).
func (r SyncRequest) Range() (start, end *time.Time, err error) {
	parse := func(field, v string) (*time.Time, error) {
		if v == "" || (field == "start" && v == StartListing) {
			return nil, nil
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, &FieldError{Field: field, Msg: fmt.Sprintf("%q is not an RFC 3339 time such as 2024-01-01T00:00:00Z%s", v, map[bool]string{true: ` or "listing"`}[field == "start"])}
		}
		t = t.UTC()
		return &t, nil
	}
	if start, err = parse("start", r.Start); err != nil {
		return nil, nil, err
	}
	if end, err = parse("end", r.End); err != nil {
		return nil, nil, err
	}
	return start, end, nil
}

// SyncAccepted is the reply of candles.api.sync.
type SyncAccepted struct {
	RunID string `json:"run_id"`
	Pairs int    `json:"pairs"`
}
