package proxy

import "github.com/prometheus/client_golang/prometheus"

// LimitHitsName counts the times a limit was hit, by limit: the proxy's
// (Limit... of this package) and the HBONE server's and pool's
// (hbone.Limit...). Istio's ztunnel has no equivalent metric.
const LimitHitsName = "ztunnel_limit_hits_total"

// LimitHits counts limits hit. A nil *LimitHits counts nothing.
type LimitHits struct {
	vec *prometheus.CounterVec
}

// NewLimitHits creates the counter and registers it with reg (if not
// nil).
func NewLimitHits(reg prometheus.Registerer) *LimitHits {
	l := &LimitHits{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: LimitHitsName,
		Help: "The total number of times a limit was hit, by limit (docs/security.md, Limits)",
	}, []string{"limit"})}
	if reg != nil {
		reg.MustRegister(l.vec)
	}
	return l
}

// Hit counts one hit of limit. It is cheap and takes no lock of the
// caller's: hbone's OnLimit hooks may call it with their locks held.
func (l *LimitHits) Hit(limit string) {
	if l != nil {
		l.vec.WithLabelValues(limit).Inc()
	}
}

// Counter returns the counter of limit.
func (l *LimitHits) Counter(limit string) prometheus.Counter {
	return l.vec.WithLabelValues(limit)
}
