package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/socks5"
)

// ServeSOCKS accepts, on l, SOCKS5 clients of the local workload whose
// address is src, until l is closed: local mode's stand-in for capture,
// each CONNECT is carried by Outbound. Only connections from src itself
// are served: the listener acts with the workload's identity, and anything
// else reaching it (ztunnel's own inbound path, dialing from a remote
// client's address, for one) would launder that identity.
func (p *Proxy) ServeSOCKS(l net.Listener, src netip.Addr) error {
	return p.serve(l, ListenerSOCKS5, func(c net.Conn) {
		if from := addrPort(c.RemoteAddr()).Addr(); from != src {
			p.log.Debug("socks5 connection refused: not from the pod", "src", c.RemoteAddr().String(), "pod", src.String())
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			return
		}
		p.serveSOCKSConn(c, src)
	})
}

func (p *Proxy) serveSOCKSConn(c net.Conn, srcAddr netip.Addr) {
	defer c.Close()
	req, err := socks5.ReadRequest(c, p.cfg.HandshakeTimeout)
	if err != nil {
		p.log.Debug("socks5 handshake failed", "src", c.RemoteAddr().String(), "error", err)
		return
	}
	src := p.cfg.Store.WorkloadByAddr(srcAddr)
	if src == nil {
		socks5.WriteReply(c, socks5.GeneralFailure)
		return
	}
	if len(req.Early) > 0 {
		c = &earlyConn{Conn: c, early: req.Early}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.Outbound(ctx, c, src, req.Addr, req.Host, func(err error) error {
		return socks5.WriteReply(c, socksReply(err))
	})
}

// socksReply is the SOCKS5 reply to an outbound connection that was
// established (err nil) or failed.
func socksReply(err error) byte {
	var se *hbone.StatusError
	switch {
	case err == nil:
		return socks5.Succeeded
	case errors.Is(err, ErrUnknownHost):
		return socks5.HostUnreachable
	case errors.Is(err, ErrIllegalPort):
		return socks5.NotAllowed
	case errors.As(err, &se) && se.Code == http.StatusUnauthorized:
		return socks5.NotAllowed
	default:
		return socks5.ConnectionRefused
	}
}

// earlyConn is a client connection whose first bytes were read during the
// SOCKS5 handshake: Read returns them first.
type earlyConn struct {
	net.Conn
	early []byte
}

func (c *earlyConn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the client connection.
func (c *earlyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
