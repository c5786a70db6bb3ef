package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
)

// ServeOutboundCapture accepts, on l (port 15001 inside the pod's network
// namespace), the connections that capture redirected from the local
// workload whose address is src, and carries each to its original
// destination (SO_ORIGINAL_DST), until l is closed.
func (p *Proxy) ServeOutboundCapture(l net.Listener, src netip.Addr) error {
	return p.ServeOutboundCaptureFor(l, src, "")
}

// ServeOutboundCaptureFor is ServeOutboundCapture for the local workload
// with this uid (found by src when uid is empty). A pod is captured during
// its CNI ADD, before istiod-lite knows its IP: while its workload has no
// address, src, the pod's IP from its CNI result, stands in for it.
func (p *Proxy) ServeOutboundCaptureFor(l net.Listener, src netip.Addr, uid string) error {
	return p.serve(l, ListenerOutbound, func(c net.Conn) {
		defer c.Close()
		target, err := capture.OriginalDst(c)
		if err != nil {
			p.log.Warn("reading original destination", "src", c.RemoteAddr().String(), "error", err)
			return
		}
		w := p.localWorkload(src, uid)
		if w == nil {
			p.log.Warn("captured connection from an unknown workload", "src", src.String(), "dst", target.String())
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		p.Outbound(ctx, c, w, target, "", nil)
	})
}

// localWorkload returns the captured local workload: by uid, with src as
// its address while the store has none, or by src when uid is empty.
func (p *Proxy) localWorkload(src netip.Addr, uid string) *state.Workload {
	if uid == "" {
		return p.cfg.Store.WorkloadByAddr(src)
	}
	w := p.cfg.Store.WorkloadByUID(uid)
	if w == nil || len(w.Addrs) > 0 {
		return w
	}
	c := *w
	c.Addrs = []netip.Addr{src}
	return &c
}

// Outbound carries the connection c of the local workload src to target,
// or, when host is set, to the service of that name on target's port.
// ready, if not nil, is called once the upstream is connected or has
// failed, before any byte is copied; an error it returns aborts the
// connection.
func (p *Proxy) Outbound(ctx context.Context, c net.Conn, src *state.Workload, target netip.AddrPort, host string, ready func(error) error) {
	clientAddr := addrPort(c.RemoteAddr())
	r := p.outboundResult(src, clientAddr)
	pod, ok := p.acquirePodConn(src)
	if !ok {
		p.cfg.Limits.Hit(LimitConnsPerPod)
		r.setDestinationAddr(target, netip.AddrPort{})
		r.setFlags(FlagLimit)
		reset(c)
		r.finish(ctx, ErrConnsPerPod)
		return
	}
	defer p.releasePodConn(pod)
	p.applySocketOptions(c)

	dst, err := p.resolve(src, clientAddr.Addr(), target, host)
	if dst.addr.IsValid() {
		r.setDestinationAddr(dst.addr, netip.AddrPort{})
	} else {
		r.setDestinationAddr(target, netip.AddrPort{})
	}
	if dst.service != nil {
		r.setService(dst.service)
	}
	// Through a waypoint, the destination workload is the waypoint's pod
	// (its labels, its identity), the destination service the one
	// addressed, as Istio's ztunnel reports them.
	dstW := dst.workload
	if dst.waypoint != nil {
		dstW = dst.waypoint.Workload
	}
	if dstW != nil {
		r.setDestination(dstW)
	}

	var upstream net.Conn
	if err == nil {
		// A client that resets its connection ends the dial; one that
		// closes is named in the dial's error (clientgone.go).
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		watch := watchClient(c, r.rec.Start, cancel)
		upstream, err = p.connect(dctx, r, src, clientAddr, dst)
		err = watch.stop(err)
		r.setTransport(transportOf(upstream))
	}
	if err != nil {
		r.setFlags(telemetry.FlagConnect)
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			r.setFlags(telemetry.FlagDeny)
		}
	}
	if ready != nil {
		if rerr := ready(err); rerr != nil && err == nil {
			err = rerr
		}
	}
	r.open()
	if err != nil {
		if upstream != nil {
			upstream.Close()
		}
		r.finish(ctx, err)
		return
	}
	// c is tracked by the accept loop (serve): the upstream is carried
	// during a drain too (trackUpstream).
	if !p.trackUpstream(upstream) {
		r.discard()
		return
	}
	defer p.untrack(upstream)
	sent, recv, err := hbone.Relay(c, upstream)
	r.relayed(sent, recv)
	r.finish(ctx, p.relayErr(upstream, ignoreClosed(err)))
}

// connect opens the upstream of an outbound connection to the resolved
// dst: HBONE to its waypoint, HBONE to its ztunnel when it is in the mesh,
// or a plain TCP connection from the source pod's address.
func (p *Proxy) connect(ctx context.Context, r *connResult, src *state.Workload, clientAddr netip.AddrPort, dst destination) (net.Conn, error) {
	switch w := dst.workload; {
	case dst.waypoint != nil:
		// As Istio logs it: dst.addr is where the connection went (the
		// waypoint's 15008), dst.hbone_addr the :authority.
		wp := dst.waypoint
		r.setDestinationAddr(wp.Addr, dst.addr)
		r.setDestinationIdentity(wp.Workload.ID)
		r.setSecurity(telemetry.PolicyMutualTLS)
		return p.dialHBONE(ctx, src, clientAddr, dst.service, dst.addr, wp.Addr, wp.IDs)
	case w != nil && w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE:
		hboneAddr := netip.AddrPortFrom(dst.addr.Addr(), p.cfg.HBONEPort)
		r.setDestinationAddr(hboneAddr, dst.addr)
		r.setDestinationIdentity(w.ID)
		r.setSecurity(telemetry.PolicyMutualTLS)
		ids := []spiffeid.ID{w.ID}
		if dst.service != nil {
			ids = append(ids, sans(dst.service)...)
		}
		return p.dialHBONE(ctx, src, clientAddr, dst.service, dst.addr, hboneAddr, ids)
	default:
		r.setSecurity(telemetry.PolicyUnknown)
		return p.dialDirect(ctx, src.Addrs[0], src.Addrs[0], dst.addr)
	}
}
