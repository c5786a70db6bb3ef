// Package bench measures the mesh side by side with a direct connection
// and an established peer (a stunnel4 pair doing TLS 1.3 mutual auth), and
// the control plane under the load of a large cluster.
//
// It holds the pieces the runner (tests/cmd/bench, `make bench`) composes:
// load generators (single-stream throughput, an open-loop constant-rate
// request/response generator that measures from the intended send time so
// that a stalled server cannot hide its stall, a closed-loop saturation
// generator, a new-connection generator), the applications that answer
// them, /proc readers for per-process CPU and RSS, the processes under test
// (istiod-lite and ztunnels started from their binaries, stunnel) and the
// statistics and report. Every load is bounded in count and in time, and
// all traffic stays on loopback.
package bench

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0 < p ≤ 100) of sorted, by the
// nearest-rank method: the smallest value such that at least p% of the
// values are less than or equal to it. It returns 0 for no values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Latencies summarises one run of a latency measurement.
type Latencies struct {
	Count         int
	P50, P90, P99 time.Duration
	Max           time.Duration
}

// Summarize sorts ds in place and returns its percentiles.
func Summarize(ds []time.Duration) Latencies {
	slices.Sort(ds)
	l := Latencies{Count: len(ds), P50: Percentile(ds, 50), P90: Percentile(ds, 90), P99: Percentile(ds, 99)}
	if len(ds) > 0 {
		l.Max = ds[len(ds)-1]
	}
	return l
}

// Median returns the median of vs (the mean of the two middle values for an
// even count), or NaN for no values. vs is not modified.
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// MedianDuration is Median for durations.
func MedianDuration(ds []time.Duration) time.Duration {
	vs := make([]float64, len(ds))
	for i, d := range ds {
		vs[i] = float64(d)
	}
	m := Median(vs)
	if math.IsNaN(m) {
		return 0
	}
	return time.Duration(m)
}

// Ratio returns a/b, or NaN when b is 0.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}
