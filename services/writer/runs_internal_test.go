package writer

import (
	"testing"
	"time"

	"github.com/candlekeep/candlekeep/pkg/store"
)

func TestRunETA(t *testing.T) {
	start := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		done, total int
		elapsed     time.Duration
		percent     float64
		eta         string
	}{
		{"nothing done yet", 0, 12, time.Minute, 0, "unknown"},
		{"a quarter in a minute", 3, 12, time.Minute, 25, "3m0s"},
		{"two of three", 2, 3, 40 * time.Second, 66.7, "20s"},
		{"all done", 5, 5, time.Minute, 100, "0s"},
		{"no pairs", 0, 0, time.Minute, 0, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := store.Progress{RunID: "r", PairsDone: tt.done, PairsTotal: tt.total, StartedAt: start}
			percent, eta := runETA(p, start.Add(tt.elapsed))
			if percent != tt.percent || eta != tt.eta {
				t.Fatalf("runETA = %v%%, %s; want %v%%, %s", percent, eta, tt.percent, tt.eta)
			}
		})
	}
}
