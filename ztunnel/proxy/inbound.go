package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

var _ hbone.Handler = (*Proxy)(nil)

// ServeHBONE is the inbound side: one CONNECT from another ztunnel (or a
// waypoint) to a workload on this node.
func (p *Proxy) ServeHBONE(ctx context.Context, req *hbone.Request, t *hbone.Tunnel) {
	start := time.Now()
	rec := &accesslog.Record{
		Direction:    "inbound",
		Start:        start,
		SrcAddr:      req.RemoteAddr,
		SrcIdentity:  req.PeerID.String(),
		DstAddr:      req.Authority,
		DstHBONEAddr: req.Authority,
	}
	labels := &telemetry.Labels{
		Reporter:                 "destination",
		SourcePrincipal:          req.PeerID.String(),
		RequestProtocol:          "tcp",
		ConnectionSecurityPolicy: "mutual_tls",
	}
	if fwd, ok := req.ForwardedFor(); ok {
		rec.SrcAddr = fwd
	}
	if host := forwardedHost(req.Header.Get("Forwarded")); host != "" {
		if svc := p.cfg.Store.ServiceByHostname(host); svc != nil {
			rec.DstService = svc.Hostname
			labels.SetService(svc)
		}
	}
	if srcW := p.cfg.Store.WorkloadByAddr(req.RemoteAddr.Addr()); srcW != nil {
		rec.SrcWorkload, rec.SrcNamespace = srcW.Name, srcW.Namespace
		labels.SetSource(srcW)
	}
	fail := func(code int, flags string, err error) {
		t.Reject(code, err.Error())
		labels.ResponseFlags = flags
		p.cfg.Metrics.Open(labels).Close()
		rec.Err = fmt.Errorf("%d: %w", code, err)
		rec.ResponseFlags = flags
		rec.Duration = time.Since(start)
		p.cfg.AccessLog.Log(ctx, rec)
	}

	// The tunnel ends at the local workload the client dialed: the
	// authority names it, or, when this workload is a waypoint, something
	// it is the waypoint of (a service VIP or a pod IP, Istio's
	// validate_destination); then the authority's port on this workload
	// is the target.
	local := req.LocalAddr.Addr()
	dstW := p.cfg.Store.WorkloadByAddr(local)
	if req.Authority.Addr() != local && (dstW == nil || !p.cfg.Store.IsWaypointFor(dstW, local, req.Authority.Addr())) {
		fail(http.StatusBadRequest, "CONNECT", errAuthorityMis)
		return
	}
	if dstW == nil {
		fail(http.StatusServiceUnavailable, "CONNECT", errNoWorkload)
		return
	}
	target := netip.AddrPortFrom(local, req.Authority.Port())
	rec.DstWorkload, rec.DstNamespace, rec.DstIdentity = dstW.Name, dstW.Namespace, dstW.ID.String()
	labels.SetDestination(dstW)
	labels.DestinationPrincipal = dstW.ID.String()
	if p.reserved[target.Port()] {
		fail(http.StatusBadRequest, "CONNECT", ErrIllegalPort)
		return
	}
	ac := authz.Conn{Src: req.RemoteAddr.Addr(), Dst: target, Identity: req.PeerID.String()}
	if d := p.Authorize(ac); !d.Allow {
		rec.Policy = d.Policy
		fail(http.StatusUnauthorized, "DENY", policyError(d))
		return
	}

	// Dial the application from the client's own address, so that it sees
	// the real source.
	upstream, err := p.dialDirect(ctx, local, req.RemoteAddr.Addr(), target)
	if err != nil {
		fail(http.StatusServiceUnavailable, "CONNECT", err)
		return
	}
	down, err := t.Accept()
	if err != nil {
		upstream.Close()
		fail(http.StatusServiceUnavailable, "CONNECT", err)
		return
	}
	p.relayInbound(ctx, down, upstream, down, ac, labels, rec)
}

// relayInbound carries an accepted inbound connection: it copies between
// the client's side down and the application's upstream, closing both if a
// policy change denies the connection, then counts and logs it. tracked is
// the connection to register for Close (the one its caller has not).
func (p *Proxy) relayInbound(ctx context.Context, down, upstream, tracked net.Conn, ac authz.Conn, labels *telemetry.Labels, rec *accesslog.Record) {
	m := p.cfg.Metrics.Open(labels)
	if !p.track(tracked) {
		upstream.Close()
		m.Close()
		return
	}
	defer p.untrack(tracked)
	ic := p.watchInbound(ac, down, upstream)
	defer p.unwatchInbound(ic)
	recv, sent, err := hbone.Relay(down, upstream)
	m.AddReceived(recv)
	m.AddSent(sent)
	m.Close()
	// As at the source, bytes_sent counts what the client sent.
	rec.BytesSent, rec.BytesRecv = recv, sent
	rec.Duration = time.Since(rec.Start)
	rec.Err = ignoreClosed(err)
	ic.annotate(rec)
	p.cfg.AccessLog.Log(ctx, rec)
}

// forwardedHost returns the host parameter of a Forwarded header
// (RFC 7239), which the source ztunnel sets to the service's hostname. A
// value that still holds a quote once unquoted is no hostname: "".
func forwardedHost(h string) string {
	for _, part := range strings.Split(h, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.EqualFold(k, "host") {
			v = strings.Trim(v, `"`)
			if strings.Contains(v, `"`) {
				return ""
			}
			return v
		}
	}
	return ""
}
