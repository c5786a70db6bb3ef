package telemetry

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request metric names, as Istio's proxies expose them (the waypoint
// reports them with reporter="waypoint").
const (
	RequestsTotalName   = "istio_requests_total"
	RequestDurationName = "istio_request_duration_milliseconds"
	RequestBytesName    = "istio_request_bytes"
	ResponseBytesName   = "istio_response_bytes"
)

// Label values of request metrics.
const (
	ReporterWaypoint = "waypoint" // Istio's reporter of waypoint proxies

	ProtocolHTTP = "http"
	ProtocolGRPC = "grpc"

	// Envoy's response flags that a waypoint reports.
	FlagNoHealthyUpstream   = "UH" // no healthy endpoint to send the request to
	FlagUpstreamFailure     = "UF" // the connection to the endpoint failed
	FlagUpstreamReset       = "UC" // the endpoint's connection ended before a response
	FlagUpstreamTimeout     = "UT" // the request timed out waiting for the endpoint
	FlagDownstreamTerminate = "DC" // the client went away before the response
)

// Histogram buckets, as Istio's stats configuration declares them.
var (
	// DurationBuckets are in milliseconds.
	DurationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	// SizeBuckets are in bytes: powers of ten up to 10^8.
	SizeBuckets = prometheus.ExponentialBuckets(1, 10, 9)
)

// requestLabelNames are Istio's labels of request metrics: the TCP labels
// with response_code and grpc_response_status after request_protocol.
var requestLabelNames = func() []string {
	out := make([]string, 0, len(labelNames)+2)
	for _, n := range labelNames {
		out = append(out, n)
		if n == "request_protocol" {
			out = append(out, "response_code", "grpc_response_status")
		}
	}
	return out
}()

// RequestLabelNames returns the label names of the request metrics.
func RequestLabelNames() []string { return append([]string(nil), requestLabelNames...) }

// RequestLabels are the labels of one request. Empty Labels fields are
// reported as for connections ("unknown"; request_protocol defaults to
// "http" here); GRPCStatus is "" for non-gRPC requests.
type RequestLabels struct {
	Labels
	ResponseCode int    // HTTP status sent to the client; 0 is reported as "0"
	GRPCStatus   string // grpc-status of a gRPC response
}

func (l *RequestLabels) values() []string {
	if l.RequestProtocol == "" {
		l.RequestProtocol = ProtocolHTTP
	}
	n := l.normalized()
	v := n.values()
	out := make([]string, 0, len(v)+2)
	for i, name := range labelNames {
		out = append(out, v[i])
		if name == "request_protocol" {
			out = append(out, strconv.Itoa(l.ResponseCode), l.GRPCStatus)
		}
	}
	return out
}

// Requests are Istio's HTTP request metrics. A nil *Requests counts
// nothing.
type Requests struct {
	total     *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reqBytes  *prometheus.HistogramVec
	respBytes *prometheus.HistogramVec

	// series caches the metrics of each label set seen, keyed by the
	// normalized labels, so that Observe neither builds the label values
	// nor hashes them four times. Series are never removed, as in a Vec.
	series seriesCache[RequestLabels, *requestSeries]
}

// requestSeries are the four metrics of one label set.
type requestSeries struct {
	total                         prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// NewRequests creates the request metrics and registers them with reg (if
// not nil). It panics if they are already registered.
func NewRequests(reg prometheus.Registerer) *Requests {
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, requestLabelNames)
	}
	m := &Requests{
		total:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsTotalName, Help: "The total number of requests"}, requestLabelNames),
		duration:  hist(RequestDurationName, "The duration of requests in milliseconds", DurationBuckets),
		reqBytes:  hist(RequestBytesName, "The size of request bodies and headers in bytes", SizeBuckets),
		respBytes: hist(ResponseBytesName, "The size of response bodies and headers in bytes", SizeBuckets),
	}
	if reg != nil {
		reg.MustRegister(m.total, m.duration, m.reqBytes, m.respBytes)
	}
	return m
}

// Observe counts one finished request: its duration and the bytes of the
// request and the response.
func (m *Requests) Observe(l *RequestLabels, d time.Duration, requestBytes, responseBytes int64) {
	if m == nil {
		return
	}
	n := *l
	if n.RequestProtocol == "" {
		n.RequestProtocol = ProtocolHTTP
	}
	n.Labels = n.normalized()
	s := m.lookup(&n)
	s.total.Inc()
	s.duration.Observe(float64(d) / float64(time.Millisecond))
	s.reqBytes.Observe(float64(requestBytes))
	s.respBytes.Observe(float64(responseBytes))
}

// lookup returns the metrics of the normalized label set n.
func (m *Requests) lookup(n *RequestLabels) *requestSeries {
	return m.series.get(*n, func() *requestSeries {
		v := n.values()
		return &requestSeries{
			total:     m.total.WithLabelValues(v...),
			duration:  m.duration.WithLabelValues(v...),
			reqBytes:  m.reqBytes.WithLabelValues(v...),
			respBytes: m.respBytes.WithLabelValues(v...),
		}
	})
}
