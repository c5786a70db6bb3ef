// Package telemetry holds ztunnel's Prometheus metrics, named and labelled as
// Istio's ztunnel names them (istio_tcp_connections_opened_total and friends),
// so that Istio dashboards and queries work unchanged.
//
// The metrics are counted per connection: Metrics.Open resolves the four
// counters of a connection's label set once and returns a Conn handle; byte
// counts then cost one atomic add each, and Close counts the closed
// connection. Nothing here is global: Metrics is built from a
// prometheus.Registerer.
package telemetry

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, as Istio exposes them.
const (
	ConnectionsOpenedName = "istio_tcp_connections_opened_total"
	ConnectionsClosedName = "istio_tcp_connections_closed_total"
	SentBytesName         = "istio_tcp_sent_bytes_total"
	ReceivedBytesName     = "istio_tcp_received_bytes_total"
)

// Label values with a meaning in Istio.
const (
	ReporterSource      = "source"      // the connection's client side (outbound)
	ReporterDestination = "destination" // the connection's server side (inbound)

	ProtocolTCP = "tcp"

	FlagNone    = "-"       // no flag: the connection went through
	FlagDeny    = "DENY"    // denied by authorization policy
	FlagConnect = "CONNECT" // the upstream connection could not be established

	PolicyMutualTLS = "mutual_tls"
	PolicyUnknown   = "unknown"

	// Unknown is reported for every label left empty, but response_flags
	// (FlagNone) and request_protocol (ProtocolTCP).
	Unknown = "unknown"
)

// labelNames are the metric labels, in Istio's order; Labels.values returns
// the values in the same order.
var labelNames = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

// LabelNames returns the metric label names in the order they are declared.
func LabelNames() []string { return append([]string(nil), labelNames...) }

// Labels are one connection's metric labels; empty strings are reported as
// "unknown", except ResponseFlags (reported as "-") and RequestProtocol
// (reported as "tcp"). Principals are SPIFFE IDs as Istio prints them
// (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
type Labels struct {
	Reporter                     string // ReporterSource or ReporterDestination
	SourceWorkload               string
	SourceCanonicalService       string
	SourceCanonicalRevision      string
	SourceWorkloadNamespace      string
	SourcePrincipal              string
	SourceApp                    string
	SourceVersion                string
	SourceCluster                string
	DestinationService           string // the service hostname (FQDN)
	DestinationServiceNamespace  string
	DestinationServiceName       string
	DestinationWorkload          string
	DestinationCanonicalService  string
	DestinationCanonicalRevision string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string
	DestinationApp               string
	DestinationVersion           string
	DestinationCluster           string
	RequestProtocol              string // default "tcp"
	ResponseFlags                string // default "-"; FlagDeny, FlagConnect, ...
	ConnectionSecurityPolicy     string // PolicyMutualTLS or PolicyUnknown (default)
}

// normalized returns l with the defaults of empty fields filled in.
func (l *Labels) normalized() Labels {
	n := *l
	for _, p := range [...]*string{
		&n.Reporter,
		&n.SourceWorkload, &n.SourceCanonicalService, &n.SourceCanonicalRevision,
		&n.SourceWorkloadNamespace, &n.SourcePrincipal, &n.SourceApp, &n.SourceVersion,
		&n.SourceCluster,
		&n.DestinationService, &n.DestinationServiceNamespace, &n.DestinationServiceName,
		&n.DestinationWorkload, &n.DestinationCanonicalService, &n.DestinationCanonicalRevision,
		&n.DestinationWorkloadNamespace, &n.DestinationPrincipal, &n.DestinationApp,
		&n.DestinationVersion, &n.DestinationCluster,
		&n.ConnectionSecurityPolicy,
	} {
		if *p == "" {
			*p = Unknown
		}
	}
	if n.RequestProtocol == "" {
		n.RequestProtocol = ProtocolTCP
	}
	if n.ResponseFlags == "" {
		n.ResponseFlags = FlagNone
	}
	return n
}

// values returns the label values in labelNames order.
func (l *Labels) values() []string {
	return []string{
		l.Reporter,
		l.SourceWorkload, l.SourceCanonicalService, l.SourceCanonicalRevision,
		l.SourceWorkloadNamespace, l.SourcePrincipal, l.SourceApp, l.SourceVersion,
		l.SourceCluster,
		l.DestinationService, l.DestinationServiceNamespace, l.DestinationServiceName,
		l.DestinationWorkload, l.DestinationCanonicalService, l.DestinationCanonicalRevision,
		l.DestinationWorkloadNamespace, l.DestinationPrincipal, l.DestinationApp,
		l.DestinationVersion, l.DestinationCluster,
		l.RequestProtocol, l.ResponseFlags, l.ConnectionSecurityPolicy,
	}
}

// Metrics are ztunnel's TCP metrics. A nil *Metrics is valid: Open returns a
// nil *Conn, whose methods do nothing.
type Metrics struct {
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec

	// series caches the counters of each label set seen, keyed by the
	// normalized labels, so that Open hashes the labels once instead of four
	// times. Series are never removed, as in a CounterVec.
	series seriesCache[Labels, *series]
}

// series are the four counters of one label set.
type series struct {
	labels                         Labels // normalized
	opened, closed, sent, received prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg. It panics if
// they are already registered with reg, like prometheus.MustRegister.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	newVec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labelNames)
	}
	m := &Metrics{
		opened:   newVec(ConnectionsOpenedName, "The total number of TCP connections opened"),
		closed:   newVec(ConnectionsClosedName, "The total number of TCP connections closed"),
		sent:     newVec(SentBytesName, "The size of total bytes sent during response in case of a TCP connection"),
		received: newVec(ReceivedBytesName, "The size of total bytes received during request in case of a TCP connection"),
	}
	if reg != nil {
		reg.MustRegister(m.opened, m.closed, m.sent, m.received)
	}
	return m
}

// lookup returns the counters of the normalized label set n.
func (m *Metrics) lookup(n *Labels) *series {
	return m.series.get(*n, func() *series {
		v := n.values()
		return &series{
			labels:   *n,
			opened:   m.opened.WithLabelValues(v...),
			closed:   m.closed.WithLabelValues(v...),
			sent:     m.sent.WithLabelValues(v...),
			received: m.received.WithLabelValues(v...),
		}
	})
}

// Open counts an opened connection and returns a handle bound to its label
// set. l is not retained.
func (m *Metrics) Open(l *Labels) *Conn {
	if m == nil {
		return nil
	}
	n := l.normalized()
	s := m.lookup(&n)
	s.opened.Inc()
	return &Conn{m: m, s: s}
}

// Conn is the metrics handle of one connection. Its methods are safe for
// concurrent use; a nil *Conn does nothing.
//
// Bytes follow Istio's request/response convention for both reporters:
// received bytes flow from the client to the server (the request), sent bytes
// from the server back to the client (the response).
type Conn struct {
	m            *Metrics
	s            *series
	sentN, recvN atomic.Int64
	closed       atomic.Bool
}

// AddSent adds n bytes sent from the server to the client
// (istio_tcp_sent_bytes_total). It may be called during the connection.
func (c *Conn) AddSent(n int64) {
	if c == nil || n <= 0 {
		return
	}
	c.sentN.Add(n)
	c.s.sent.Add(float64(n))
}

// AddReceived adds n bytes sent from the client to the server
// (istio_tcp_received_bytes_total). It may be called during the connection.
func (c *Conn) AddReceived(n int64) {
	if c == nil || n <= 0 {
		return
	}
	c.recvN.Add(n)
	c.s.received.Add(float64(n))
}

// Sent returns the bytes added with AddSent so far.
func (c *Conn) Sent() int64 {
	if c == nil {
		return 0
	}
	return c.sentN.Load()
}

// Received returns the bytes added with AddReceived so far.
func (c *Conn) Received() int64 {
	if c == nil {
		return 0
	}
	return c.recvN.Load()
}

// Close counts the closed connection under the labels given to Open. Only
// the first call to Close or CloseWithFlags counts.
func (c *Conn) Close() {
	if c == nil || !c.closed.CompareAndSwap(false, true) {
		return
	}
	c.s.closed.Inc()
}

// CloseWithFlags is Close with response_flags set to flags ("" meaning "-")
// on the closed counter, for an outcome known only at the end (as Istio,
// which counts the opened connection with "-" and the closed one with, say,
// "DENY" or "CONNECT").
func (c *Conn) CloseWithFlags(flags string) {
	if c == nil || !c.closed.CompareAndSwap(false, true) {
		return
	}
	if flags == "" {
		flags = FlagNone
	}
	if flags == c.s.labels.ResponseFlags {
		c.s.closed.Inc()
		return
	}
	// A rare outcome (denial, failed dial): look the counter up directly
	// rather than creating a full series of zero-valued counters.
	n := c.s.labels
	n.ResponseFlags = flags
	c.m.closed.WithLabelValues(n.values()...).Inc()
}
