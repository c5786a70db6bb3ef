package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metric names of the waypoint's own (not Istio's standard) metrics.
const (
	// OutlierEjectionsName counts endpoints ejected by outlier detection
	// (Envoy's outlier_detection.ejections_enforced_total, for all
	// Services at once).
	OutlierEjectionsName = "waypoint_outlier_ejections_total"
)

// LBMetrics are the load balancer's metrics.
type LBMetrics struct {
	ejections prometheus.Counter
}

// NewLBMetrics registers the metrics with reg (nil: not registered).
func NewLBMetrics(reg prometheus.Registerer) *LBMetrics {
	m := &LBMetrics{
		ejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: OutlierEjectionsName,
			Help: "Endpoints ejected from load balancing after consecutive connection failures",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.ejections)
	}
	return m
}
