package backup

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Manifest describes one copy; it is stored beside the data object as
// <data object>.manifest.json and written only after the data object was
// stored and read back with the right checksum, so its presence is what
// makes a copy count.
type Manifest struct {
	V int `json:"v"`
	// Name is the data object this manifest describes.
	Name string `json:"name"`
	// Tier is the tier the copy was written to.
	Tier      string    `json:"tier"`
	CreatedAt time.Time `json:"created_at"`
	// Stream and Watermark: the copy holds every CANDLES batch up to and
	// including this stream sequence, so a restore replays from
	// Watermark+1.
	Stream    string `json:"stream"`
	Watermark uint64 `json:"watermark"`
	Candles   int64  `json:"candles"`
	// Pairs summarises what the copy holds per pair.
	Pairs         []PairSummary `json:"pairs"`
	SchemaVersion int           `json:"schema_version"`
	// SHA256 and Bytes are of the stored (compressed) object; DBSHA256 and
	// DBBytes of the database file it decompresses to.
	SHA256      string `json:"sha256"`
	Bytes       int64  `json:"bytes"`
	DBSHA256    string `json:"db_sha256"`
	DBBytes     int64  `json:"db_bytes"`
	Compression string `json:"compression"`
	// IntegrityCheck is the PRAGMA integrity_check verdict of the snapshot
	// before it was compressed ("ok").
	IntegrityCheck string `json:"integrity_check"`
	// Verified: the stored object was read back from the tier and its
	// sha256 matched; VerifiedAt is when.
	Verified   bool      `json:"verified"`
	VerifiedAt time.Time `json:"verified_at"`
	// Source is the database file the copy was taken from; Version the
	// candlekeep version that took it.
	Source  string `json:"source"`
	Version string `json:"version"`
}

// PairSummary is one pair's coverage in a copy: open times in ms since the
// epoch, UTC.
type PairSummary struct {
	Symbol   string `json:"symbol"`
	Interval string `json:"interval"`
	First    int64  `json:"first"`
	Last     int64  `json:"last"`
	Count    int64  `json:"count"`
}

// ManifestVersion is the version of the manifest format.
const ManifestVersion = 1

// CompressionZstd is the only compression written.
const CompressionZstd = "zstd"

// Object names. Names sort by time, so the newest copy is the last name.
const (
	objectPrefix   = "candles-"
	dataSuffix     = ".db.zst"
	manifestSuffix = ".manifest.json"
	timeLayout     = "20060102T150405Z"
)

// ObjectName is the data object's name of a copy taken at t holding
// everything up to watermark: candles-20261204T020000Z-w123456.db.zst.
func ObjectName(t time.Time, watermark uint64) string {
	return objectPrefix + t.UTC().Format(timeLayout) + "-w" + strconv.FormatUint(watermark, 10) + dataSuffix
}

// ManifestName is the manifest's name of the data object name.
func ManifestName(name string) string { return name + manifestSuffix }

// ParseObjectName reads the time and watermark from a data object's name.
func ParseObjectName(name string) (t time.Time, watermark uint64, ok bool) {
	rest, found := strings.CutPrefix(name, objectPrefix)
	if !found {
		return time.Time{}, 0, false
	}
	rest, found = strings.CutSuffix(rest, dataSuffix)
	if !found {
		return time.Time{}, 0, false
	}
	ts, w, found := strings.Cut(rest, "-w")
	if !found {
		return time.Time{}, 0, false
	}
	t, err := time.Parse(timeLayout, ts)
	if err != nil {
		return time.Time{}, 0, false
	}
	watermark, err = strconv.ParseUint(w, 10, 64)
	if err != nil {
		return time.Time{}, 0, false
	}
	return t, watermark, true
}

// decodeManifest parses and checks a stored manifest.
func decodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("decode manifest: %w", err)
	}
	if m.V != ManifestVersion {
		return m, fmt.Errorf("manifest version %d; this candlekeep reads %d", m.V, ManifestVersion)
	}
	if m.Name == "" || m.SHA256 == "" || m.Compression != CompressionZstd {
		return m, fmt.Errorf("manifest of %q incomplete (sha256 %q, compression %q)", m.Name, m.SHA256, m.Compression)
	}
	return m, nil
}
