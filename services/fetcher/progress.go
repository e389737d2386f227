package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// ProgressBucket is the JetStream KV bucket of job checkpoints: how far each
// job in flight got, so a redelivered job resumes at the page where the last
// delivery stopped instead of fetching and publishing everything again. Key
// <run_id>.<interval>.<SYMBOL>, value a checkpoint; deleted when the job
// ends, and expired with the bucket's TTL if a fetcher could not.
//
//	nats kv ls candlekeep_job_progress
const ProgressBucket = "candlekeep_job_progress"

// progressTTL matches how long JOBS keeps a job.
const progressTTL = 24 * time.Hour

// checkpoint is the progress of one job across its deliveries.
type checkpoint struct {
	V int `json:"v"`
	// Span is the span in progress: the job's repair ranges in order, then
	// its main range.
	Span int `json:"span"`
	// From is the next open time (ms) to fetch in that span; 0 means its start.
	From int64 `json:"from"`
	// Page is the next page number; Candles the candles published so far.
	Page    int   `json:"page"`
	Candles int64 `json:"candles"`
	// Failures counts the failed attempts at the current page, each against
	// MaxDeliver (each attempt itself asked the page up to pageRetries+1
	// times); a page published resets it, and a 418 pause, a shutdown or a
	// lost lock is not the pair's failure.
	Failures  int       `json:"failures"`
	LastError string    `json:"last_error,omitempty"`
	Updated   time.Time `json:"updated"`
}

// progressStore keeps checkpoints in ProgressBucket.
type progressStore struct {
	kv jetstream.KeyValue
}

func openProgress(ctx context.Context, js jetstream.JetStream, replicas int) (*progressStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, progressConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", ProgressBucket, err)
	}
	return &progressStore{kv: bounded(kv)}, nil
}

// progressConfig is the configuration of ProgressBucket.
func progressConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      ProgressBucket,
		Description: "candlekeep: checkpoints of fetch jobs in flight; key <run_id>.<interval>.<SYMBOL>",
		TTL:         progressTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// progressKey is the key of a job's checkpoint.
func progressKey(job candles.Job) string {
	return keyToken(job.RunID) + "." + job.Interval + "." + job.Symbol
}

// keyToken makes s one token of a KV key: characters a key cannot hold,
// and the dots that separate tokens, become '_'.
func keyToken(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=':
			return r
		default:
			return '_'
		}
	}, s)
}

// load returns the job's checkpoint; found is false when it has none.
func (s *progressStore) load(ctx context.Context, job candles.Job) (cp checkpoint, found bool, err error) {
	e, err := s.kv.Get(ctx, progressKey(job))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return checkpoint{V: candles.Version}, false, nil
	}
	if err != nil {
		return checkpoint{V: candles.Version}, false, fmt.Errorf("load checkpoint %s: %w", progressKey(job), err)
	}
	if err := json.Unmarshal(e.Value(), &cp); err != nil || cp.V != candles.Version || cp.Span < 0 || cp.Page < 0 {
		return checkpoint{V: candles.Version}, false, fmt.Errorf("checkpoint %s is unreadable; starting over: %q", progressKey(job), e.Value())
	}
	return cp, true, nil
}

// save writes the job's checkpoint. One job runs at a time per pair (the
// pair lock), so a plain put is safe.
func (s *progressStore) save(ctx context.Context, job candles.Job, cp checkpoint, now time.Time) error {
	cp.V, cp.Updated = candles.Version, now.UTC()
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if _, err := s.kv.Put(ctx, progressKey(job), data); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", progressKey(job), err)
	}
	return nil
}

// remove deletes the job's checkpoint once the job has ended.
func (s *progressStore) remove(ctx context.Context, job candles.Job) error {
	if err := s.kv.Purge(ctx, progressKey(job)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("remove checkpoint %s: %w", progressKey(job), err)
	}
	return nil
}
