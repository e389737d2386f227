// Package backup keeps verified copies of the candle database in up to
// three tiers (the 3-2-1 rule): hot (a directory on the data volume), warm
// (a directory on a second disk) and cold (an S3-compatible bucket).
//
// A backup is a consistent online snapshot (VACUUM INTO on a read
// connection, so the writer keeps committing), checked with PRAGMA
// integrity_check, compressed with zstd and stored in each tier as two
// objects: the data object candles-<UTC time>-w<watermark>.db.zst and,
// written last, its manifest <data object>.manifest.json. A data object
// without a manifest is incomplete and never counts. Each tier is written
// and verified (its copy read back and hashed) on its own, so a tier that
// fails fails alone.
//
// The Tier interface is what a backend implements (package file for
// directories, package s3 for buckets); the restore and drill code reads
// copies through the same interface (List, Open) and checks them with
// Verify.
package backup
