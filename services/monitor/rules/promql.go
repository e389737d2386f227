package rules

import "maps"

// The few PromQL operations the eleven rules use, with Prometheus' semantics
// for labels and values, so each Rule.Eval reads like its Expr.

// filter keeps the samples whose value passes keep, with their labels and
// value: a comparison against a scalar without `bool` (`v > 0`).
func filter(ss []Sample, keep func(v float64) bool) []Sample {
	var out []Sample
	for _, s := range ss {
		if keep(s.Value) {
			out = append(out, s)
		}
	}
	return out
}

// match joins two instant vectors one-to-one on their full label sets
// (without __name__, which Labels never hold), as a binary operator
// between vectors without on/ignoring does. op returns the result's value
// and whether the pair is kept; the result has the left side's labels:
// for a comparison filter (`a > b`) that is what Prometheus keeps, for
// arithmetic (`a - b`) Prometheus drops __name__, leaving the same.
// A left-hand sample without a partner is dropped.
func match(lhs, rhs []Sample, op func(l, r float64) (float64, bool)) []Sample {
	right := make(map[string]float64, len(rhs))
	for _, s := range rhs {
		right[labelsKey(s.Labels)] = s.Value
	}
	var out []Sample
	for _, s := range lhs {
		r, ok := right[labelsKey(s.Labels)]
		if !ok {
			continue
		}
		if v, keep := op(s.Value, r); keep {
			out = append(out, Sample{Labels: maps.Clone(s.Labels), Value: v})
		}
	}
	return out
}

// or is PromQL's `a or b`: every sample of a, and those of b whose label
// set a has not.
func or(a, b []Sample) []Sample {
	have := make(map[string]bool, len(a))
	out := append([]Sample(nil), a...)
	for _, s := range a {
		have[labelsKey(s.Labels)] = true
	}
	for _, s := range b {
		if !have[labelsKey(s.Labels)] {
			out = append(out, s)
		}
	}
	return out
}

// mapValues applies f to every value: arithmetic with a scalar, which
// keeps the labels (and drops __name__).
func mapValues(ss []Sample, f func(v float64) float64) []Sample {
	out := make([]Sample, len(ss))
	for i, s := range ss {
		out[i] = Sample{Labels: s.Labels, Value: f(s.Value)}
	}
	return out
}

func sub(l, r float64) (float64, bool) { return l - r, true }
func div(l, r float64) (float64, bool) { return l / r, true }
