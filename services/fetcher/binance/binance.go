// Package binance adapts github.com/adshao/go-binance/v2 to the fetcher: it
// pages /api/v3/klines, parses decimal strings strictly and classifies every
// failure so the fetcher can decide between retry, wait and give up.
//
// go-binance v2.8.7 reports every HTTP error as the same *common.APIError
// without the status code or Retry-After, keeps the used weight in a shared,
// racy field and turns a JSON field of the wrong type into "" or 0. So each
// request carries its own capture in its context, filled by a RoundTripper,
// and an empty or unparsable field makes the whole page bad. Klines asks
// as go-binance would but parses the page itself (klines.go): go-binance's
// decoding was a fifth of a backfill's CPU.
package binance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	gobinance "github.com/adshao/go-binance/v2"
	"github.com/adshao/go-binance/v2/common"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// DefaultURL is the production REST API.
const DefaultURL = "https://api.binance.com"

// Response is what one HTTP exchange with the API said besides its body.
type Response struct {
	Status     int           // HTTP status; 0 when no response arrived
	UsedWeight int           // X-MBX-USED-WEIGHT-1M; -1 when absent
	RetryAfter time.Duration // Retry-After; 0 when absent
	Date       time.Time     // the Date header, if any
}

// Error kinds a caller branches on with errors.Is.
var (
	// ErrTemporary: a timeout, a connection failure or a 5xx; retry later.
	ErrTemporary = errors.New("temporary exchange failure")
	// ErrRateLimited: HTTP 429; wait Retry-After.
	ErrRateLimited = errors.New("rate limited (HTTP 429)")
	// ErrBanned: HTTP 418; every request waits until the ban ends.
	ErrBanned = errors.New("IP banned (HTTP 418)")
	// ErrRejected: a 4xx business error such as -1121 Invalid symbol; retrying cannot help.
	ErrRejected = errors.New("request rejected by the exchange")
	// ErrBadPage: a 200 whose body is truncated, malformed or of the wrong shape.
	ErrBadPage = errors.New("bad page from the exchange")
)

// Error is a classified failure of one request.
type Error struct {
	Kind     error // one of the Err* values above
	Response Response
	Code     int64  // Binance error code, when the body had one
	Msg      string // Binance's message or the underlying error
	// Timeout marks an ErrTemporary where no answer came within the
	// client's timeout.
	Timeout bool
	// BannedUntil is when an ErrBanned ban ends, read from the message
	// ("IP banned until 1700000000000"); zero when the message does not
	// say. Every client banned together reads the same instant from it.
	BannedUntil time.Time
}

func (e *Error) Error() string {
	switch {
	case e.Code != 0:
		return fmt.Sprintf("%v: HTTP %d, code %d: %s", e.Kind, e.Response.Status, e.Code, e.Msg)
	case e.Response.Status != 0:
		return fmt.Sprintf("%v: HTTP %d: %s", e.Kind, e.Response.Status, e.Msg)
	default:
		return fmt.Sprintf("%v: %s", e.Kind, e.Msg)
	}
}

// Unwrap lets errors.Is match the kind.
func (e *Error) Unwrap() error { return e.Kind }

// Client talks to one Binance-compatible base URL.
type Client struct {
	api *gobinance.Client
	// hc and baseURL serve Klines, which reads its body itself (klines.go).
	hc      *http.Client
	baseURL string
	// bodies recycles the buffers Klines reads pages into (*bytes.Buffer):
	// a page is some 200 KB, parseKlines keeps nothing of it, and reading
	// each into a fresh, doubling slice made most of the fetcher's garbage.
	bodies sync.Pool
}

// New returns a client for baseURL. hc's transport is wrapped to capture
// status and headers per request; hc.Timeout bounds each request.
func New(baseURL string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	wrapped := *hc
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	wrapped.Transport = captureTransport{base: base}
	api := gobinance.NewClient("", "")
	api.BaseURL = baseURL
	api.HTTPClient = &wrapped
	api.Logger = log.New(io.Discard, "", 0)
	return &Client{api: api, hc: &wrapped, baseURL: baseURL}
}

type captureKey struct{}

type capture struct {
	resp Response
}

// captureTransport records status and rate-limit headers into the capture
// carried by the request's context, then removes the headers go-binance
// would copy into its shared, unsynchronised UsedWeight and OrderCount
// fields (a data race between concurrent requests).
type captureTransport struct{ base http.RoundTripper }

func (t captureTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if resp == nil {
		return resp, err
	}
	if c, ok := req.Context().Value(captureKey{}).(*capture); ok {
		c.resp = parseResponse(resp)
	}
	for name := range resp.Header {
		if strings.HasPrefix(name, "X-Mbx-Used-Weight") || strings.HasPrefix(name, "X-Mbx-Order-Count") {
			resp.Header.Del(name)
		}
	}
	return resp, err
}

func parseResponse(resp *http.Response) Response {
	r := Response{Status: resp.StatusCode, UsedWeight: -1}
	if v := resp.Header.Get("X-Mbx-Used-Weight-1m"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			r.UsedWeight = n
		}
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			r.RetryAfter = time.Duration(n) * time.Second
		} else if t, err := http.ParseTime(v); err == nil {
			r.RetryAfter = time.Until(t)
		}
	}
	if v := resp.Header.Get("Date"); v != "" {
		if t, err := http.ParseTime(v); err == nil {
			r.Date = t
		}
	}
	return r
}

// do runs one call with a fresh capture and classifies its error.
func do[T any](ctx context.Context, call func(context.Context) (T, error)) (T, Response, error) {
	c := &capture{resp: Response{UsedWeight: -1}}
	v, err := call(context.WithValue(ctx, captureKey{}, c))
	if err != nil {
		return v, c.resp, classify(ctx, c.resp, err)
	}
	return v, c.resp, nil
}

func classify(ctx context.Context, r Response, err error) error {
	var apiErr *common.APIError
	isAPI := errors.As(err, &apiErr)
	e := &Error{Response: r, Msg: redactURLs(err)}
	if isAPI {
		e.Code, e.Msg = apiErr.Code, apiErr.Message
		if !apiErr.IsValid() {
			e.Msg = truncate(string(apiErr.Response), 200)
		}
	}
	switch {
	case r.Status == http.StatusTooManyRequests:
		e.Kind = ErrRateLimited
	case r.Status == http.StatusTeapot:
		e.Kind = ErrBanned
	case r.Status >= 500:
		e.Kind = ErrTemporary
	case r.Status >= 400 && r.Status != http.StatusRequestTimeout:
		e.Kind = ErrRejected
	case r.Status == http.StatusOK:
		e.Kind = ErrBadPage // 200 but the body did not parse: truncated or malformed
	case ctx.Err() != nil:
		return ctx.Err() // our own shutdown, not the exchange's fault
	default:
		e.Kind = ErrTemporary // no response: timeout, refused, reset
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			e.Timeout = true
			e.Msg = "timeout: " + e.Msg
		}
	}
	if e.Kind == ErrBanned {
		e.BannedUntil = bannedUntil(e.Msg)
	}
	return e
}

// bannedUntil reads the end of a ban from a 418's message, which says
// "IP banned until 1521191542000." in ms since the epoch.
func bannedUntil(msg string) time.Time {
	_, rest, ok := strings.Cut(msg, "banned until ")
	if !ok {
		return time.Time{}
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	ms, err := strconv.ParseInt(rest[:end], 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// ServerTime returns the exchange's clock.
func (c *Client) ServerTime(ctx context.Context) (time.Time, Response, error) {
	ms, r, err := do(ctx, func(ctx context.Context) (int64, error) { return c.api.NewServerTimeService().Do(ctx) })
	if err != nil {
		return time.Time{}, r, err
	}
	if ms <= 0 {
		return time.Time{}, r, &Error{Kind: ErrBadPage, Response: r, Msg: "serverTime missing or not a number"}
	}
	return time.UnixMilli(ms).UTC(), r, nil
}

// Klines fetches up to limit candles of symbol/interval opening in
// [start, end] (ms, inclusive as Binance defines endTime), oldest first. The
// still-open last candle is included; the caller decides what is closed.
//
// It asks as go-binance's KlinesService would, but parses the body itself
// (parseKlines): go-binance decodes every page into a tree of interfaces
// and strings before anyone reads it, which was a fifth of the CPU of a
// whole backfill on two cores.
func (c *Client) Klines(ctx context.Context, symbol, interval string, start, end int64, limit int) ([]candles.Candle, Response, error) {
	q := url.Values{}
	q.Set("symbol", symbol)
	q.Set("interval", interval)
	q.Set("limit", strconv.Itoa(limit))
	q.Set("startTime", strconv.FormatInt(start, 10))
	q.Set("endTime", strconv.FormatInt(end, 10))
	return do(ctx, func(ctx context.Context) ([]candles.Candle, error) {
		buf, _ := c.bodies.Get().(*bytes.Buffer)
		if buf == nil {
			buf = new(bytes.Buffer)
		}
		defer func() {
			if buf.Cap() <= maxPooledBody {
				c.bodies.Put(buf)
			}
		}()
		body, err := c.get(ctx, "/api/v3/klines", q, buf)
		if err != nil {
			return nil, err
		}
		return parseKlines(body)
	})
}

// maxPooledBody bounds the buffers kept for reuse: a page of 1000 klines
// is about 200 KB; an odd larger body is left to the collector.
const maxPooledBody = 1 << 20

// get is go-binance's callAPI for an unsigned GET: the body of a 2xx or
// 3xx, read into buf (the result is buf's bytes, valid until buf is
// reused), or the *common.APIError of a 4xx/5xx, so classify treats both
// clients' answers alike.
func (c *Client) get(ctx context.Context, endpoint string, q url.Values, buf *bytes.Buffer) ([]byte, error) {
	u := c.baseURL + endpoint
	if qs := strings.ReplaceAll(q.Encode(), "%40", "@"); qs != "" {
		u += "?" + qs
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(res.Body); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	if res.StatusCode >= http.StatusBadRequest {
		data = bytes.Clone(data) // the error outlives buf
		apiErr := new(common.APIError)
		_ = json.Unmarshal(data, apiErr) // a body that is not Binance's error shape is kept below
		if !apiErr.IsValid() {
			apiErr.Response = data
		}
		return nil, apiErr
	}
	return data, nil
}

// WeightLimit reads the REQUEST_WEIGHT limit from /api/v3/exchangeInfo,
// asking about one symbol so the answer stays small.
func (c *Client) WeightLimit(ctx context.Context, symbol string) (limit int, window time.Duration, r Response, err error) {
	info, r, err := do(ctx, func(ctx context.Context) (*gobinance.ExchangeInfo, error) {
		return c.api.NewExchangeInfoService().Symbol(symbol).Do(ctx)
	})
	if err != nil {
		return 0, 0, r, err
	}
	for _, rl := range info.RateLimits {
		if rl.RateLimitType != "REQUEST_WEIGHT" || rl.Limit <= 0 || rl.IntervalNum <= 0 {
			continue
		}
		unit := map[string]time.Duration{"SECOND": time.Second, "MINUTE": time.Minute, "HOUR": time.Hour, "DAY": 24 * time.Hour}[rl.Interval]
		if unit == 0 {
			continue
		}
		return int(rl.Limit), time.Duration(rl.IntervalNum) * unit, r, nil
	}
	return 0, 0, r, &Error{Kind: ErrBadPage, Response: r, Msg: "exchangeInfo has no REQUEST_WEIGHT rate limit"}
}

// redactURLs is err's message with the request URL it names (a transport
// error says `Get "<url>": …`) redacted: the base URL may carry user info
// or an API key in its query, which must reach no log or event.
func redactURLs(err error) string {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != "" {
		msg = strings.ReplaceAll(msg, ue.URL, candles.RedactURL(ue.URL))
	}
	return msg
}
