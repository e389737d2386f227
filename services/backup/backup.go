package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// Service takes backups and keeps each tier within its retention.
type Service struct {
	o   Options
	log *slog.Logger
	js  jetstream.JetStream // nil without Conn

	// run serialises backups: one snapshot at a time.
	run sync.Mutex

	mu          sync.Mutex
	lastAttempt time.Time // start of the last backup, for the debounce
	pendingSync bool      // a sync.completed waits for the debounce
	// pendingSchedule: a schedule tick waits for the running backup.
	pendingSchedule bool
	syncSeen        int // sync.completed events taken in (tests, logs)
	// pendingDrill: a drill schedule tick waits for the running backup.
	pendingDrill bool
	kick         chan struct{}
	requests     chan request
}

// New checks o and builds the service.
func New(o Options) (*Service, error) {
	if o.ScratchDir == "" && o.Database != "" {
		o.ScratchDir = filepath.Join(filepath.Dir(o.Database), "backups", ".scratch")
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{o: o, log: o.Logger, kick: make(chan struct{}, 1), requests: make(chan request)}
	if o.Conn != nil {
		js, err := jetstream.New(o.Conn)
		if err != nil {
			return nil, fmt.Errorf("backup: jetstream: %w", err)
		}
		s.js = js
	}
	return s, nil
}

// Report is the outcome of one backup: the reply of candles.api.backup.
type Report struct {
	// Name is the data object's name in every tier.
	Name      string    `json:"name,omitempty"`
	Trigger   string    `json:"trigger"`
	TakenAt   time.Time `json:"taken_at"`
	Watermark uint64    `json:"watermark"`
	Candles   int64     `json:"candles"`
	DBBytes   int64     `json:"db_bytes"`
	// Error is set when no snapshot could be taken (then every tier failed).
	Error string       `json:"error,omitempty"`
	Tiers []TierResult `json:"tiers"`
}

// OK: every tier has a verified copy.
func (r Report) OK() bool {
	if r.Error != "" || len(r.Tiers) == 0 {
		return false
	}
	for _, t := range r.Tiers {
		if !t.OK {
			return false
		}
	}
	return true
}

// TierResult is one tier's part of a backup.
type TierResult struct {
	Tier     string `json:"tier"`
	Location string `json:"location"`
	OK       bool   `json:"ok"`
	Bytes    int64  `json:"bytes,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Error    string `json:"error,omitempty"`
	// Pruned names the copies retention deleted after this backup.
	Pruned []string `json:"pruned,omitempty"`
}

// Backup takes one backup now and stores it in every tier: snapshot,
// integrity check, compression, then per tier the data object, its
// read-back check and the manifest, then the tier's retention. Each tier
// succeeds or fails alone, with backup.completed or backup.failed.
//
// The work runs on an OS thread of its own at the lowest CPU and I/O
// priority, so the writer keeps its pace while the whole database is read,
// checked, compressed and written.
func (s *Service) Backup(ctx context.Context, trigger string) Report {
	s.run.Lock()
	defer s.run.Unlock()
	done := make(chan Report, 1)
	go func() {
		// Never unlocked: the thread, and its lowered priority, end with
		// this goroutine.
		runtime.LockOSThread()
		lowerPriority(s.log)
		done <- s.backup(ctx, trigger)
	}()
	return <-done
}

func (s *Service) backup(ctx context.Context, trigger string) Report {
	now := s.o.Now()
	s.mu.Lock()
	s.lastAttempt = now
	s.mu.Unlock()
	rep := Report{Trigger: trigger, TakenAt: now.UTC()}
	log := s.log.With("trigger", trigger)
	snap, err := s.takeSnapshot(ctx, now)
	if err != nil {
		rep.Error = "snapshot: " + err.Error()
		log.Error("backup failed: no snapshot", "err", err)
		for _, tc := range s.o.Tiers {
			rep.Tiers = append(rep.Tiers, TierResult{Tier: tc.Tier.Name(), Location: tc.Tier.Location(), Error: rep.Error})
			s.publish(ctx, &candles.BackupFailed{EventHeader: candles.NewHeader(candles.KindBackupFailed, ""),
				Tier: tc.Tier.Name(), Reason: rep.Error})
		}
		return rep
	}
	defer os.Remove(snap.path)
	m := snap.manifest
	rep.Name, rep.Watermark, rep.Candles, rep.DBBytes = m.Name, m.Watermark, m.Candles, m.DBBytes
	log = log.With("name", m.Name, "watermark", m.Watermark)
	for _, tc := range s.o.Tiers {
		res := TierResult{Tier: tc.Tier.Name(), Location: tc.Tier.Location()}
		if err := s.store(ctx, tc.Tier, snap); err != nil {
			res.Error = err.Error()
			log.Error("backup to tier failed; the next backup tries again", "tier", res.Tier, "location", res.Location, "err", err)
			s.publish(ctx, &candles.BackupFailed{EventHeader: candles.NewHeader(candles.KindBackupFailed, ""),
				Tier: res.Tier, Reason: res.Error})
		} else {
			res.OK, res.Bytes, res.SHA256 = true, m.Bytes, m.SHA256
			log.Info("backup stored and verified", "tier", res.Tier, "location", res.Location, "bytes", m.Bytes, "candles", m.Candles)
			s.publish(ctx, &candles.BackupCompleted{EventHeader: candles.NewHeader(candles.KindBackupCompleted, ""),
				Tier: res.Tier, Location: res.Location + "/" + m.Name, Bytes: m.Bytes, SHA256: m.SHA256,
				Watermark: m.Watermark, Verified: true, TakenAt: m.CreatedAt})
		}
		pruned, err := Prune(ctx, tc.Tier, tc.Retention, s.o.Now())
		res.Pruned = pruned
		if err != nil {
			log.Warn("retention incomplete; the next backup tries again", "tier", res.Tier, "err", err)
		} else if len(pruned) > 0 {
			log.Info("retention deleted old copies", "tier", res.Tier, "copies", len(pruned), "retention", tc.Retention)
		}
		rep.Tiers = append(rep.Tiers, res)
	}
	return rep
}

// store puts the snapshot into tier: the data object, read back and
// checked against its sha256, then the manifest. Until the manifest is
// there the copy is incomplete and counts for nothing.
func (s *Service) store(ctx context.Context, tier Tier, snap *snapshot) error {
	m := snap.manifest
	f, err := os.Open(snap.path)
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	err = tier.Put(ctx, m.Name, f, m.Bytes)
	f.Close()
	if err != nil {
		return err
	}
	if err := Verify(ctx, tier, m); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	m.Tier, m.Verified, m.VerifiedAt = tier.Name(), true, s.o.Now().UTC()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if err := tier.Put(ctx, ManifestName(m.Name), bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

// publish sends an event to EVENTS; without a connection it does nothing.
// A lost event is logged, never fatal: the copy is there either way.
func (s *Service) publish(ctx context.Context, ev candles.Event) {
	if s.js == nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := candles.PublishEvent(pctx, s.js, ev, "", s.o.Now()); err != nil {
		s.log.Warn("publish event", "kind", ev.Head().Kind, "err", err)
	}
}

// Prune deletes the copies in tier whose created_at is retention old or
// older, except the newest complete copy, which stays whatever its age.
// Incomplete copies (no good manifest) are deleted once a day old or
// retention old, whichever comes first. The manifest goes first, so an
// interrupted delete leaves an incomplete copy, never a wrong one.
func Prune(ctx context.Context, tier Tier, retention time.Duration, now time.Time) ([]string, error) {
	copies, err := List(ctx, tier)
	if err != nil {
		return nil, err
	}
	newest := -1
	for i, c := range copies {
		if c.Complete() && (newest < 0 || !c.CreatedAt().Before(copies[newest].CreatedAt())) {
			newest = i
		}
	}
	var deleted []string
	var errs []error
	for i, c := range copies {
		limit := retention
		if !c.Complete() {
			limit = min(retention, incompleteGrace)
		}
		if i == newest || now.Sub(c.CreatedAt()) < limit {
			continue
		}
		if err := tier.Delete(ctx, ManifestName(c.Name)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := tier.Delete(ctx, c.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, c.Name)
	}
	return deleted, errors.Join(errs...)
}

// incompleteGrace is how long an incomplete copy (an upload that failed
// or was interrupted) is left for an operator to look at.
const incompleteGrace = 24 * time.Hour
