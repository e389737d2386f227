package checkfor_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/checkfor"
)

func TestCheckReturnsOnceTheConditionHolds(t *testing.T) {
	var calls atomic.Int32
	checkfor.Check(t, time.Minute, time.Millisecond, func() error {
		if calls.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := calls.Load(); n != 3 {
		t.Fatalf("f called %d times, want 3", n)
	}
}

// fatalRecorder notes Fatalf instead of stopping the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = format
	panic(r)
}

func TestCheckFailsWithTheLastError(t *testing.T) {
	r := &fatalRecorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != r {
				t.Fatalf("Check did not fail the test (recovered %v)", p)
			}
		}()
		checkfor.Check(r, 30*time.Millisecond, time.Millisecond, func() error { return errors.New("never") })
	}()
	if r.msg == "" {
		t.Fatal("no failure message")
	}
}
