package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

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

// A copy larger than one part goes up as a multipart upload (here 5 MiB
// parts, S3's minimum, and a 12 MiB object: three parts) and reads back
// byte for byte; an upload cut off after its first part is aborted and
// leaves no object, and the next attempt stores it whole.
func TestMultipartUpload(t *testing.T) {
	srv := backuptest.StartS3(t, "backups")
	tier, err := s3.New(context.Background(), s3.Options{
		Name: "cold", URL: "s3://backups/cold", Endpoint: srv.URL, Region: "us-east-1",
		StorageClass: "STANDARD_IA", MaxAttempts: 1, PartSize: 5 << 20,
		Credentials: credentials.NewStaticCredentialsProvider("test-key-id", "test-secret", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := make([]byte, 12<<20)
	if _, err := rand.NewChaCha8([32]byte{1}).Read(data); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	path := filepath.Join(t.TempDir(), "copy.db.zst")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	put := func(name string) error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return tier.Put(ctx, name, f, int64(len(data)))
	}
	stored := func(name string) (bool, [32]byte) {
		t.Helper()
		r, err := tier.Open(ctx, name)
		if errors.Is(err, backup.ErrNotFound) {
			return false, [32]byte{}
		}
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			t.Fatal(err)
		}
		return true, [32]byte(h.Sum(nil))
	}

	// Cut off after the first part: aborted, nothing visible.
	srv.FailPartsAfter.Store(1)
	if err := put("cut.db.zst"); err == nil {
		t.Fatal("Put succeeded though the store failed every part after the first")
	}
	if ok, _ := stored("cut.db.zst"); ok {
		t.Fatal("an upload cut off part-way left an object")
	}
	objs, err := tier.List(ctx)
	if err != nil || len(objs) != 0 {
		t.Fatalf("List after the cut-off upload = %v, %v; want nothing", objs, err)
	}
	if c, a, done := srv.UploadsCreated.Load(), srv.UploadsAborted.Load(), srv.UploadsCompleted.Load(); c != 1 || a != 1 || done != 0 {
		t.Fatalf("cut-off upload: %d created, %d aborted, %d completed; want 1, 1, 0", c, a, done)
	}

	srv.FailPartsAfter.Store(0)
	srv.PartsUploaded.Store(0)
	if err := put("whole.db.zst"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if c, p, done := srv.UploadsCreated.Load(), srv.PartsUploaded.Load(), srv.UploadsCompleted.Load(); c != 2 || p != 3 || done != 1 {
		t.Fatalf("upload: %d created (total), %d parts, %d completed; want 2, 3, 1", c, p, done)
	}
	ok, got := stored("whole.db.zst")
	if !ok || got != want {
		t.Fatalf("stored object: present %v, sha256 %x; want %x", ok, got, want)
	}
	objs, err = tier.List(ctx)
	if err != nil || len(objs) != 1 || objs[0].Name != "whole.db.zst" || objs[0].Size != int64(len(data)) {
		t.Fatalf("List = %+v, %v; want whole.db.zst of %d bytes", objs, err, len(data))
	}

	// One part or less: a single PutObject, no multipart upload.
	small := data[:1<<20]
	if err := tier.Put(ctx, "small", bytes.NewReader(small), int64(len(small))); err != nil {
		t.Fatal(err)
	}
	if c := srv.UploadsCreated.Load(); c != 2 {
		t.Errorf("a 1 MiB object started a multipart upload (%d created, want still 2)", c)
	}
}

func TestPartSizeBelowS3Minimum(t *testing.T) {
	_, err := s3.New(context.Background(), s3.Options{URL: "s3://b/p", Region: "us-east-1", PartSize: 1 << 20,
		Credentials: credentials.NewStaticCredentialsProvider("k", "s", "")})
	if err == nil || !strings.Contains(err.Error(), "part size") {
		t.Fatalf("New with 1 MiB parts: %v, want a part size error", err)
	}
}
