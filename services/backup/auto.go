package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Automatic recovery: the backup service consumes integrity.failed and
// restores once per incident. An incident is the damaged file and the time
// the damage was detected; its state is kept in a KV bucket so a restart
// (or a second backup service) does not restore it twice.
const (
	consumerAuto = "backup-auto-restore"
	// IncidentsBucket keeps one key per incident: "started", "completed",
	// "failed" or "alerted" (auto-restore off).
	IncidentsBucket = "candlekeep_incidents"
	// autoAckWait covers a restore and its replay: a service that dies in
	// the middle gets the event again and finishes the job.
	autoAckWait = 30 * time.Minute
	// autoLookback: at first start, integrity.failed events this recent
	// are still acted on (damage found while the service was starting).
	autoLookback = time.Hour
)

// Incident states in IncidentsBucket.
const (
	IncidentStarted   = "started"
	IncidentCompleted = "completed"
	IncidentFailed    = "failed"
	IncidentAlerted   = "alerted"
	IncidentSound     = "sound" // the database in use was not damaged any more
)

// IncidentKey is the KV key of the incident of ev.
func IncidentKey(ev candles.IntegrityFailed) string {
	sum := sha256.Sum256([]byte(ev.Database + "|" + ev.DetectedAt.UTC().Format(time.RFC3339Nano)))
	return "incident_" + hex.EncodeToString(sum[:16])
}

// autoConsumer creates the durable consumer of integrity.failed, starting
// autoLookback ago the first time (a consumer's start cannot be changed:
// an existing one is used as it is).
func (s *Service) autoConsumer(ctx context.Context) (jetstream.Consumer, error) {
	if cons, err := s.js.Consumer(ctx, candles.StreamEvents, consumerAuto); err == nil {
		return cons, nil
	}
	start := s.o.Now().Add(-autoLookback)
	cons, err := s.js.CreateOrUpdateConsumer(ctx, candles.StreamEvents, jetstream.ConsumerConfig{
		Durable:       consumerAuto,
		Description:   "candlekeep-backup: automatic restore on integrity.failed",
		FilterSubject: candles.EventSubject(candles.KindIntegrityFailed),
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       autoAckWait,
		MaxAckPending: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("backup: consumer %s on %s: %w", consumerAuto, candles.StreamEvents, err)
	}
	return cons, nil
}

// autoRestore handles integrity.failed events until ctx ends.
func (s *Service) autoRestore(ctx context.Context, cons jetstream.Consumer) error {
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      IncidentsBucket,
		Description: "candlekeep-backup: automatic restores, one key per integrity.failed incident",
		History:     1,
		TTL:         90 * 24 * time.Hour,
		Replicas:    max(s.o.Streams.Replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("backup: incidents bucket: %w", err)
	}
	for ctx.Err() == nil {
		if cons == nil {
			// EVENTS or the consumer was deleted: EVENTS belongs to the
			// writer, which makes it again and says so; once it is back
			// the consumer is made again, from autoLookback ago, so
			// damage reported meanwhile is still acted on.
			if cons, err = s.autoConsumer(ctx); err != nil {
				cons = nil
				if ctx.Err() == nil {
					s.log.Warn("cannot recreate the auto-restore consumer; retrying", "err", err)
					sleep(ctx, time.Second)
				}
				continue
			}
			s.log.Warn("auto-restore consumer recreated", "consumer", consumerAuto)
		}
		it, err := cons.Messages()
		if err != nil {
			return fmt.Errorf("backup: consume %s: %w", consumerAuto, err)
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			msg, err := it.Next()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					break
				}
				if _, cerr := s.js.Consumer(ctx, candles.StreamEvents, consumerAuto); errors.Is(cerr, jetstream.ErrConsumerNotFound) ||
					errors.Is(cerr, jetstream.ErrStreamNotFound) {
					cons = nil
					break
				}
				sleep(ctx, 200*time.Millisecond)
				continue
			}
			s.onIntegrityFailed(ctx, kv, msg.Data())
			if err := msg.Ack(); err != nil {
				s.log.Warn("ack integrity.failed", "err", err)
			}
		}
		stop()
		it.Stop()
	}
	return nil
}

// onIntegrityFailed restores once for the incident of data, or only logs
// with --auto-restore=false.
func (s *Service) onIntegrityFailed(ctx context.Context, kv jetstream.KeyValue, data []byte) {
	var ev candles.IntegrityFailed
	if err := json.Unmarshal(data, &ev); err != nil || ev.DetectedAt.IsZero() {
		s.log.Warn("integrity.failed that does not decode: ignored", "err", err)
		return
	}
	key := IncidentKey(ev)
	log := s.log.With("incident", key, "database", ev.Database, "detected_at", ev.DetectedAt, "check", ev.Check)
	e, err := kv.Get(ctx, key)
	if err == nil && string(e.Value()) != IncidentStarted {
		log.Info("integrity.failed already handled", "state", string(e.Value()))
		return
	}
	if !s.o.AutoRestore {
		_, _ = kv.Put(ctx, key, []byte(IncidentAlerted))
		log.Error("database damaged; automatic restore is off (--auto-restore=false): restore by hand with `candlekeep restore`")
		return
	}
	if !s.stillDamaged(ctx) {
		_, _ = kv.Put(ctx, key, []byte(IncidentSound))
		log.Info("integrity.failed, but the writer's database is sound now (restored or replaced already): nothing to do")
		return
	}
	// Claim the incident: a create, or an update at the revision read for
	// one left "started" by a service that died; of two backup services
	// only one wins.
	if err == nil {
		_, err = kv.Update(ctx, key, []byte(IncidentStarted), e.Revision())
	} else {
		_, err = kv.Create(ctx, key, []byte(IncidentStarted))
	}
	if err != nil {
		log.Info("integrity.failed taken by another backup service, or not recorded: not restoring twice", "err", err)
		return
	}
	log.Warn("database damaged: restoring the newest verified copy by itself (--auto-restore)")
	rep, err := s.Restore(ctx, RestoreRequest{Reason: ReasonAuto, Incident: ev.Database + " " + ev.DetectedAt.UTC().Format(time.RFC3339Nano),
		StartedAt: ev.DetectedAt})
	state := IncidentCompleted
	if err != nil {
		state = IncidentFailed
		log.Error("automatic restore failed; restore by hand (docs/backup.md)", "err", err)
	} else {
		log.Info("automatic restore completed", "copy", rep.Backup, "tier", rep.Tier, "rto_seconds", rep.RTOSeconds)
	}
	if _, err := kv.Put(context.WithoutCancel(ctx), key, []byte(state)); err != nil {
		log.Warn("record the incident", "err", err)
	}
}

// stillDamaged asks the writer (candles.api.database) whether its
// database is damaged now. An answer with an error other than a pause (the
// file cannot even be measured: deleted, say) counts as damaged, and so
// does no answer: the restore then says why it cannot reach the writer.
func (s *Service) stillDamaged(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		msg, err := s.o.Conn.RequestWithContext(rctx, candles.SubjectAPIDatabase, nil)
		if err == nil {
			switch code := msg.Header.Get(micro.ErrorCodeHeader); code {
			case "":
				var h candles.DatabaseHealth
				if json.Unmarshal(msg.Data, &h) == nil {
					return h.Damaged != nil
				}
				return true
			case "503": // paused for another restore, or stopping: ask again
			default:
				s.log.Info("the writer cannot report its database; taking it as damaged", "code", code, "err", msg.Header.Get(micro.ErrorHeader))
				return true
			}
		}
		if rctx.Err() != nil {
			return true
		}
		sleep(rctx, 500*time.Millisecond)
	}
}
