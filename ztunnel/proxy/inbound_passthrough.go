package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// ServePlaintextInbound accepts, on l (port 15006 inside the network
// namespace of the local pod whose address is pod), the plaintext TCP
// connections that capture TPROXY'd to ztunnel, and carries each to the
// application it was addressed to, dialing it from the client's own
// address, until l is closed. There is no peer identity:
// connection_security_policy is "unknown".
func (p *Proxy) ServePlaintextInbound(l net.Listener, pod netip.Addr) error {
	return p.serve(l, ListenerInboundPlaintext, func(c net.Conn) {
		defer c.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		p.plaintextInbound(ctx, c, pod)
	})
}

func (p *Proxy) plaintextInbound(ctx context.Context, c net.Conn, pod netip.Addr) {
	client, dst := addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
	r := p.inboundResult(client, "", telemetry.PolicyUnknown)
	r.setDestinationAddr(dst, netip.AddrPort{})
	if w := p.cfg.Store.WorkloadByAddr(client.Addr()); w != nil {
		r.setSource(w)
	}
	fail := func(err error) {
		r.setFlags(telemetry.FlagConnect)
		r.finish(ctx, err)
	}
	dstW := p.cfg.Store.WorkloadByAddr(dst.Addr())
	if dstW == nil || dst.Addr() != pod {
		fail(fmt.Errorf("%v: %w", dst, errNoWorkload))
		return
	}
	r.setDestination(dstW)
	r.setDestinationIdentity(dstW.ID)
	if p.reserved[dst.Port()] {
		fail(fmt.Errorf("%v: %w", dst, ErrIllegalPort))
		return
	}
	// A plaintext client has no identity: a STRICT PeerAuthentication (a
	// DENY of connections without a principal) or any principal-based
	// ALLOW refuses it. Refused connections are reset.
	ac := authz.Conn{Src: client.Addr(), Dst: dst}
	if d := p.Authorize(ac); !d.Allow {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		r.setPolicy(d.Policy)
		r.setFlags(telemetry.FlagDeny)
		r.finish(ctx, policyError(d))
		return
	}
	upstream, err := p.dialDirect(ctx, pod, client.Addr(), dst)
	if err != nil {
		fail(err)
		return
	}
	// c is tracked by serve already: upstream is carried during a drain
	// too (trackUpstream).
	p.relayInbound(ctx, r, c, upstream, upstream, true, ac)
}
