package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/h3"
	"github.com/ambient-go/mesh/pkg/state"
)

// QUIC modes (Config.QUIC.Mode, ztunnel's --quic flag).
const (
	// QUICOff: HBONE over TCP only, as Istio's ztunnel. The default.
	QUICOff = "off"
	// QUICOn: ztunnel also serves HBONE over QUIC on UDP 15008 (peers that
	// prefer QUIC use it) but dials over TCP. Safe anywhere: it changes
	// nothing for peers that do not ask.
	QUICOn = "on"
	// QUICPrefer: serve as QUICOn, and dial HBONE over QUIC first, falling
	// back to TCP when the QUIC handshake fails (within the h3.Pool's
	// HandshakeTimeout) or the peer of a pooled QUIC connection went silent
	// (within its PeerTimeout), remembered for QUICConfig.Hold.
	QUICPrefer = "prefer"
)

// ParseQUICMode checks a mode name; "" is QUICOff.
func ParseQUICMode(s string) (string, error) {
	switch s {
	case "", QUICOff:
		return QUICOff, nil
	case QUICOn, QUICPrefer:
		return s, nil
	}
	return "", fmt.Errorf("quic mode %q: want off, on or prefer", s)
}

// QUICConfig is HBONE over QUIC in the proxy. The zero value is QUICOff.
type QUICConfig struct {
	// Mode is QUICOff (default), QUICOn or QUICPrefer.
	Mode string
	// Pool dials HBONE over QUIC; required with QUICPrefer. Its
	// HandshakeTimeout (a new connection) and PeerTimeout (a pooled one
	// whose peer went silent) are how long a tunnel waits for QUIC before
	// it falls back to TCP: keep them well under the connect timeout
	// (ztunnel uses DefaultQUICTimeout) so that the TCP dial after gets
	// the rest.
	Pool *h3.Pool
	// Namespaces, if not empty, limits prefer to the source workloads of
	// these namespaces (a gradual rollout; the bench's mesh-quic variant);
	// the others dial over TCP.
	Namespaces []string
	// Hold is how long after a failed QUIC handshake the tunnels to the
	// same address go over TCP at once; default 5 min.
	Hold time.Duration
	// Registerer, if not nil, gets the transport metrics
	// (ztunnel_hbone_tunnels_total, ztunnel_hbone_quic_fallbacks_total).
	Registerer prometheus.Registerer
}

// DefaultQUICTimeout is the QUIC handshake and peer timeout ztunnel gives
// its h3.Pool: past it, a tunnel falls back to TCP.
const DefaultQUICTimeout = time.Second

// quicState is the proxy's side of HBONE over QUIC: which destinations
// failed recently, and the metrics.
type quicState struct {
	cfg     QUICConfig
	metrics *quicMetrics
	log     *slog.Logger
	now     func() time.Time

	mu     sync.Mutex
	failed map[netip.AddrPort]time.Time // destination → until when it goes over TCP
}

func newQUICState(cfg QUICConfig, log *slog.Logger) (*quicState, error) {
	mode, err := ParseQUICMode(cfg.Mode)
	if err != nil {
		return nil, err
	}
	cfg.Mode = mode
	if mode == QUICPrefer && cfg.Pool == nil {
		return nil, errors.New("proxy: QUIC mode prefer needs a Pool")
	}
	if cfg.Hold <= 0 {
		cfg.Hold = 5 * time.Minute
	}
	return &quicState{
		cfg:     cfg,
		metrics: newQUICMetrics(cfg.Registerer),
		log:     log.With("component", "quic"),
		now:     time.Now,
		failed:  map[netip.AddrPort]time.Time{},
	}, nil
}

// recentlyFailed reports whether a QUIC handshake with addr failed less
// than Hold ago.
func (q *quicState) recentlyFailed(addr netip.AddrPort) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	until, ok := q.failed[addr]
	if !ok {
		return false
	}
	if q.now().Before(until) {
		return true
	}
	delete(q.failed, addr)
	return false
}

// fail remembers that QUIC to addr failed.
func (q *quicState) fail(addr netip.AddrPort) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	for a, until := range q.failed { // bounded by the peers of the last Hold
		if !now.Before(until) {
			delete(q.failed, a)
		}
	}
	q.failed[addr] = now.Add(q.cfg.Hold)
}

// dialTunnel opens an outbound tunnel of the local workload src to t:
// over QUIC first in mode prefer (unless QUIC to t.Addr failed recently,
// or src is not in QUICConfig.Namespaces), and over TCP when QUIC is off,
// remembered failed, or failed now: its handshake failed (within the
// pool's HandshakeTimeout), or the peer of the pooled QUIC connection
// went silent (within its PeerTimeout; the connection left the pool). An
// answer to the CONNECT (an *hbone.StatusError) and the other errors
// after the QUIC connection was up are returned as they are: the
// destination may have acted on the CONNECT.
func (p *Proxy) dialTunnel(ctx context.Context, src *state.Workload, t hbone.Target) (net.Conn, error) {
	q := p.quic
	if q.eligible(src, &t) {
		if !q.recentlyFailed(t.Addr) {
			c, err := q.cfg.Pool.Dial(ctx, t)
			if err == nil {
				q.metrics.tunnel("outbound", TransportQUIC)
				return c, nil
			}
			if ctx.Err() != nil {
				return nil, err
			}
			switch {
			case errors.Is(err, h3.ErrHandshake):
				q.fail(t.Addr)
				q.metrics.fallback("failed")
				q.log.Info("quic handshake failed, falling back to tcp", "addr", t.Addr.String(), "hold", q.cfg.Hold, "error", err)
			case errors.Is(err, h3.ErrPeerSilent):
				// No byte of the tunnel left: a TCP tunnel replaces it.
				q.fail(t.Addr)
				q.metrics.fallback("silent")
				q.log.Info("quic peer silent, falling back to tcp", "addr", t.Addr.String(), "hold", q.cfg.Hold, "error", err)
			default:
				return nil, err
			}
		} else {
			q.metrics.fallback("remembered")
		}
	}
	c, err := p.cfg.Pool.Dial(ctx, t)
	if err != nil {
		return nil, err // not a nil *hbone.Conn in a non-nil net.Conn
	}
	q.metrics.tunnel("outbound", TransportTCP)
	return c, nil
}

// eligible reports whether a tunnel of src to t tries QUIC: in mode
// prefer, for a source in Namespaces (if set), and only to the target's
// own ztunnel (the :authority's address is the HBONE server's), not to a
// waypoint, which serves HBONE over TCP only.
func (q *quicState) eligible(src *state.Workload, t *hbone.Target) bool {
	if q.cfg.Mode != QUICPrefer || (len(q.cfg.Namespaces) > 0 && !slices.Contains(q.cfg.Namespaces, src.Namespace)) {
		return false
	}
	authority, err := netip.ParseAddrPort(t.Authority)
	return err == nil && authority.Addr() == t.Addr.Addr()
}

// transportOf names the transport of an upstream connection: TransportQUIC
// for an HBONE over QUIC tunnel, TransportTCP for one over TCP, "" for a
// direct connection.
func transportOf(c net.Conn) string {
	switch c.(type) {
	case *h3.Conn:
		return TransportQUIC
	case *hbone.Conn:
		return TransportTCP
	}
	return ""
}
