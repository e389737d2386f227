package candles

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Version is the version of every message's JSON shape ("v").
const Version = 1

// Pair is one (symbol, interval) series.
type Pair struct {
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
}

func (p Pair) String() string { return p.Symbol + "/" + p.Interval }

// Range is the half-open span of open times [From, Until), in ms.
type Range struct {
	From  int64 `json:"from"`
	Until int64 `json:"until"`
}

// Job asks one fetcher to fetch one pair for a run: the candles opening in
// [From, Until), times in ms since the epoch, after first re-fetching the
// holes listed in Repair.
type Job struct {
	V        int     `json:"v"`
	RunID    string  `json:"run_id"`
	Symbol   string  `json:"symbol"`
	Interval string  `json:"interval"`
	From     int64   `json:"from"`
	Until    int64   `json:"until"`
	Repair   []Range `json:"repair,omitempty"`
	// Incremental: From is the pair's last stored candle (no explicit start),
	// so a job that had to wait for another run of the same pair may move
	// From up to what that run stored.
	Incremental bool `json:"incremental,omitempty"`
	// Deadline is when the run times out; a job still running then stops.
	Deadline time.Time `json:"deadline,omitempty"`
	// Token is the job's secret (NewJobToken): every batch of the job
	// carries it, and the writer applies a batch only when its hash is the
	// one sync.started announced for the pair (JobGrant.TokenSHA256). Job
	// messages are read only by fetchers; the token never appears in an
	// event or a log.
	Token string `json:"token,omitempty"`
}

// Batch is one page of closed candles for one pair, published on
// candles.batch.<interval>.<SYMBOL>. Final marks the last page of the pair in
// its run (it may be empty when there was nothing new).
//
// From and Until (ms, optional) are the span of open times the exchange was
// asked for and answered completely: every candle the exchange serves in
// [From, Until) is in Candles, so a slot of that span without a candle is a
// known gap (an exchange outage), not a hole to re-fetch. Repair marks pages
// fetched to fill holes found by the gap audit.
type Batch struct {
	V        int    `json:"v"`
	RunID    string `json:"run_id"`
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	Page     int    `json:"page"`
	Final    bool   `json:"final"`
	From     int64  `json:"from,omitempty"`
	Until    int64  `json:"until,omitempty"`
	Repair   bool   `json:"repair,omitempty"`
	// Token is the token of the job that fetched the page (Job.Token).
	Token   string   `json:"token,omitempty"`
	Candles []Candle `json:"candles"`
}

// DecodeBatch parses a batch published on subject and checks it against the
// subject and the candle rules; a batch that fails can never be applied.
func DecodeBatch(subject string, data []byte) (Batch, error) {
	b, err := unmarshalBatch(data)
	if err != nil {
		return Batch{}, fmt.Errorf("malformed batch: %w", err)
	}
	if b.V != Version {
		return Batch{}, fmt.Errorf("batch version %d, this writer reads version %d", b.V, Version)
	}
	interval, symbol, ok := ParseBatchSubject(subject)
	if !ok || interval != b.Interval || symbol != b.Symbol {
		return Batch{}, fmt.Errorf("batch for %s/%s published on %q", b.Symbol, b.Interval, subject)
	}
	if !ValidSymbol(b.Symbol) {
		return Batch{}, fmt.Errorf("batch symbol %q is not a symbol", b.Symbol)
	}
	iv, err := ParseInterval(b.Interval)
	if err != nil {
		return Batch{}, fmt.Errorf("batch: %w", err)
	}
	if err := Validate(iv, b.Candles); err != nil {
		return Batch{}, fmt.Errorf("batch %s/%s page %d: %w", b.Symbol, b.Interval, b.Page, err)
	}
	if b.From != 0 || b.Until != 0 {
		if b.From <= 0 || b.Until <= b.From {
			return Batch{}, fmt.Errorf("batch %s/%s page %d: covered span [%d, %d) is empty or negative", b.Symbol, b.Interval, b.Page, b.From, b.Until)
		}
		if n := len(b.Candles); n > 0 && (b.Candles[0].OpenTime < b.From || b.Candles[n-1].OpenTime >= b.Until) {
			return Batch{}, fmt.Errorf("batch %s/%s page %d: candles outside the covered span [%d, %d)", b.Symbol, b.Interval, b.Page, b.From, b.Until)
		}
	}
	return b, nil
}

// batchJSON is a Batch whose candles are coded by hand: the writer reads
// millions of them in a backfill, and encoding/json's per-value work on
// 11-number arrays would cost more than the database upsert. Its Candles
// field shadows the Batch's.
type batchJSON struct {
	Batch
	Candles json.RawMessage `json:"candles,omitempty"`
}

// Encode returns the JSON of b, as documented in docs/messages.md.
func (b Batch) Encode() ([]byte, error) {
	h, err := json.Marshal(batchJSON{Batch: b})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(h)+16+len(b.Candles)*120)
	out = append(out, h[:len(h)-1]...)
	out = append(out, `,"candles":[`...)
	for i, c := range b.Candles {
		if i > 0 {
			out = append(out, ',')
		}
		if out, err = c.AppendJSON(out); err != nil {
			return nil, err
		}
	}
	return append(out, "]}"...), nil
}

// unmarshalBatch is json.Unmarshal for a Batch, with the candles parsed by
// Candle.UnmarshalJSON directly.
func unmarshalBatch(data []byte) (Batch, error) {
	var raw batchJSON
	// Fast path for the layout Encode writes: the header, then the candles
	// last. The header is decoded as JSON, the candles by the strict parser
	// below, so together they are checked as fully as encoding/json would.
	data = bytes.TrimSpace(data)
	if i := bytes.LastIndex(data, []byte(`,"candles":[`)); i > 0 && bytes.HasSuffix(data, []byte("]}")) {
		head := append(append(make([]byte, 0, i+1), data[:i]...), '}')
		if err := json.Unmarshal(head, &raw.Batch); err == nil {
			raw.Candles = data[i+len(`,"candles":`) : len(data)-1]
		} else {
			raw.Candles = nil
		}
	}
	if raw.Candles == nil {
		if err := json.Unmarshal(data, &raw); err != nil {
			return Batch{}, err
		}
	}
	b := raw.Batch
	b.Candles = nil
	rest := bytes.TrimSpace(raw.Candles)
	if len(rest) == 0 || string(rest) == "null" {
		return b, nil
	}
	if rest[0] != '[' || rest[len(rest)-1] != ']' {
		return Batch{}, errors.New("candles must be a JSON array")
	}
	rest = bytes.TrimSpace(rest[1 : len(rest)-1])
	b.Candles = make([]Candle, 0, bytes.Count(rest, []byte{']'}))
	for len(rest) > 0 {
		end := bytes.IndexByte(rest, ']')
		if end < 0 {
			return Batch{}, errCandleShape
		}
		var c Candle
		if err := c.UnmarshalJSON(rest[:end+1]); err != nil {
			return Batch{}, fmt.Errorf("candle %d: %w", len(b.Candles), err)
		}
		b.Candles = append(b.Candles, c)
		rest = bytes.TrimSpace(rest[end+1:])
		if len(rest) > 0 {
			if rest[0] != ',' {
				return Batch{}, fmt.Errorf("candle %d: expected ',' between candles", len(b.Candles))
			}
			rest = bytes.TrimSpace(rest[1:])
			if len(rest) == 0 {
				return Batch{}, errors.New("candles: trailing ','")
			}
		}
	}
	return b, nil
}

// CoverageRequest asks the writer what it holds for some pairs (all stored
// pairs when Pairs is empty). Gaps asks for the holes too (a scan of the
// pair's rows, so only when needed: the gap audit and `candlekeep coverage`).
type CoverageRequest struct {
	Pairs []Pair `json:"pairs,omitempty"`
	Gaps  bool   `json:"gaps,omitempty"`
}

// PairCoverage is what the database holds for one pair. First and Last are
// open times in ms; both are zero when the pair has no candles. Expected is
// the number of candles in [First, Last] (see ExpectedFrom); Expected - Count - the slots of
// KnownGaps is the number of candles missing. Missing lists the holes (only
// when the request asked for Gaps); KnownGaps the spans the exchange does not
// serve. LastSync is when a run last completed the pair. ExpectedFrom, set
// only when it is before First (or the pair has no candles), is where the
// pair's history should start: the earliest start a request asked for, a
// request from "listing" resolved to the exchange's first candle; Expected
// and Missing then count from it, so a pair missing its early history is
// not complete.
type PairCoverage struct {
	Symbol       string `json:"symbol"`
	Interval     string `json:"interval"`
	First        int64  `json:"first_open_time"`
	Last         int64  `json:"last_open_time"`
	ExpectedFrom int64  `json:"expected_from,omitempty"`
	// ListingPending: a run fetching the pair from its listing has not
	// had its first page applied (it may be in flight, or lost with a
	// replaced stream), so where the history starts is not known and
	// the pair is not complete; the next sync fetches it from the listing.
	ListingPending bool      `json:"listing_pending,omitempty"`
	Count          int64     `json:"count"`
	Expected       int64     `json:"expected"`
	KnownGaps      []Range   `json:"known_gaps,omitempty"`
	Missing        []Range   `json:"missing,omitempty"`
	LastSync       time.Time `json:"last_sync,omitzero"`
}

// ReplayRequest asks the writer to re-apply CANDLES to the database from a
// time (Since, RFC 3339) or a stream sequence (FromSeq), optionally only for
// some symbols. Exactly one of Since and FromSeq is given.
type ReplayRequest struct {
	Since   string   `json:"since,omitempty"`
	FromSeq uint64   `json:"from_seq,omitempty"`
	Symbols []string `json:"symbols,omitempty"`
}

// ReplayResponse is the reply of candles.api.replay.
type ReplayResponse struct {
	FromSeq  uint64 `json:"from_seq"`
	ToSeq    uint64 `json:"to_seq"`
	Batches  int    `json:"batches"`
	Candles  int64  `json:"candles"`
	Inserted int64  `json:"inserted"`
	Updated  int64  `json:"updated"`
	Skipped  int    `json:"skipped"` // batches of other symbols, or not decodable
}

// PairPlan is one pair of a dry run's plan.
type PairPlan struct {
	Symbol   string  `json:"symbol"`
	Interval string  `json:"interval"`
	From     int64   `json:"from"`
	Until    int64   `json:"until"`
	Repair   []Range `json:"repair,omitempty"`
	Candles  int64   `json:"candles"`  // candle slots in the ranges
	Requests int     `json:"requests"` // klines requests expected
}

// SyncPlan is the reply of candles.api.sync to a dry run.
type SyncPlan struct {
	DryRun       bool       `json:"dry_run"`
	Pairs        []PairPlan `json:"pairs"`
	Requests     int        `json:"requests"`
	Weight       int        `json:"weight"`
	WeightLimit  int        `json:"weight_limit"`
	WeightWindow string     `json:"weight_window"`
	// RequestSeconds is the klines round trip the estimate assumes: the
	// fetcher's moving average of measured ones, or a default before any.
	RequestSeconds  float64 `json:"request_seconds"`
	EstimatedSecond float64 `json:"estimated_seconds"`
	// Notes say where the plan differs from the request, as sync.started
	// would (a start before the exchange's first candles, say).
	Notes []string `json:"notes,omitempty"`
}

// CoverageResponse is the reply of candles.api.coverage.
type CoverageResponse struct {
	Pairs []PairCoverage `json:"pairs"`
	// FullAuditDue, when set, is since when a gap audit over the full
	// range of every pair is due: a stream was replaced and batches the
	// database never applied may be gone. The next run that completes
	// with every pair ok clears it.
	FullAuditDue time.Time `json:"full_audit_due,omitzero"`
}

// Headers candlekeep sets on messages.
const (
	// HeaderRunID carries the run_id chosen by candles.api.sync.
	HeaderRunID = "Candlekeep-Run-Id"
)
