package candles

import (
	"encoding/json"
	"fmt"
)

// Version is the version of every message's JSON shape ("v").
const Version = 1

// Pair is one (symbol, interval) series.
type Pair struct {
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
}

func (p Pair) String() string { return p.Symbol + "/" + p.Interval }

// Job asks one fetcher to fetch one pair for a run: the candles opening in
// [From, Until), times in ms since the epoch.
type Job struct {
	V        int    `json:"v"`
	RunID    string `json:"run_id"`
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	From     int64  `json:"from"`
	Until    int64  `json:"until"`
}

// Batch is one page of closed candles for one pair, published on
// candles.batch.<interval>.<SYMBOL>. Final marks the last page of the pair in
// its run (it may be empty when there was nothing new).
type Batch struct {
	V        int      `json:"v"`
	RunID    string   `json:"run_id"`
	Symbol   string   `json:"symbol"`
	Interval string   `json:"interval"`
	Page     int      `json:"page"`
	Final    bool     `json:"final"`
	Candles  []Candle `json:"candles"`
}

// DecodeBatch parses a batch published on subject and checks it against the
// subject and the candle rules; a batch that fails can never be applied.
func DecodeBatch(subject string, data []byte) (Batch, error) {
	var b Batch
	if err := json.Unmarshal(data, &b); err != nil {
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
	return b, nil
}

// CoverageRequest asks the writer what it holds for some pairs (all stored
// pairs when Pairs is empty).
type CoverageRequest struct {
	Pairs []Pair `json:"pairs,omitempty"`
}

// PairCoverage is what the database holds for one pair. First and Last are
// open times in ms; both are zero when the pair has no candles.
type PairCoverage struct {
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	First    int64  `json:"first_open_time"`
	Last     int64  `json:"last_open_time"`
	Count    int64  `json:"count"`
}

// CoverageResponse is the reply of candles.api.coverage.
type CoverageResponse struct {
	Pairs []PairCoverage `json:"pairs"`
}

// Headers candlekeep sets on messages.
const (
	// HeaderRunID carries the run_id chosen by candles.api.sync.
	HeaderRunID = "Candlekeep-Run-Id"
)
