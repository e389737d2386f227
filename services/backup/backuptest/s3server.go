package backuptest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/candlekeep/candlekeep/services/backup/s3"
)

// S3 is a real S3-protocol server (gofakes3, in memory) on 127.0.0.1 that
// a test can take down and bring back.
type S3 struct {
	// URL is the endpoint (http://127.0.0.1:port).
	URL string
	// Down, while true, answers every request 503 SlowDown as S3 does
	// when it cannot serve.
	Down atomic.Bool
	// Requests counts the requests that reached the server.
	Requests atomic.Int64
	// Multipart uploads seen: created (POST ?uploads), parts accepted
	// (PUT ?partNumber), completed (POST ?uploadId) and aborted (DELETE
	// ?uploadId).
	UploadsCreated, PartsUploaded, UploadsCompleted, UploadsAborted atomic.Int64
	// FailPartsAfter, when > 0, answers 500 InternalError to every part
	// after that many were accepted: an upload cut off part-way.
	FailPartsAfter atomic.Int64
}

// StartS3 serves an S3 server with the bucket already created; it stops
// when the test ends.
func StartS3(t testing.TB, bucket string) *S3 {
	t.Helper()
	mem := s3mem.New()
	if err := mem.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	faker := gofakes3.New(mem).Server()
	s := &S3{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Requests.Add(1)
		if s.Down.Load() {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>down for the test</Message></Error>`))
			return
		}
		q := r.URL.Query()
		_, isPart := q["partNumber"]
		_, hasUpload := q["uploadId"]
		_, creates := q["uploads"]
		switch {
		case r.Method == http.MethodPut && isPart && hasUpload:
			if n := s.FailPartsAfter.Load(); n > 0 && s.PartsUploaded.Load() >= n {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>cut off for the test</Message></Error>`))
				return
			}
			s.PartsUploaded.Add(1)
		case r.Method == http.MethodPost && creates:
			s.UploadsCreated.Add(1)
		case r.Method == http.MethodPost && hasUpload:
			s.UploadsCompleted.Add(1)
		case r.Method == http.MethodDelete && hasUpload:
			s.UploadsAborted.Add(1)
		}
		faker.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Tier returns a cold tier on the server at s3://bucket/prefix, with test
// credentials (the real ones come from the AWS environment) and no SDK
// retries, so an outage fails at once.
func (s *S3) Tier(t testing.TB, bucket, prefix string) *s3.Tier {
	t.Helper()
	tier, err := s3.New(context.Background(), s3.Options{
		Name: "cold", URL: "s3://" + bucket + "/" + prefix, Endpoint: s.URL, Region: "us-east-1",
		StorageClass: "STANDARD_IA", MaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("test-key-id", "test-secret", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	return tier
}
