package fetcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// maxDeliveriesSubject is where JetStream announces a job whose deliveries
// ran out: every delivery ended without the handler deciding (a fetcher
// crashed or stopped each time, or bans and shutdowns used them up).
const maxDeliveriesSubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + candles.StreamJobs + "." + JobConsumer

// maxDeliveriesAdvisory is the part of the server's
// io.nats.jetstream.advisory.v1.max_deliver advisory the fetcher reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// watchMaxDeliveries turns every max-deliveries advisory of the job
// consumer into pair.failed until ctx ends, so no job is lost silently.
// Every fetcher hears each advisory; the event's message id makes them
// publish it once, and the first to delete the job wins.
func (f *Fetcher) watchMaxDeliveries(ctx context.Context) error {
	ch := make(chan *nats.Msg, 64)
	sub, err := f.o.Conn.ChanSubscribe(maxDeliveriesSubject, ch)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", maxDeliveriesSubject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			var adv maxDeliveriesAdvisory
			if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
				f.log.Warn("unreadable max-deliveries advisory; ignored", "data", string(m.Data), "err", err)
				continue
			}
			if err := f.jobExhausted(ctx, adv); err != nil && ctx.Err() == nil {
				f.log.Error("job out of deliveries not settled", "stream_seq", adv.StreamSeq, "err", err)
			}
		}
	}
}

// jobExhausted ends a job whose deliveries ran out: pair.failed naming the
// last error its checkpoint recorded, then the job and its checkpoint
// deleted. Idempotent: a job already gone was handled by another fetcher.
func (f *Fetcher) jobExhausted(ctx context.Context, adv maxDeliveriesAdvisory) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := f.js.Stream(ctx, candles.StreamJobs)
	if err != nil {
		return fmt.Errorf("stream %s: %w", candles.StreamJobs, err)
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load job %d: %w", adv.StreamSeq, err)
	}
	log := f.log.With("stream_seq", adv.StreamSeq)
	job, err := decodeJob(raw.Data)
	if err != nil {
		log.Error("malformed job out of deliveries; deleted", "err", err)
		return deleteJob(ctx, stream, adv.StreamSeq)
	}
	log = log.With("run_id", job.RunID, "symbol", job.Symbol, "interval", job.Interval)
	cause := "no delivery finished (the fetcher stopped or crashed each time)"
	if cp, found, err := f.progress.load(ctx, job); err == nil && found && cp.LastError != "" {
		cause = cp.LastError
	}
	reason := fmt.Sprintf("gave up after %d deliveries: %s", adv.Deliveries, cause)
	log.Error("pair failed", "reason", reason, "attempts", adv.Deliveries)
	ev := &candles.PairFailed{EventHeader: candles.NewHeader(candles.KindPairFailed, job.RunID),
		Symbol: job.Symbol, Interval: job.Interval, Reason: reason}
	if err := candles.PublishEvent(ctx, f.js, ev, pairFailedID(job), f.o.Now()); err != nil {
		return err // the job stays; the next advisory or an operator sees it
	}
	if err := deleteJob(ctx, stream, adv.StreamSeq); err != nil {
		return err
	}
	if err := f.progress.remove(ctx, job); err != nil {
		log.Warn("checkpoint left to expire", "err", err)
	}
	return nil
}

func deleteJob(ctx context.Context, stream jetstream.Stream, seq uint64) error {
	if err := stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) &&
		!errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
		return fmt.Errorf("delete job %d: %w", seq, err)
	}
	return nil
}

// pairFailedID is the message id of a pair's pair.failed event in a run:
// whoever decides first, the event is stored once.
func pairFailedID(job candles.Job) string {
	return "pair.failed:" + job.RunID + ":" + job.Symbol + ":" + job.Interval
}
