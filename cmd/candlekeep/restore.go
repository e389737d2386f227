package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/services/backup"
)

// runRestore is `candlekeep restore`: it asks the backup service to put
// the newest verified copy in place under the running writer.
func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	fs := flagSet("restore", "candlekeep restore [--from hot|warm|cold|PATH] [--at TIME] [flags]",
		"Asks the backup service (candles.api.restore) to restore the database while\n"+
			"candlekeep runs: the newest copy that verifies (sha256 and integrity_check),\n"+
			"hot first, then warm, then cold; corrupt, truncated or tampered copies are\n"+
			"reported and skipped. The writer pauses at a batch boundary, the live file\n"+
			"(and its -wal/-shm) is moved aside to candles.db.corrupt-<time> (never\n"+
			"deleted), the copy is renamed into place, and the writer replays CANDLES\n"+
			"from the copy's watermark; then a gap-audit sync re-fetches what the stream\n"+
			"no longer holds. Exit 0 restored, 1 not restored (the database in place is\n"+
			"untouched), 2 bad flags. See docs/backup.md.", stderr)
	var nf natsFlags
	nf.register(fs)
	from := fs.String("from", "", "restore from one tier (hot, warm, cold) or the path of a copy (*.db.zst with its manifest beside it); default every tier, hot first")
	at := fs.String("at", "", "restore the newest copy taken at or before this time (RFC 3339, or 2006-01-02[T15:04] UTC); default the newest")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for the restore and the replay")
	asJSON := fs.Bool("json", false, "print the service's JSON reply")
	if code, ok := parseFlags(fs, args, getenv); !ok {
		return code
	}
	req := backup.RestoreRequest{From: *from, Reason: backup.ReasonRequest}
	if *at != "" {
		t, err := parseAt(*at)
		if err != nil {
			fmt.Fprintf(stderr, "candlekeep restore: --at %q: %v\n", *at, err)
			return 2
		}
		req.At = t
	}
	if f := *from; f != "" && f != backup.TierHot && f != backup.TierWarm && f != backup.TierCold && !strings.HasPrefix(f, "/") {
		fmt.Fprintf(stderr, "candlekeep restore: --from %q: want hot, warm, cold or an absolute path of a copy\n", f)
		return 2
	}
	rep, ok := requestRestore(ctx, &nf, req, *timeout, stderr)
	if !ok {
		return 1
	}
	if *asJSON {
		data, _ := json.Marshal(rep)
		stdout.Write(append(data, '\n'))
	}
	for _, sk := range rep.Skipped {
		fmt.Fprintf(stderr, "skipped %s %s: %s\n", sk.Tier, sk.Name, sk.Reason)
	}
	if !rep.OK {
		fmt.Fprintf(stderr, "candlekeep restore: not restored: %s\n", rep.Error)
		return 1
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "restored %s from the %s tier (taken %s ago, watermark %d)\n", rep.Backup, rep.Tier,
			age(time.Duration(rep.AgeSeconds*float64(time.Second))), rep.Watermark)
		fmt.Fprintf(stdout, "replayed %d batches from CANDLES (to %d, %d candles); RTO %.1fs\n",
			rep.BatchesReplayed, rep.ReplayedTo, rep.CandlesReplayed, rep.RTOSeconds)
		if rep.MovedAside != "" {
			fmt.Fprintf(stdout, "the previous database is kept at %s\n", rep.MovedAside)
		}
		if rep.SyncRunID != "" {
			fmt.Fprintf(stdout, "gap-audit sync %s re-fetches what the stream no longer holds\n", rep.SyncRunID)
		}
	}
	return 0
}

// requestRestore sends req to candles.api.restore.
func requestRestore(ctx context.Context, nf *natsFlags, req backup.RestoreRequest, timeout time.Duration, stderr io.Writer) (backup.RestoreReport, bool) {
	var rep backup.RestoreReport
	nc, err := nf.dial("candlekeep-restore", dialTimeout, "")
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep restore: %v\n", err)
		return rep, false
	}
	defer nc.Close()
	data, _ := json.Marshal(req)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, candles.SubjectAPIRestore, data)
	if errors.Is(err, nats.ErrNoResponders) {
		fmt.Fprintf(stderr, "candlekeep restore: no backup service answers on %s (start `candlekeep backup`, or `candlekeep up` with a backup tier)\n", candles.SubjectAPIRestore)
		return rep, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "candlekeep restore: %s: %v\n", candles.SubjectAPIRestore, err)
		return rep, false
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		fmt.Fprintf(stderr, "candlekeep restore: the backup service answered %s: %s\n", code, msg.Header.Get("Nats-Service-Error"))
		return rep, false
	}
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		fmt.Fprintf(stderr, "candlekeep restore: bad reply: %v\n", err)
		return rep, false
	}
	return rep, true
}

// parseAt reads --at: RFC 3339, or a UTC date with an optional time.
func parseAt(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			if layout == "2006-01-02" {
				t = t.Add(24*time.Hour - time.Nanosecond) // the whole day
			}
			return t, nil
		}
	}
	return time.Time{}, errors.New("want RFC 3339 (2026-12-01T02:00:00Z) or a UTC date 2026-12-01[T02:00]")
}
