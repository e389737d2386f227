package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/checkfor"
	"github.com/candlekeep/candlekeep/pkg/sim"
	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/backuptest"
	"github.com/candlekeep/candlekeep/services/writer"
)

// TestBackupNowAndListThroughUp runs `candlekeep up` in-process with the
// simulator and all three tiers (the cold one on a real S3-protocol server,
// credentials from the AWS environment only): a completed sync is backed up
// by itself, `candlekeep backup now` takes another and `backup ls` lists
// both in every tier.
func TestBackupNowAndListThroughUp(t *testing.T) {
	const secret = "s3cr3t-access-key-value"
	t.Setenv("AWS_ACCESS_KEY_ID", "candlekeep-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	s3srv := backuptest.StartS3(t, "candles")
	_, simURL := startSim(t, sim.Options{})

	dataDir, warmDir := t.TempDir(), t.TempDir() // the warm tier's directory exists: a mounted disk
	fo := testFetcherOptions(simURL)
	fo.Symbols, fo.Intervals, fo.Lookback = []string{"BTCUSDT", "ETHUSDT"}, []string{"4h"}, 50
	cfg := upConfig{DataDir: dataDir, NATSListen: "127.0.0.1:-1", Fetcher: fo, Writer: writer.DefaultOptions(),
		Backup: backupConfig{WarmDir: warmDir, S3URL: "s3://candles/prod", S3Endpoint: s3srv.URL,
			S3Class: "STANDARD", HotRetention: backup.DefaultHotRetention, WarmRetention: backup.DefaultWarmRetention,
			ColdRetention: backup.DefaultColdRetention, Schedule: "off", MinInterval: time.Hour}}
	cfg.Backup.resolve(dataDir)
	if err := cfg.Backup.validate(); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	url := startUpConfig(t, cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	nc := connect(t, url)
	ev := watchEvents(t, nc)

	// A completed sync starts a backup by itself, in every tier.
	acc := requestSync(t, nc, `{"reason":"test"}`)
	var sc candles.SyncCompleted
	ev.wait(t, candles.KindSyncCompleted, acc.RunID, 30*time.Second, &sc)
	checkfor.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		tiers := map[string]bool{}
		for _, raw := range ev.of(candles.KindBackupCompleted, "") {
			var bc candles.BackupCompleted
			if json.Unmarshal(raw, &bc) == nil && bc.Verified && bc.Watermark > 0 {
				tiers[bc.Tier] = true
			}
		}
		if len(tiers) != 3 {
			return fmt.Errorf("backup.completed for %v, want hot, warm and cold", tiers)
		}
		return nil
	})

	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"backup", "now", "--nats-url", url, "--json"}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("backup now: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	var rep backup.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || len(rep.Tiers) != 3 || rep.Candles != 2*50 {
		t.Fatalf("backup now: %+v", rep)
	}
	out.Reset()
	if code := run(context.Background(), []string{"backup", "now", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("backup now (table): exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if n := strings.Count(out.String(), "verified"); n != 3 {
		t.Fatalf("backup now table shows %d verified tiers, want 3:\n%s", n, out.String())
	}

	out.Reset()
	if code := run(context.Background(), []string{"backup", "ls", "--nats-url", url, "--json"}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("backup ls: exit %d\n%s", code, errOut.String())
	}
	var l backup.Listing
	if err := json.Unmarshal(out.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	for _, tl := range l.Tiers {
		found := false
		for _, c := range tl.Copies {
			if c.Name == rep.Name && c.Complete() && c.Watermark == rep.Watermark {
				found = true
			}
		}
		if tl.Error != "" || !found {
			t.Errorf("ls %s: %+v, want the copy %s verified", tl.Tier, tl, rep.Name)
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"backup", "ls", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("backup ls (table): exit %d\n%s", code, errOut.String())
	}
	for _, want := range []string{"TIER", "WATERMARK", "VERIFIED", "hot", "warm", "cold", rep.Name} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("backup ls table lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(out.String(), secret) {
		t.Fatal("the AWS secret appears in the logs or the output")
	}
}

func TestBackupNowWithoutService(t *testing.T) {
	_, simURL := startSim(t, sim.Options{})
	url := startUp(t, t.TempDir(), testFetcherOptions(simURL)) // no backup tier: no backup service
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"backup", "now", "--nats-url", url}, &out, &errOut, noEnv); code != 1 {
		t.Fatalf("backup now without a backup service: exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "no backup service answers") {
		t.Fatalf("stderr %q, want it to say no backup service answers", errOut.String())
	}
}

func TestBackupFlagsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad schedule", []string{"backup", "--backup-schedule", "daily at two"}, "--backup-schedule"},
		{"bad s3 url", []string{"backup", "--backup-s3-url", "https://bucket/x"}, "--backup-s3-url"},
		{"credentials in the s3 url", []string{"backup", "--backup-s3-url", "s3://AKIA:hunter2@bucket/x"}, "--backup-s3-url"},
		{"bad retention", []string{"backup", "--backup-hot-retention", "two weeks"}, "--backup-hot-retention"},
		{"no tier", []string{"backup", "--backup-hot-dir", "off"}, "no backup tier"},
		{"short min interval", []string{"up", "--backup-min-interval", "1s"}, "--backup-min-interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errOut, noEnv)
			if code != 2 || !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 naming %s", code, errOut.String(), tc.want)
			}
			if strings.Contains(errOut.String(), "hunter2") {
				t.Fatalf("stderr shows the secret: %s", errOut.String())
			}
		})
	}
}

// TestBackupServiceAlone runs `candlekeep backup` on its own against a
// running system: refused while CANDLES keeps batches too briefly for the
// schedule (the message names the setting), then serving once it is raised.
func TestBackupServiceAlone(t *testing.T) {
	_, simURL := startSim(t, sim.Options{})
	dataDir := t.TempDir()
	url := startUp(t, dataDir, testFetcherOptions(simURL)) // no backup tier inside up
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"config", "set", "candles-max-age=24h", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("config set: exit %d: %s", code, errOut.String())
	}
	args := []string{"backup", "--nats-url", url, "--data-dir", dataDir, "--log-format", "json"}
	errOut.Reset()
	if code := run(context.Background(), args, &out, &errOut, noEnv); code != 1 {
		t.Fatalf("backup with a 24h CANDLES retention and a daily schedule: exit %d, want 1\n%s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), "candlekeep config set candles-max-age=") {
		t.Fatalf("the refusal does not say which setting to change:\n%s", errOut.String())
	}

	if code := run(context.Background(), []string{"config", "set", "candles-max-age=720h", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("config set: exit %d: %s", code, errOut.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var svcErr lockedBuffer
	go func() { done <- run(ctx, args, io.Discard, &svcErr, noEnv) }()
	nc := connect(t, url)
	checkfor.Check(t, 20*time.Second, 50*time.Millisecond, func() error {
		_, err := nc.Request(candles.SubjectAPIBackupList, nil, time.Second)
		return err
	})
	out.Reset()
	if code := run(context.Background(), []string{"backup", "now", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("backup now: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "hot") || !strings.Contains(out.String(), "verified") {
		t.Fatalf("backup now:\n%s", out.String())
	}
	hot := filepath.Join(dataDir, "backups", "hot")
	entries, err := os.ReadDir(hot)
	if err != nil || len(entries) != 2 {
		t.Fatalf("%s holds %v (%v), want one copy and its manifest", hot, entries, err)
	}
	// Shortening the retention while it runs is reported at once.
	if code := run(context.Background(), []string{"config", "set", "candles-max-age=24h", "--nats-url", url}, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("config set: exit %d: %s", code, errOut.String())
	}
	checkfor.Check(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(svcErr.String(), "breaks the backup guarantee") {
			return errors.New("no error logged for the shortened candles-max-age")
		}
		return nil
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("backup service exit %d on stop:\n%s", code, svcErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("backup service did not stop within 30s")
	}
}

func TestRetentionFlagTakesDays(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "14d", want: 14 * 24 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "90d", want: 90 * 24 * time.Hour},
		{in: "0d", bad: true},
		{in: "two weeks", bad: true},
	} {
		var d days
		err := d.Set(tc.in)
		if tc.bad != (err != nil) || (!tc.bad && time.Duration(d) != tc.want) {
			t.Errorf("Set(%q) = %s, %v; want %s (bad %v)", tc.in, time.Duration(d), err, tc.want, tc.bad)
		}
	}
}
