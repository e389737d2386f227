//go:build race

package store_test

// raceEnabled: the race detector slows modernc.org/sqlite down tenfold, so
// timing budgets are not checked.
const raceEnabled = true
