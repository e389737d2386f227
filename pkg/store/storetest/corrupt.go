// Package storetest helps tests damage a real candlekeep database file the
// way a failing disk or a stray write does.
package storetest

import (
	"crypto/rand"
	"database/sql"
	"fmt"
	"os"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// CorruptCandles overwrites n leaf pages from the middle of the candles
// b-tree of the closed database at path with random bytes and returns their
// page numbers. It first folds any WAL into the file, so the damage is what
// every later reader sees. The database must not be open anywhere.
func CorruptCandles(path string, n int) ([]int64, error) {
	pages, pageSize, err := candlePages(path)
	if err != nil {
		return nil, err
	}
	if len(pages) < n+2 {
		return nil, fmt.Errorf("corrupt %s: the candles b-tree has %d leaf pages; want more than %d", path, len(pages), n+2)
	}
	mid := pages[len(pages)/2-n/2:][:n]
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	junk := make([]byte, pageSize)
	for _, p := range mid {
		if _, err := rand.Read(junk); err != nil {
			f.Close()
			return nil, err
		}
		if _, err := f.WriteAt(junk, (p-1)*pageSize); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return mid, f.Close()
}

// candlePages lists the leaf pages of the candles table in page order, after
// a TRUNCATE checkpoint.
func candlePages(path string) (pages []int64, pageSize int64, err error) {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	var busy, log, done int
	if err := db.QueryRow(`PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &log, &done); err != nil {
		return nil, 0, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if busy != 0 {
		return nil, 0, fmt.Errorf("checkpoint %s: the database is in use", path)
	}
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		return nil, 0, err
	}
	rows, err := db.Query(`SELECT pageno FROM dbstat WHERE name = 'candles' AND pagetype = 'leaf' ORDER BY pageno`)
	if err != nil {
		return nil, 0, fmt.Errorf("list candle pages of %s: %w", path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var p int64
		if err := rows.Scan(&p); err != nil {
			return nil, 0, err
		}
		pages = append(pages, p)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return pages, pageSize, db.Close()
}
