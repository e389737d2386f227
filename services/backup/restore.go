package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/store"
)

// Restore triggers, as events and logs name them.
const (
	ReasonRequest = "request"
	ReasonAuto    = "auto-restore"
)

// DefaultReplayTimeout bounds how long a restore follows the writer's
// replay of CANDLES before it reports (the replay goes on regardless).
const DefaultReplayTimeout = 10 * time.Minute

// swapTimeout bounds the writer's swap: a pause at a batch boundary, two
// renames and an open.
const swapTimeout = 2 * time.Minute

// RestoreRequest is the body of candles.api.restore (all optional).
type RestoreRequest struct {
	// From is a tier ("hot", "warm", "cold") or the path of a copy (its
	// .db.zst, with the manifest beside it); empty: every tier, hot first.
	From string `json:"from,omitempty"`
	// At restores the newest copy taken at or before At (zero: newest).
	At time.Time `json:"at,omitzero"`
	// Reason is recorded in the events (default "request").
	Reason string `json:"reason,omitempty"`
	// Incident names the integrity.failed an automatic restore answers.
	Incident string `json:"incident,omitempty"`
	// StartedAt is when the need was detected (zero: now); the RTO is
	// measured from it.
	StartedAt time.Time `json:"started_at,omitzero"`
}

// RestoreReport is the outcome of a restore: the reply of
// candles.api.restore and the content of restore.completed/failed.
type RestoreReport struct {
	OK bool `json:"ok"`
	candles.Recovery
	candles.RestoreDetail
}

// candidate is a copy a restore may use.
type candidate struct {
	tier Tier
	c    Copy
}

// ErrNoValidCopy: no copy anywhere verified; nothing was changed.
var ErrNoValidCopy = errors.New("no valid copy to restore")

// candidates lists the complete copies to try, newest first within each
// tier and tiers in order (hot, warm, cold), and the incomplete ones as
// skipped.
func (s *Service) candidates(ctx context.Context, from string, at time.Time) ([]candidate, []candles.SkippedCopy, error) {
	var tiers []Tier
	var only string // a single object of a path
	switch {
	case from == "":
		for _, tc := range s.o.Tiers {
			tiers = append(tiers, tc.Tier)
		}
	case from == TierHot || from == TierWarm || from == TierCold:
		for _, tc := range s.o.Tiers {
			if tc.Tier.Name() == from {
				tiers = append(tiers, tc.Tier)
			}
		}
		if len(tiers) == 0 {
			return nil, nil, fmt.Errorf("--from %s: that tier is not configured on the backup service", from)
		}
	default:
		if s.o.PathTier == nil {
			return nil, nil, fmt.Errorf("--from %s: restoring from a path is not available", from)
		}
		t, err := s.o.PathTier(filepath.Dir(from))
		if err != nil {
			return nil, nil, fmt.Errorf("--from %s: %w", from, err)
		}
		tiers, only = []Tier{t}, filepath.Base(from)
	}
	var out []candidate
	var skipped []candles.SkippedCopy
	for _, t := range tiers {
		copies, err := List(ctx, t)
		if err != nil {
			// A tier that cannot be listed (S3 down) is reported and the
			// next one tried.
			skipped = append(skipped, candles.SkippedCopy{Tier: t.Name(), Reason: "cannot list: " + err.Error()})
			continue
		}
		sort.Slice(copies, func(i, j int) bool { return copies[i].CreatedAt().After(copies[j].CreatedAt()) })
		for _, c := range copies {
			if only != "" && c.Name != only {
				continue
			}
			if !at.IsZero() && c.CreatedAt().After(at) {
				continue
			}
			if !c.Complete() {
				skipped = append(skipped, candles.SkippedCopy{Tier: t.Name(), Name: c.Name, Reason: c.Problem})
				continue
			}
			out = append(out, candidate{tier: t, c: c})
		}
	}
	if only != "" && len(out) == 0 && len(skipped) == 0 {
		return nil, nil, fmt.Errorf("--from %s: no candlekeep copy of that name there (want a *.db.zst with its manifest)", from)
	}
	return out, skipped, nil
}

// prepare fetches the first candidate that verifies into path: stored
// object's sha256, the database's sha256 and PRAGMA integrity_check on
// the result. Copies that fail are reported and skipped.
func (s *Service) prepare(ctx context.Context, cands []candidate, path string, log func(candles.SkippedCopy)) (*candidate, []candles.SkippedCopy) {
	var skipped []candles.SkippedCopy
	for i := range cands {
		cd := &cands[i]
		removeDB(path)
		err := Fetch(ctx, cd.tier, *cd.c.Manifest, path)
		if err == nil {
			err = checkDatabase(ctx, path, cd.c.Manifest.Watermark)
		}
		if err == nil {
			return cd, skipped
		}
		removeDB(path)
		if ctx.Err() != nil {
			return nil, skipped
		}
		sk := candles.SkippedCopy{Tier: cd.tier.Name(), Name: cd.c.Name, Reason: err.Error()}
		skipped = append(skipped, sk)
		log(sk)
	}
	return nil, skipped
}

// checkDatabase runs integrity_check on the restored file and checks its
// watermark is the manifest's.
func checkDatabase(ctx context.Context, path string, want uint64) error {
	st, err := store.OpenReadOnly(ctx, path)
	if err != nil {
		return fmt.Errorf("open restored copy: %w", err)
	}
	defer st.Close()
	if err := st.Verify(ctx, "integrity_check"); err != nil {
		return fmt.Errorf("restored copy: %w", err)
	}
	wm, err := st.Watermark(ctx, candles.StreamCandles)
	if err != nil {
		return fmt.Errorf("restored copy: %w", err)
	}
	if wm != want {
		return fmt.Errorf("restored copy has watermark %d, manifest says %d", wm, want)
	}
	return nil
}

// Restore puts the newest copy that verifies in place of the live
// database under the running writer (candles.api.writer.swap), follows
// the writer's replay of CANDLES from the copy's watermark, asks for a
// gap-audit sync and publishes restore.completed, or restore.failed with
// the live database untouched when no copy verifies. One restore or
// backup runs at a time.
func (s *Service) Restore(ctx context.Context, req RestoreRequest) (RestoreReport, error) {
	s.run.Lock()
	defer s.run.Unlock()
	now := s.o.Now()
	if req.StartedAt.IsZero() {
		req.StartedAt = now
	}
	if req.Reason == "" {
		req.Reason = ReasonRequest
	}
	rep := RestoreReport{Recovery: candles.Recovery{StartedAt: req.StartedAt.UTC()},
		RestoreDetail: candles.RestoreDetail{Reason: req.Reason, Incident: req.Incident}}
	log := s.log.With("reason", req.Reason)
	s.publish(ctx, &candles.RestoreStarted{EventHeader: candles.NewHeader(candles.KindRestoreStarted, ""), RestoreDetail: rep.RestoreDetail})
	fail := func(err error) (RestoreReport, error) {
		rep.Error = err.Error()
		rep.FinishedAt = s.o.Now().UTC()
		rep.RTOSeconds = rep.FinishedAt.Sub(rep.StartedAt).Seconds()
		log.Error("restore failed", "err", err, "skipped", len(rep.Skipped))
		s.publish(ctx, &candles.RestoreFailed{EventHeader: candles.NewHeader(candles.KindRestoreFailed, ""),
			Recovery: rep.Recovery, RestoreDetail: rep.RestoreDetail})
		return rep, err
	}
	if s.js == nil {
		return fail(errors.New("restore: no NATS connection to reach the writer"))
	}
	cands, skipped, err := s.candidates(ctx, req.From, req.At)
	rep.Skipped = skipped
	if err != nil {
		return fail(err)
	}
	dir := filepath.Dir(s.o.Database)
	prepared := filepath.Join(dir, ".restore-"+filepath.Base(s.o.Database))
	chosen, bad := s.prepare(ctx, cands, prepared, func(sk candles.SkippedCopy) {
		log.Warn("copy does not verify: skipped, trying the next", "tier", sk.Tier, "copy", sk.Name, "problem", sk.Reason)
	})
	rep.Skipped = append(rep.Skipped, bad...)
	if chosen == nil {
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		what := "every tier"
		if req.From != "" {
			what = req.From
		}
		return fail(fmt.Errorf("%w in %s (%d skipped: corrupt, truncated, tampered or incomplete): the current database %s was left in place",
			ErrNoValidCopy, what, len(rep.Skipped), s.o.Database))
	}
	m := chosen.c.Manifest
	rep.Tier, rep.Backup, rep.BackupTakenAt = chosen.tier.Name(), m.Name, m.CreatedAt
	rep.AgeSeconds = now.Sub(m.CreatedAt).Seconds()
	rep.Watermark = m.Watermark
	log = log.With("tier", rep.Tier, "copy", m.Name, "watermark", m.Watermark)
	log.Info("copy verified; asking the writer to swap it in")

	swap, err := s.swap(ctx, prepared, req.Reason+" "+m.Name)
	if err != nil {
		removeDB(prepared)
		return fail(err)
	}
	rep.MovedAside = swap.MovedAside
	s.measureLoss(ctx, m, &rep)
	replayedTo, count, err := s.followReplay(ctx, swap.StreamLast)
	rep.ReplayedTo = replayedTo
	if replayedTo > m.Watermark {
		rep.BatchesReplayed = replayedTo - m.Watermark
	}
	rep.CandlesReplayed = count - m.Candles
	if err != nil {
		return fail(fmt.Errorf("the copy is in place (previous file at %s) but the replay did not catch up: %w", swap.MovedAside, err))
	}
	rep.FinishedAt = s.o.Now().UTC()
	rep.RTOSeconds = rep.FinishedAt.Sub(rep.StartedAt).Seconds()
	rep.SyncRunID = s.gapAudit(ctx, req.Reason)
	rep.OK = true
	log.Info("restore completed", "moved_aside", swap.MovedAside, "replayed_to", replayedTo,
		"batches_replayed", rep.BatchesReplayed, "rto_seconds", rep.RTOSeconds, "skipped", len(rep.Skipped))
	s.publish(ctx, &candles.RestoreCompleted{EventHeader: candles.NewHeader(candles.KindRestoreCompleted, ""),
		Recovery: rep.Recovery, RestoreDetail: rep.RestoreDetail})
	return rep, nil
}

// measureLoss finds the batches after the copy's watermark that CANDLES no
// longer holds: they cannot be replayed, only fetched again (the gap
// audit). RPOSeconds is the span from the copy to the oldest batch the
// stream still has (0 when it has every batch after the copy).
func (s *Service) measureLoss(ctx context.Context, m *Manifest, rep *RestoreReport) {
	stream, err := s.js.Stream(ctx, candles.StreamCandles)
	if err != nil {
		return
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return
	}
	st := info.State
	switch {
	case st.Msgs == 0 && st.LastSeq > m.Watermark:
		rep.BatchesNotInStream = st.LastSeq - m.Watermark
		rep.RPOSeconds = s.o.Now().Sub(m.CreatedAt).Seconds()
	case st.Msgs > 0 && st.FirstSeq > m.Watermark+1:
		rep.BatchesNotInStream = st.FirstSeq - m.Watermark - 1
		if first, err := stream.GetMsg(ctx, st.FirstSeq); err == nil {
			rep.RPOSeconds = max(0, first.Time.Sub(m.CreatedAt).Seconds())
		}
	}
	if rep.BatchesNotInStream > 0 {
		s.log.Warn("CANDLES no longer holds every batch after the copy: they are fetched again from the exchange by the gap-audit sync",
			"batches", rep.BatchesNotInStream, "copy_watermark", m.Watermark, "stream_first", st.FirstSeq)
	}
}

// swap asks the writer lease holder to put prepared in place.
func (s *Service) swap(ctx context.Context, prepared, reason string) (candles.SwapResult, error) {
	data, err := json.Marshal(candles.SwapRequest{Restored: prepared, Reason: reason})
	if err != nil {
		return candles.SwapResult{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, swapTimeout)
	defer cancel()
	// The writer may be between lease holders or restarting: ask again
	// until it answers.
	for {
		msg, err := s.o.Conn.RequestWithContext(rctx, candles.SubjectAPIWriterSwap, data)
		if err != nil {
			if rctx.Err() != nil {
				return candles.SwapResult{}, fmt.Errorf("no writer answered %s: %w (is the writer running?)", candles.SubjectAPIWriterSwap, err)
			}
			sleep(rctx, 500*time.Millisecond)
			continue
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			return candles.SwapResult{}, fmt.Errorf("the writer refused the swap (%s): %s", code, msg.Header.Get(micro.ErrorHeader))
		}
		var res candles.SwapResult
		if err := json.Unmarshal(msg.Data, &res); err != nil {
			return candles.SwapResult{}, fmt.Errorf("swap reply: %w", err)
		}
		return res, nil
	}
}

// followReplay reads the live database's CANDLES watermark until it
// reaches target (the stream's last sequence at the swap), and returns it
// with the candle count then.
func (s *Service) followReplay(ctx context.Context, target uint64) (uint64, int64, error) {
	deadline := time.Now().Add(s.o.ReplayTimeout)
	var wm uint64
	for {
		st, err := store.OpenReadOnly(ctx, s.o.Database)
		if err == nil {
			wm, err = st.Watermark(ctx, candles.StreamCandles)
			if err == nil && wm >= target {
				stats, serr := st.Stats(ctx)
				st.Close()
				if serr != nil {
					return wm, 0, serr
				}
				return wm, stats.Candles, nil
			}
			st.Close()
		}
		if time.Now().After(deadline) {
			return wm, 0, fmt.Errorf("watermark %d after %s, want %d", wm, s.o.ReplayTimeout, target)
		}
		if ctx.Err() != nil {
			return wm, 0, ctx.Err()
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// gapAudit asks candles.api.sync for a gap audit (no start: every stored
// pair from its newest candle, and the known gaps), so what CANDLES no
// longer holds is fetched again. A missing fetcher is logged, not fatal:
// the next scheduled sync does the same.
func (s *Service) gapAudit(ctx context.Context, reason string) string {
	data, _ := json.Marshal(candles.SyncRequest{Reason: "restore: " + reason})
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	msg, err := s.o.Conn.RequestWithContext(rctx, candles.SubjectAPISync, data)
	if err != nil {
		s.log.Warn("gap-audit sync after the restore not requested; the next scheduled sync makes up for it", "err", err)
		return ""
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		s.log.Warn("gap-audit sync after the restore refused", "code", code, "err", msg.Header.Get(micro.ErrorHeader))
		return ""
	}
	var r struct {
		RunID string `json:"run_id"`
	}
	_ = json.Unmarshal(msg.Data, &r)
	s.log.Info("gap-audit sync requested after the restore", "run_id", r.RunID)
	return r.RunID
}

func (s *Service) handleRestore(ctx context.Context, req micro.Request) {
	var r RestoreRequest
	if data := strings.TrimSpace(string(req.Data())); data != "" {
		if err := json.Unmarshal(req.Data(), &r); err != nil {
			req.Error("400", "restore: want a JSON RestoreRequest or an empty body: "+err.Error(), nil)
			return
		}
	}
	rep, err := s.Restore(ctx, r)
	if err != nil && rep.Error == "" {
		rep.Error = err.Error()
	}
	if err := req.RespondJSON(rep); err != nil {
		s.log.Warn("answer restore request", "err", err)
	}
}
