package writer

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// maxCoveragePairs bounds one coverage request.
const maxCoveragePairs = candles.MaxSymbols * candles.MaxIntervals

// coverageTimeout bounds the database work of one coverage request.
const coverageTimeout = 30 * time.Second

// handleCoverage answers candles.api.coverage: a CoverageRequest (an empty
// body asks for every stored pair) gets a CoverageResponse, with the missing
// ranges only when the request sets "gaps"; a bad request gets error 400
// naming the field, a database failure 500.
func (w *Writer) handleCoverage(ctx context.Context, req micro.Request) {
	r, err := DecodeCoverageRequest(req.Data())
	if err != nil {
		w.respondError(req, "400", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(ctx, coverageTimeout)
	defer cancel()
	st, release, err := w.useStore()
	if err != nil {
		w.respondError(req, "503", err.Error())
		return
	}
	cov, err := st.Coverage(ctx, r)
	var due time.Time
	if err == nil {
		due, err = st.FullAuditDue(ctx)
	}
	release()
	if w.noteErr(err) {
		w.respondError(req, "500", w.damagedErr().Error())
		return
	}
	if err != nil {
		w.log.Error("coverage", "pairs", len(r.Pairs), "gaps", r.Gaps, "err", err)
		w.respondError(req, "500", "coverage: the database could not be read; see the writer's log")
		return
	}
	if cov == nil {
		cov = []candles.PairCoverage{}
	}
	if err := req.RespondJSON(candles.CoverageResponse{Pairs: cov, FullAuditDue: due}); err != nil {
		w.log.Warn("respond to coverage request", "err", err)
	}
}

// respondError answers req with a micro error (Nats-Service-Error-Code
// code, Nats-Service-Error msg).
func (w *Writer) respondError(req micro.Request, code, msg string) {
	if err := req.Error(code, msg, nil); err != nil {
		w.log.Warn("respond with an error", "subject", req.Subject(), "code", code, "err", err)
	}
}

// DecodeCoverageRequest parses a coverage request strictly: unknown fields,
// trailing data and invalid symbols or intervals are errors that name the
// field. An empty body asks for every stored pair, without missing ranges.
func DecodeCoverageRequest(data []byte) (candles.CoverageRequest, error) {
	var r candles.CoverageRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return r, nil
	}
	if err := candles.DecodeStrict(data, &r, "pairs, gaps, and symbol and interval in each pair", coverageFieldType); err != nil {
		return candles.CoverageRequest{}, err
	}
	if len(r.Pairs) > maxCoveragePairs {
		return candles.CoverageRequest{}, fmt.Errorf("pairs: %d pairs, at most %d per request", len(r.Pairs), maxCoveragePairs)
	}
	for i, p := range r.Pairs {
		if !candles.ValidSymbol(p.Symbol) {
			return candles.CoverageRequest{}, fmt.Errorf("pairs[%d].symbol: %q is not a symbol (2-20 upper-case letters and digits, e.g. BTCUSDT)", i, p.Symbol)
		}
		if _, err := candles.ParseInterval(p.Interval); err != nil {
			return candles.CoverageRequest{}, fmt.Errorf("pairs[%d].interval: %w", i, err)
		}
	}
	return r, nil
}

func coverageFieldType(field string) string {
	switch field {
	case "":
		return `{"pairs":[{"symbol":"BTCUSDT","interval":"4h"}],"gaps":true}`
	case "gaps":
		return "true or false"
	default:
		return `pairs as a list of {"symbol":"BTCUSDT","interval":"4h"}`
	}
}
