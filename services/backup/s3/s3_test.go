package s3_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/candlekeep/candlekeep/services/backup"
	"github.com/candlekeep/candlekeep/services/backup/backuptest"
	"github.com/candlekeep/candlekeep/services/backup/s3"
)

func TestTierSuite(t *testing.T) {
	srv := backuptest.StartS3(t, "backups")
	var n atomic.Int64
	backuptest.RunTierSuite(t, func(t *testing.T) backup.Tier {
		// A prefix per case keeps the cases apart in one bucket.
		return srv.Tier(t, "backups", fmt.Sprintf("candlekeep/case%d", n.Add(1)))
	})
}

func TestOutageFailsThenRetryWorks(t *testing.T) {
	srv := backuptest.StartS3(t, "backups")
	tier := srv.Tier(t, "backups", "cold")
	ctx := context.Background()
	srv.Down.Store(true)
	err := tier.Put(ctx, "obj", strings.NewReader("data"), 4)
	if err == nil {
		t.Fatal("Put during the outage succeeded")
	}
	if strings.Contains(err.Error(), "test-secret") {
		t.Fatalf("error shows the secret: %v", err)
	}
	srv.Down.Store(false)
	if err := tier.Put(ctx, "obj", strings.NewReader("data"), 4); err != nil {
		t.Fatalf("Put after the outage: %v", err)
	}
	r, err := tier.Open(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, bucket, prefix string
		bad                bool
	}{
		{in: "s3://bucket", bucket: "bucket"},
		{in: "s3://bucket/", bucket: "bucket"},
		{in: "s3://bucket/a/b/", bucket: "bucket", prefix: "a/b/"},
		{in: "https://bucket/x", bad: true},
		{in: "s3://key:secret@bucket/x", bad: true},
		{in: "s3:///x", bad: true},
	} {
		b, p, err := s3.ParseURL(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseURL(%q) accepted", tc.in)
			} else if strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q) error shows the secret: %v", tc.in, err)
			}
			continue
		}
		if err != nil || b != tc.bucket || p != tc.prefix {
			t.Errorf("ParseURL(%q) = %q, %q, %v; want %q, %q", tc.in, b, p, err, tc.bucket, tc.prefix)
		}
	}
}

func TestOpenMissingBucketKey(t *testing.T) {
	srv := backuptest.StartS3(t, "backups")
	tier := srv.Tier(t, "backups", "")
	if _, err := tier.Open(context.Background(), "nothing"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("Open: %v, want ErrNotFound", err)
	}
}
