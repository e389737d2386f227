// Package s3 is the cold backup tier in an S3-compatible bucket (AWS S3,
// MinIO, Ceph, R2 and the like), through the AWS SDK for Go v2.
//
// Credentials come only from the SDK's standard chain (AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE with
// ~/.aws/credentials and ~/.aws/config, web identity, the instance role),
// never from a flag, so they appear in no command line, log or error.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/candlekeep/candlekeep/services/backup"
)

// Defaults.
const (
	DefaultRegion       = "us-east-1"
	DefaultStorageClass = "STANDARD"
	// DefaultPartSize is the part size of multipart uploads: an object of
	// up to one part goes up with one PutObject, a larger one in parts of
	// this size (S3 takes at most 5 GB in one PutObject and 10,000 parts;
	// the uploader grows the part for objects over 640 GB).
	DefaultPartSize = 64 << 20
	// uploadConcurrency is how many parts go up at once: two keep the
	// link busy without taking the 2-core machine from the writer; parts
	// are read from the file in place, not buffered.
	uploadConcurrency = 2
)

// Options configure the tier.
type Options struct {
	// Name is the tier's role (normally "cold").
	Name string
	// URL is s3://bucket/prefix.
	URL string
	// Endpoint overrides the AWS endpoint for S3-compatible stores
	// (http://127.0.0.1:9000); it switches to path-style addressing.
	Endpoint string
	// Region is the bucket's region; empty: AWS_REGION or the profile's,
	// else DefaultRegion.
	Region string
	// StorageClass of stored objects (STANDARD, STANDARD_IA, GLACIER_IR, …).
	StorageClass string
	// MaxAttempts bounds the SDK's retries of one call (0: the SDK's 3).
	// The backup service retries a failed tier at its next attempt anyway.
	MaxAttempts int
	// HTTPClient, when set, carries the requests (tests; proxies).
	HTTPClient *http.Client
	// Credentials, when set, replace the standard chain (tests only).
	Credentials aws.CredentialsProvider
	// PartSize is the multipart part size (0: DefaultPartSize; at least
	// 5 MiB, S3's minimum). Not a flag: tests set it small to force a
	// multipart upload of a small object.
	PartSize int64
}

// ParseURL splits s3://bucket/prefix; the prefix may be empty.
func ParseURL(raw string) (bucket, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("--backup-s3-url: not a URL; want s3://bucket/prefix")
	}
	if u.Scheme != "s3" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("--backup-s3-url %q: want s3://bucket/prefix (credentials come from the AWS environment, never the URL)", redactURL(raw))
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	return u.Host, prefix, nil
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	return u.String()
}

// Tier keeps objects under a prefix of a bucket.
type Tier struct {
	name, bucket, prefix, class string
	client                      *s3.Client
	uploader                    *manager.Uploader
}

var _ backup.Tier = (*Tier)(nil)

// New builds the tier; it does not contact the store, so an outage at
// start-up fails the tier's backups rather than the service.
func New(ctx context.Context, o Options) (*Tier, error) {
	bucket, prefix, err := ParseURL(o.URL)
	if err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = backup.TierCold
	}
	if o.Endpoint != "" {
		if u, err := url.Parse(o.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return nil, fmt.Errorf("--backup-s3-endpoint %q: want http(s)://host[:port] without credentials", redactURL(o.Endpoint))
		}
	}
	if o.StorageClass == "" {
		o.StorageClass = DefaultStorageClass
	}
	if !validClass(o.StorageClass) {
		return nil, fmt.Errorf("--backup-s3-storage-class %q: want one of %s", o.StorageClass, strings.Join(classNames(), ", "))
	}
	var loadOpts []func(*config.LoadOptions) error
	if o.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.Region))
	}
	if o.Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(o.Credentials))
	}
	if o.MaxAttempts > 0 {
		loadOpts = append(loadOpts, config.WithRetryMaxAttempts(o.MaxAttempts))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("%s tier: load AWS configuration: %w", o.Name, err)
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
			so.UsePathStyle = true
		}
		if o.HTTPClient != nil {
			so.HTTPClient = o.HTTPClient
		}
		// Checksums only where S3 requires them: many S3-compatible
		// stores reject the SDK's default trailing checksums, and the
		// backup verifies every object by reading it back anyway.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	if o.PartSize == 0 {
		o.PartSize = DefaultPartSize
	}
	if o.PartSize < manager.MinUploadPartSize {
		return nil, fmt.Errorf("%s tier: part size %d: S3 takes parts of at least %d bytes", o.Name, o.PartSize, manager.MinUploadPartSize)
	}
	uploader := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = o.PartSize
		u.Concurrency = uploadConcurrency
		u.LeavePartsOnError = false // abort: a failed upload leaves nothing behind
		u.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	})
	return &Tier{name: o.Name, bucket: bucket, prefix: prefix, class: o.StorageClass, client: client, uploader: uploader}, nil
}

func validClass(c string) bool {
	for _, v := range types.StorageClass("").Values() {
		if string(v) == c {
			return true
		}
	}
	return false
}

func classNames() []string {
	var out []string
	for _, v := range types.StorageClass("").Values() {
		out = append(out, string(v))
	}
	return out
}

// Name is the tier's role.
func (t *Tier) Name() string { return t.name }

// Location is s3://bucket/prefix.
func (t *Tier) Location() string { return "s3://" + t.bucket + "/" + strings.TrimSuffix(t.prefix, "/") }

func (t *Tier) key(name string) (string, error) {
	if name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("%s tier: bad object name %q", t.name, name)
	}
	return t.prefix + name, nil
}

// Put stores the object, encrypted at rest (SSE-S3, AES256) in the
// configured storage class: up to one part with one PutObject, a larger
// object (over 5 GB S3 refuses a PutObject) as a multipart upload. Either
// way S3 makes the object visible only when it is complete: a PutObject
// that fails stores nothing, and a multipart upload exists as an object
// only after CompleteMultipartUpload; one that fails part-way is aborted,
// which drops its parts. The body must be seekable (the file of the copy):
// the SDK signs each part and the uploader reads parts in place.
func (t *Tier) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := t.key(name)
	if err != nil {
		return err
	}
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		return fmt.Errorf("%s tier: put %s: body is not seekable", t.name, name)
	}
	in := &s3.PutObjectInput{
		Bucket:               aws.String(t.bucket),
		Key:                  aws.String(key),
		Body:                 rs,
		ServerSideEncryption: types.ServerSideEncryptionAes256,
		StorageClass:         types.StorageClass(t.class),
	}
	if size >= 0 {
		in.ContentLength = aws.Int64(size)
	}
	if _, err := t.uploader.Upload(ctx, in); err != nil {
		return fmt.Errorf("%s tier: put %s: %w", t.name, t.Location()+"/"+name, err)
	}
	return nil
}

// Open reads the object name.
func (t *Tier) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := t.key(name)
	if err != nil {
		return nil, err
	}
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(t.bucket), Key: aws.String(key)})
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return nil, fmt.Errorf("%s tier: %s: %w", t.name, name, backup.ErrNotFound)
		}
		return nil, fmt.Errorf("%s tier: get %s: %w", t.name, name, err)
	}
	return out.Body, nil
}

// List returns the objects directly under the prefix.
func (t *Tier) List(ctx context.Context) ([]backup.ObjectInfo, error) {
	var out []backup.ObjectInfo
	p := s3.NewListObjectsV2Paginator(t.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(t.bucket), Prefix: aws.String(t.prefix), Delimiter: aws.String("/"),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s tier: list %s: %w", t.name, t.Location(), err)
		}
		for _, o := range page.Contents {
			info := backup.ObjectInfo{Name: strings.TrimPrefix(aws.ToString(o.Key), t.prefix), Size: aws.ToInt64(o.Size)}
			if o.LastModified != nil {
				info.ModTime = *o.LastModified
			}
			out = append(out, info)
		}
	}
	return out, nil
}

// Delete removes the object name.
func (t *Tier) Delete(ctx context.Context, name string) error {
	key, err := t.key(name)
	if err != nil {
		return err
	}
	if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(t.bucket), Key: aws.String(key)}); err != nil {
		return fmt.Errorf("%s tier: delete %s: %w", t.name, name, err)
	}
	return nil
}
