package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metric names of HBONE's transports. Istio's istio_tcp_* metrics keep
// Istio's labels exactly; these add the transport.
const (
	TunnelsName   = "ztunnel_hbone_tunnels_total"
	FallbacksName = "ztunnel_hbone_quic_fallbacks_total"
)

// Transports of an HBONE tunnel: the label values of TunnelsName and the
// access log's transport field.
const (
	TransportTCP  = "tcp"  // HTTP/2 over TLS over TCP 15008
	TransportQUIC = "quic" // HTTP/3 over QUIC over UDP 15008
)

// quicMetrics count tunnels by direction and transport, and fallbacks
// from QUIC to TCP. A nil *quicMetrics counts nothing.
type quicMetrics struct {
	tunnels   *prometheus.CounterVec
	fallbacks *prometheus.CounterVec
}

// newQUICMetrics creates the metrics and registers them with reg (if not
// nil).
func newQUICMetrics(reg prometheus.Registerer) *quicMetrics {
	m := &quicMetrics{
		tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TunnelsName,
			Help: "The total number of HBONE tunnels established, by direction (inbound, outbound) and transport (tcp, quic)",
		}, []string{"direction", "transport"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: FallbacksName,
			Help: "The total number of outbound tunnels that fell back from QUIC to TCP, by reason (failed: the QUIC handshake failed now; silent: the peer of a pooled QUIC connection stopped answering; remembered: a recent failure to the same address)",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.tunnels, m.fallbacks)
	}
	return m
}

func (m *quicMetrics) tunnel(direction, transport string) {
	if m != nil {
		m.tunnels.WithLabelValues(direction, transport).Inc()
	}
}

func (m *quicMetrics) fallback(reason string) {
	if m != nil {
		m.fallbacks.WithLabelValues(reason).Inc()
	}
}
