package store

import "time"

// Applied is the outcome of ApplyBatch.
type Applied struct {
	// Skipped: the sequence was at or below the watermark; nothing changed.
	Skipped bool
	// Inserted, Updated and Unchanged count the batch's candles by what the
	// upsert did to their rows.
	Inserted, Updated, Unchanged int
	// GapsRecorded counts the candle slots of the batch's covered span
	// newly recorded as known gaps; GapsFilled the known-gap slots the
	// batch's candles filled.
	GapsRecorded, GapsFilled int
	// PairCandles is the number of candles the batch's run has written for
	// the batch's pair so far, this batch included (0 without a run_id).
	PairCandles int64
	// RunComplete: this batch resolved the last pending pair of its run.
	RunComplete bool
}

// Progress is how far an unfinished run has got.
type Progress struct {
	RunID      string
	PairsTotal int
	PairsDone  int // ok or failed
	Candles    int64
	StartedAt  time.Time
	Deadline   time.Time // zero: none
}
