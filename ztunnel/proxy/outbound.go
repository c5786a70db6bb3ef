package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/accesslog"
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
	return p.serve(l, ListenerOutbound, func(c net.Conn) {
		defer c.Close()
		target, err := capture.OriginalDst(c)
		if err != nil {
			p.log.Warn("reading original destination", "src", c.RemoteAddr().String(), "error", err)
			return
		}
		w := p.cfg.Store.WorkloadByAddr(src)
		if w == nil {
			p.log.Warn("captured connection from an unknown workload", "src", src.String(), "dst", target.String())
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		p.Outbound(ctx, c, w, target, "", nil)
	})
}

// Outbound carries the connection c of the local workload src to target,
// or, when host is set, to the service of that name on target's port. ready, if not nil, is
// called once the upstream is connected or has failed, before any byte is
// copied; an error it returns aborts the connection.
func (p *Proxy) Outbound(ctx context.Context, c net.Conn, src *state.Workload, target netip.AddrPort, host string, ready func(error) error) {
	start := time.Now()
	clientAddr := addrPort(c.RemoteAddr())
	rec := &accesslog.Record{
		Direction:    "outbound",
		Start:        start,
		SrcAddr:      clientAddr,
		SrcWorkload:  src.Name,
		SrcNamespace: src.Namespace,
		SrcIdentity:  src.ID.String(),
	}
	labels := &telemetry.Labels{
		Reporter:        "source",
		SourcePrincipal: src.ID.String(),
		RequestProtocol: "tcp",
	}
	labels.SetSource(src)

	dst, err := p.resolve(src, clientAddr.Addr(), target, host)
	rec.DstAddr = target
	if dst.addr.IsValid() {
		rec.DstAddr = dst.addr
	}
	if dst.service != nil {
		rec.DstService = dst.service.Hostname
		labels.SetService(dst.service)
	}
	// Through a waypoint, the destination workload is the waypoint's pod
	// (its labels, its identity), the destination service the one
	// addressed, as Istio's ztunnel reports them.
	dstW := dst.workload
	if dst.waypoint != nil {
		dstW = dst.waypoint.Workload
	}
	if dstW != nil {
		rec.DstWorkload, rec.DstNamespace = dstW.Name, dstW.Namespace
		labels.SetDestination(dstW)
	}

	var upstream net.Conn
	if err == nil {
		switch w := dst.workload; {
		case dst.waypoint != nil:
			// As Istio logs it: dst.addr is where the connection went (the
			// waypoint's 15008), dst.hbone_addr the :authority.
			wp := dst.waypoint
			rec.DstAddr, rec.DstHBONEAddr = wp.Addr, dst.addr
			rec.DstIdentity = wp.Workload.ID.String()
			labels.DestinationPrincipal = wp.Workload.ID.String()
			labels.ConnectionSecurityPolicy = "mutual_tls"
			upstream, err = p.dialHBONE(ctx, src, clientAddr, dst.service, dst.addr, wp.Addr, wp.IDs)
		case w != nil && w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE:
			hboneAddr := netip.AddrPortFrom(dst.addr.Addr(), p.cfg.HBONEPort)
			rec.DstAddr, rec.DstHBONEAddr = hboneAddr, dst.addr
			rec.DstIdentity = w.ID.String()
			labels.DestinationPrincipal = w.ID.String()
			labels.ConnectionSecurityPolicy = "mutual_tls"
			ids := []spiffeid.ID{w.ID}
			if dst.service != nil {
				ids = append(ids, sans(dst.service)...)
			}
			upstream, err = p.dialHBONE(ctx, src, clientAddr, dst.service, dst.addr, hboneAddr, ids)
		default:
			labels.ConnectionSecurityPolicy = "unknown"
			upstream, err = p.dialDirect(ctx, src.Addrs[0], src.Addrs[0], dst.addr)
		}
	}
	if err != nil {
		labels.ResponseFlags = "CONNECT"
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			labels.ResponseFlags = "DENY"
		}
	}
	if ready != nil {
		if rerr := ready(err); rerr != nil && err == nil {
			err = rerr
		}
	}
	m := p.cfg.Metrics.Open(labels)
	if err != nil {
		m.Close()
		if upstream != nil {
			upstream.Close()
		}
		rec.Err = err
		rec.ResponseFlags = labels.ResponseFlags
		rec.Duration = time.Since(start)
		p.cfg.AccessLog.Log(ctx, rec)
		return
	}
	if !p.track(upstream) {
		m.Close()
		return
	}
	defer p.untrack(upstream)
	sent, recv, err := hbone.Relay(c, upstream)
	m.AddReceived(sent)
	m.AddSent(recv)
	m.Close()
	rec.BytesSent, rec.BytesRecv = sent, recv
	rec.Duration = time.Since(start)
	rec.Err = ignoreClosed(err)
	p.cfg.AccessLog.Log(ctx, rec)
}
