package proxy

import (
	"context"
	"net"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/h3"
)

var _ h3.Handler = (*Proxy)(nil)

// tunnel is the answering side of an inbound CONNECT: hbone's over TCP or
// h3's over QUIC.
type tunnel interface {
	Accept() (net.Conn, error)
	Reject(status int, reason string)
}

type tcpTunnel struct{ t *hbone.Tunnel }

func (t tcpTunnel) Accept() (net.Conn, error) {
	c, err := t.t.Accept()
	if err != nil {
		return nil, err // not a nil *hbone.Conn in a non-nil net.Conn
	}
	return c, nil
}

func (t tcpTunnel) Reject(status int, reason string) { t.t.Reject(status, reason) }

type quicTunnel struct{ t *h3.Tunnel }

func (t quicTunnel) Accept() (net.Conn, error) {
	c, err := t.t.Accept()
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (t quicTunnel) Reject(status int, reason string) { t.t.Reject(status, reason) }

// ServeH3 is the inbound side over QUIC: one CONNECT on UDP 15008, checked
// and answered exactly as ServeHBONE answers one on TCP 15008 (400, 503,
// 401, then the application dial and 200), with the same access log record
// and metrics; the record's transport is "quic".
func (p *Proxy) ServeH3(ctx context.Context, req *hbone.Request, t *h3.Tunnel) {
	p.serveTunnel(ctx, req, quicTunnel{t}, TransportQUIC)
}
