// Package checkfor is the one barrier candlekeep's tests wait with, in the
// style of nats-server's checkFor: poll a condition until it holds or a
// deadline passes. A test waits for the thing it checks to have happened
// instead of sleeping and hoping it had time to.
package checkfor

import (
	"testing"
	"time"
)

// Check calls f every `every` until it returns nil, and fails the test with
// f's last error if that has not happened within total. Give total
// generously (the machine may be loaded): a condition that holds returns at
// once, so a long total costs nothing. Call it from the test's goroutine.
func Check(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", total, err)
		}
		time.Sleep(every)
	}
}
