package backup_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/store"
	"github.com/candlekeep/candlekeep/pkg/testclock"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/backuptest"
	"github.com/candlekeep/candlekeep/services/backup/file"
)

// threeTiers are hot and warm directories and a cold bucket on a real
// S3-protocol server.
type threeTiers struct {
	hot, warm, cold backup.Tier
	s3              *backuptest.S3
	configs         []backup.TierConfig
}

func newThreeTiers(t testing.TB, root string) threeTiers {
	srv := backuptest.StartS3(t, "candlekeep-backups")
	tt := threeTiers{
		hot:  fileTier(t, backup.TierHot, filepath.Join(root, "hot")),
		warm: fileTier(t, backup.TierWarm, filepath.Join(root, "warm")),
		cold: srv.Tier(t, "candlekeep-backups", "prod/db"),
		s3:   srv,
	}
	tt.configs = []backup.TierConfig{
		{Tier: tt.hot, Retention: backup.DefaultHotRetention},
		{Tier: tt.warm, Retention: backup.DefaultWarmRetention},
		{Tier: tt.cold, Retention: backup.DefaultColdRetention},
	}
	return tt
}

func newService(t testing.TB, o backup.Options) *backup.Service {
	t.Helper()
	s, err := backup.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func options(d *db, tiers []backup.TierConfig, now func() time.Time) backup.Options {
	o := backup.DefaultOptions()
	o.Database, o.Tiers, o.Now, o.Logger = d.path, tiers, now, testLogger()
	o.Streams.CandlesMaxAge = 30 * 24 * time.Hour
	o.Version = "test"
	return o
}

func TestBackupStoresVerifiedCopyInEveryTier(t *testing.T) {
	d := newDB(t)
	d.write(t, 20, 50)
	nc, _, ev := startNATS(t)
	tt := newThreeTiers(t, t.TempDir())
	o := options(d, tt.configs, testclock.New(t0).Now)
	o.Conn = nc
	s := newService(t, o)
	rep := s.Backup(context.Background(), backup.TriggerRequest)
	if !rep.OK() {
		t.Fatalf("report not ok: %+v", rep)
	}
	wantName := "candles-20261204T020000Z-w20.db.zst"
	if rep.Name != wantName || rep.Watermark != 20 || rep.Candles != 1000 {
		t.Fatalf("report name %s watermark %d candles %d; want %s, 20, 1000", rep.Name, rep.Watermark, rep.Candles, wantName)
	}
	for _, tier := range []backup.Tier{tt.hot, tt.warm, tt.cold} {
		copies := complete(t, tier)
		if len(copies) != 1 {
			t.Fatalf("%s: %d complete copies, want 1", tier.Name(), len(copies))
		}
		m := *copies[0].Manifest
		// The sha256 of the stored object, computed here from the tier.
		r, err := tier.Open(context.Background(), wantName)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); m.SHA256 != got || m.Bytes != n {
			t.Errorf("%s: manifest sha256 %s bytes %d, stored object %s %d", tier.Name(), m.SHA256, m.Bytes, got, n)
		}
		if m.Name != wantName || m.Tier != tier.Name() || !m.Verified || m.Watermark != 20 || m.Candles != 1000 ||
			m.Stream != "CANDLES" || m.SchemaVersion != store.SchemaVersion() || m.Compression != "zstd" ||
			m.IntegrityCheck != "ok" || m.Source != d.path || m.Version != "test" || !m.CreatedAt.Equal(t0) {
			t.Errorf("%s: manifest %+v", tier.Name(), m)
		}
		if len(m.Pairs) != 1 || m.Pairs[0].Symbol != "BTCUSDT" || m.Pairs[0].Interval != "1m" || m.Pairs[0].Count != 1000 ||
			m.Pairs[0].Last-m.Pairs[0].First != 999*60_000 {
			t.Errorf("%s: pairs %+v", tier.Name(), m.Pairs)
		}
		// The copy restores to a sound database with everything in it.
		dst := filepath.Join(t.TempDir(), "restored.db")
		if err := backup.Fetch(context.Background(), tier, m, dst); err != nil {
			t.Fatalf("%s: fetch: %v", tier.Name(), err)
		}
		st, err := store.OpenReadOnly(context.Background(), dst)
		if err != nil {
			t.Fatal(err)
		}
		problems, err := st.IntegrityCheck(context.Background())
		stats, serr := st.Stats(context.Background())
		w, werr := st.Watermark(context.Background(), "CANDLES")
		st.Close()
		if err != nil || len(problems) > 0 || serr != nil || stats.Candles != 1000 || werr != nil || w != 20 {
			t.Errorf("%s: restored copy: problems %v (%v), candles %d (%v), watermark %d (%v)", tier.Name(), problems, err, stats.Candles, serr, w, werr)
		}
	}
	checkfor.Check(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := len(ev.ofKind("backup.completed")); got != 3 {
			return fmt.Errorf("backup.completed events: %d, want 3", got)
		}
		return nil
	})
	for _, e := range ev.ofKind("backup.completed") {
		if e["verified"] != true || e["watermark"] != float64(20) || e["sha256"] != rep.Tiers[0].SHA256 {
			t.Errorf("backup.completed %v", e)
		}
	}
	// The scratch copy is gone.
	entries, _ := os.ReadDir(filepath.Join(filepath.Dir(d.path), "backups", ".scratch"))
	if len(entries) != 0 {
		t.Errorf("scratch directory holds %v after the backup", entries)
	}
}

func TestFileModes(t *testing.T) {
	d := newDB(t)
	d.write(t, 2, 10)
	root := t.TempDir()
	hot := filepath.Join(root, "backups", "hot")
	s := newService(t, options(d, []backup.TierConfig{{Tier: fileTier(t, "hot", hot), Retention: backup.DefaultHotRetention}}, testclock.New(t0).Now))
	if rep := s.Backup(context.Background(), backup.TriggerRequest); !rep.OK() {
		t.Fatalf("backup: %+v", rep)
	}
	fi, err := os.Stat(hot)
	if err != nil || fi.Mode().Perm() != file.DirMode {
		t.Fatalf("hot dir mode %v (%v), want %v", fi.Mode().Perm(), err, file.DirMode)
	}
	entries, err := os.ReadDir(hot)
	if err != nil || len(entries) != 2 {
		t.Fatalf("hot dir holds %v (%v), want the copy and its manifest", entries, err)
	}
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm() != file.FileMode {
			t.Errorf("%s: mode %v, want %v", e.Name(), info.Mode().Perm(), file.FileMode)
		}
	}
}

func TestTierFailsAlone(t *testing.T) {
	d := newDB(t)
	d.write(t, 3, 10)
	nc, _, ev := startNATS(t)
	root := t.TempDir()
	tt := newThreeTiers(t, root)
	// The warm disk is not mounted: its directory is missing. The bucket
	// is down.
	warmDir := filepath.Join(root, "mnt", "second-disk")
	warm, err := file.New(backup.TierWarm, warmDir, file.MustExist())
	if err != nil {
		t.Fatal(err)
	}
	tiers := []backup.TierConfig{tt.configs[0], {Tier: warm, Retention: backup.DefaultWarmRetention}, tt.configs[2]}
	clock := testclock.New(t0)
	o := options(d, tiers, clock.Now)
	o.Conn = nc
	s := newService(t, o)
	tt.s3.Down.Store(true)
	rep := s.Backup(context.Background(), backup.TriggerRequest)
	got := map[string]bool{}
	for _, r := range rep.Tiers {
		got[r.Tier] = r.OK
	}
	if !got["hot"] || got["warm"] || got["cold"] || rep.OK() {
		t.Fatalf("tier results %v, want hot ok, warm and cold failed", got)
	}
	if n := len(complete(t, tt.hot)); n != 1 {
		t.Fatalf("hot holds %d complete copies, want 1", n)
	}
	checkfor.Check(t, 5*time.Second, 10*time.Millisecond, func() error {
		failed := map[string]string{}
		for _, e := range ev.ofKind("backup.failed") {
			failed[e["tier"].(string)], _ = e["reason"].(string)
		}
		if len(failed) != 2 || !strings.Contains(failed["warm"], "is its disk mounted?") || failed["cold"] == "" {
			return errors.New("backup.failed for warm and cold not (yet) seen")
		}
		if len(ev.ofKind("backup.completed")) != 1 || ev.ofKind("backup.completed")[0]["tier"] != "hot" {
			return errors.New("backup.completed for hot alone not (yet) seen")
		}
		return nil
	})
	// The next attempt retries: the bucket is back and the disk mounted.
	tt.s3.Down.Store(false)
	if n := len(complete(t, tt.cold)); n != 0 {
		t.Fatalf("cold holds %d complete copies after its outage, want none", n)
	}
	if err := os.MkdirAll(warmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	d.write(t, 1, 10)
	if rep := s.Backup(context.Background(), backup.TriggerRequest); !rep.OK() {
		t.Fatalf("retry: %+v", rep)
	}
	for _, tier := range []backup.Tier{tt.hot, warm, tt.cold} {
		copies := complete(t, tier)
		if len(copies) == 0 || copies[len(copies)-1].Watermark != 4 {
			t.Errorf("%s after the retry: %+v, want its newest copy at watermark 4", tier.Name(), copies)
		}
	}
}

func TestRetention(t *testing.T) {
	d := newDB(t)
	d.write(t, 1, 10)
	tt := newThreeTiers(t, t.TempDir())
	clock := testclock.New(t0)
	s := newService(t, options(d, tt.configs, clock.Now))
	for day := range 100 {
		if day > 0 {
			clock.Add(24 * time.Hour)
		}
		d.write(t, 1, 1)
		if rep := s.Backup(context.Background(), backup.TriggerSchedule); !rep.OK() {
			t.Fatalf("day %d: %+v", day, rep)
		}
	}
	for _, tc := range []struct {
		tier backup.Tier
		want int
	}{{tt.hot, 14}, {tt.warm, 30}, {tt.cold, 90}} {
		copies := complete(t, tc.tier)
		if len(copies) != tc.want {
			t.Errorf("%s keeps %d copies, want %d", tc.tier.Name(), len(copies), tc.want)
			continue
		}
		// They are the newest ones: the last backup (watermark 101) and the
		// days before it.
		if last := copies[len(copies)-1]; last.Watermark != 101 {
			t.Errorf("%s: newest copy at watermark %d, want 101", tc.tier.Name(), last.Watermark)
		}
		if first := copies[0]; first.Watermark != uint64(101-tc.want+1) {
			t.Errorf("%s: oldest copy at watermark %d, want %d", tc.tier.Name(), first.Watermark, 101-tc.want+1)
		}
		objs, err := tc.tier.List(context.Background())
		if err != nil || len(objs) != 2*tc.want {
			t.Errorf("%s holds %d objects (%v), want %d (copies and manifests, nothing else)", tc.tier.Name(), len(objs), err, 2*tc.want)
		}
	}
	// Backups stop for a year: retention never deletes a tier's newest copy.
	for _, tc := range tt.configs {
		if _, err := backup.Prune(context.Background(), tc.Tier, tc.Retention, clock.Now().Add(365*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if copies := complete(t, tc.Tier); len(copies) != 1 || copies[0].Watermark != 101 {
			t.Errorf("%s a year later: %d copies, want only the newest", tc.Tier.Name(), len(copies))
		}
	}
}

func TestDamagedCopyIsRefused(t *testing.T) {
	d := newDB(t)
	d.write(t, 5, 50)
	hotDir := filepath.Join(t.TempDir(), "hot")
	hot := fileTier(t, "hot", hotDir)
	s := newService(t, options(d, []backup.TierConfig{{Tier: hot, Retention: backup.DefaultHotRetention}}, testclock.New(t0).Now))
	rep := s.Backup(context.Background(), backup.TriggerRequest)
	if !rep.OK() {
		t.Fatal(rep)
	}
	m := *complete(t, hot)[0].Manifest
	path := filepath.Join(hotDir, m.Name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tamper func([]byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { c := append([]byte(nil), b...); c[len(c)/2] ^= 0xff; return c }},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.tamper(data), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := backup.Verify(context.Background(), hot, m); !errors.Is(err, backup.ErrChecksum) {
				t.Errorf("Verify: %v, want ErrChecksum", err)
			}
			dst := filepath.Join(t.TempDir(), "restored.db")
			if err := backup.Fetch(context.Background(), hot, m, dst); !errors.Is(err, backup.ErrChecksum) {
				t.Errorf("Fetch: %v, want ErrChecksum", err)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Fetch of a damaged copy left %s (%v)", dst, err)
			}
		})
	}
}

func TestIncompleteCopiesArePrunedAfterADay(t *testing.T) {
	hot := fileTier(t, "hot", filepath.Join(t.TempDir(), "hot"))
	ctx := context.Background()
	// An upload that never got its manifest.
	name := backup.ObjectName(t0, 9)
	if err := hot.Put(ctx, name, strings.NewReader("partial"), 7); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after time.Duration
		left  int
	}{{23 * time.Hour, 1}, {24 * time.Hour, 0}} {
		if _, err := backup.Prune(ctx, hot, backup.DefaultHotRetention, t0.Add(tc.after)); err != nil {
			t.Fatal(err)
		}
		copies, err := backup.List(ctx, hot)
		if err != nil {
			t.Fatal(err)
		}
		if len(copies) != tc.left {
			t.Fatalf("%s after the failed upload: %d copies left, want %d", tc.after, len(copies), tc.left)
		}
	}
}

func TestSchedulePeriod(t *testing.T) {
	for _, tc := range []struct {
		schedule string
		want     time.Duration
	}{
		{"0 0 2 * * *", 24 * time.Hour},
		{"0 2 * * *", 24 * time.Hour},
		{"@every 6h", 6 * time.Hour},
		{"@hourly", time.Hour},
		{"@weekly", 7 * 24 * time.Hour},
		{"@monthly", 31 * 24 * time.Hour},
		{"0 0 2 * * 1,4", 4 * 24 * time.Hour}, // Monday and Thursday: the longest gap is Thursday to Monday
		{"off", 0},
	} {
		got, err := backup.SchedulePeriod(tc.schedule, t0)
		if err != nil || got != tc.want {
			t.Errorf("SchedulePeriod(%q) = %s, %v; want %s", tc.schedule, got, err, tc.want)
		}
	}
	if _, err := backup.SchedulePeriod("at two", t0); err == nil || !strings.Contains(err.Error(), "--backup-schedule") {
		t.Errorf("a bad schedule: %v, want an error naming --backup-schedule", err)
	}
}
