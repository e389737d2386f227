package monitor

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

func TestDecodeEvent(t *testing.T) {
	tests := []struct {
		name, subject, data string
		wantErr             string // part of the error; "" for none
		unknown             bool
	}{
		{"sync.completed", "candles.events.sync.completed", `{"v":1,"kind":"sync.completed","pairs_ok":2}`, "", false},
		{"a kind only counted", "candles.events.writer.active", `{"v":1,"kind":"writer.active"}`, "", false},
		{"config.changed", "candles.events.config.changed", `{"v":1,"kind":"config.changed"}`, "", false},
		{"not JSON", "candles.events.sync.completed", `{`, "malformed event", false},
		{"versionless", "candles.events.pair.failed", `{"kind":"pair.failed"}`, "event version 0", false},
		{"a future version", "candles.events.pair.failed", `{"v":2,"kind":"pair.failed"}`, "event version 2", false},
		{"kind not its subject", "candles.events.pair.failed", `{"v":1,"kind":"pair.completed"}`, `"pair.completed" published on candles.events.pair.failed`, false},
		{"unknown kind", "candles.events.foo", `{"v":1,"kind":"foo"}`, "unknown event kind", true},
		{"a field of the wrong type", "candles.events.pair.completed", `{"v":1,"kind":"pair.completed","candles":"7"}`, "malformed pair.completed event", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decodeEvent(tt.subject, []byte(tt.data))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("decode: %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("decode: %v, want an error with %q", err, tt.wantErr)
			case errors.Is(err, errUnknownKind) != tt.unknown:
				t.Errorf("decode: %v; unknown kind %v, want %v", err, errors.Is(err, errUnknownKind), tt.unknown)
			}
		})
	}
}

func TestInvalidEventsLoggedOnceAMinutePerKind(t *testing.T) {
	st := newEventState()
	steps := []struct {
		kind       string
		at         time.Duration
		log        bool
		suppressed int
	}{
		{"pair.failed", 0, true, 0},
		{"pair.failed", 10 * time.Second, false, 0},
		{"foo", 20 * time.Second, true, 0}, // another kind has its own minute
		{"pair.failed", 30 * time.Second, false, 0},
		{"pair.failed", 61 * time.Second, true, 2},
	}
	for i, s := range steps {
		log, suppressed := st.invalid(s.kind, t0.Add(s.at))
		if log != s.log || suppressed != s.suppressed {
			t.Errorf("step %d (%s at %s): log %v with %d suppressed, want %v with %d", i, s.kind, s.at, log, suppressed, s.log, s.suppressed)
		}
	}
	if st.c.Invalid != float64(len(steps)) {
		t.Errorf("counted %v invalid events, want %d", st.c.Invalid, len(steps))
	}
}

func TestSchedulePeriod(t *testing.T) {
	tests := []struct {
		schedule string
		want     time.Duration
	}{
		{"0 0 1 * * *", 24 * time.Hour},
		{"0 1 * * *", 24 * time.Hour},
		{"@every 30s", 30 * time.Second},
		{"@hourly", time.Hour},
		{"0 0 */6 * * *", 6 * time.Hour},
		{"off", 0},
		{"not a schedule", 0},
	}
	for _, tt := range tests {
		if got := schedulePeriod(tt.schedule, t0); got != tt.want {
			t.Errorf("schedulePeriod(%q) = %s, want %s", tt.schedule, got, tt.want)
		}
	}
}

func TestSyncDurationBuckets(t *testing.T) {
	st := newEventState()
	for _, sec := range []float64{0.5, 1, 45, 7200, 9000} {
		st.apply(candles.KindSyncCompleted, &candles.SyncCompleted{StartedAt: t0, FinishedAt: t0.Add(time.Duration(sec * float64(time.Second)))})
	}
	want := make([]uint64, len(syncDurationBuckets)+1)
	want[0], want[4], want[len(want)-2], want[len(want)-1] = 2, 1, 1, 1 // ≤1, ≤60, ≤7200, +Inf
	for i := range want {
		if st.c.SyncDurationCounts[i] != want[i] {
			t.Errorf("bucket %d: %d, want %d (all %v)", i, st.c.SyncDurationCounts[i], want[i], st.c.SyncDurationCounts)
		}
	}
	if st.c.SyncDurationCount != 5 || st.c.SyncDurationSum != 0.5+1+45+7200+9000 || st.c.SyncRuns["completed"] != 5 {
		t.Errorf("count %d sum %v runs %v", st.c.SyncDurationCount, st.c.SyncDurationSum, st.c.SyncRuns)
	}
}
