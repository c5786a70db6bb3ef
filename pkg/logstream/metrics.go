package logstream

import "github.com/prometheus/client_golang/prometheus"

// Metric names.
const (
	// LostRecordsName counts records a reader did not get because it fell
	// behind the ring.
	LostRecordsName = "logstream_lost_records_total"
	// WatchersName is the number of streams being served.
	WatchersName = "logstream_watchers"
)

// Metrics are a Service's metrics.
type Metrics struct {
	lost     prometheus.Counter
	watchers prometheus.Gauge
}

// NewMetrics registers the metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: LostRecordsName,
			Help: "Access-log records streamed readers lost because they fell behind the ring",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: WatchersName,
			Help: "Access-log streams being served",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.lost, m.watchers)
	}
	return m
}
