package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

var _ hbone.Handler = (*Proxy)(nil)

// Errors of inbound connections.
var (
	errNoWorkload   = errors.New("no workload with this address on this node")
	errAuthorityMis = errors.New("authority does not match the connection's destination")
)

// ServeHBONE is the inbound side: one CONNECT from another ztunnel (or a
// waypoint) to a workload on this node.
func (p *Proxy) ServeHBONE(ctx context.Context, req *hbone.Request, t *hbone.Tunnel) {
	p.serveTunnel(ctx, req, tcpTunnel{t}, TransportTCP)
}

// serveTunnel answers one inbound CONNECT, over either transport (the
// QUIC side is quic_inbound.go).
func (p *Proxy) serveTunnel(ctx context.Context, req *hbone.Request, t tunnel, transport string) {
	client := req.RemoteAddr
	if fwd, ok := req.ForwardedFor(); ok {
		client = fwd
	}
	r := p.inboundResult(client, req.PeerID.String(), telemetry.PolicyMutualTLS)
	r.setTransport(transport)
	r.setDestinationAddr(req.Authority, req.Authority)
	if host := forwardedHost(req.Header.Get("Forwarded")); host != "" {
		if svc := p.cfg.Store.ServiceByHostname(host); svc != nil {
			r.setService(svc)
		}
	}
	if srcW := p.cfg.Store.WorkloadByAddr(req.RemoteAddr.Addr()); srcW != nil {
		r.setSource(srcW)
	}
	fail := func(code int, flags string, err error) {
		t.Reject(code, err.Error())
		r.setFlags(flags)
		r.finish(ctx, fmt.Errorf("%d: %w", code, err))
	}

	// The tunnel ends at the local workload the client dialed: the
	// authority names it, or, when this workload is a waypoint, something
	// it is the waypoint of (a service VIP or a pod IP, Istio's
	// validate_destination); then the authority's port on this workload
	// is the target.
	local := req.LocalAddr.Addr()
	dstW := p.cfg.Store.WorkloadByAddr(local)
	if req.Authority.Addr() != local && (dstW == nil || !p.cfg.Store.IsWaypointFor(dstW, local, req.Authority.Addr())) {
		fail(http.StatusBadRequest, telemetry.FlagConnect, errAuthorityMis)
		return
	}
	if dstW == nil {
		fail(http.StatusServiceUnavailable, telemetry.FlagConnect, errNoWorkload)
		return
	}
	target := netip.AddrPortFrom(local, req.Authority.Port())
	r.setDestination(dstW)
	r.setDestinationIdentity(dstW.ID)
	if p.reserved[target.Port()] {
		fail(http.StatusBadRequest, telemetry.FlagConnect, ErrIllegalPort)
		return
	}
	ac := authz.Conn{Src: req.RemoteAddr.Addr(), Dst: target, Identity: req.PeerID.String()}
	if d := p.Authorize(ac); !d.Allow {
		r.setPolicy(d.Policy)
		fail(http.StatusUnauthorized, telemetry.FlagDeny, policyError(d))
		return
	}

	// Dial the application from the client's own address, so that it sees
	// the real source.
	upstream, err := p.dialDirect(ctx, local, req.RemoteAddr.Addr(), target)
	if err != nil {
		fail(http.StatusServiceUnavailable, telemetry.FlagConnect, err)
		return
	}
	down, err := t.Accept()
	if err != nil {
		upstream.Close()
		fail(http.StatusServiceUnavailable, telemetry.FlagConnect, err)
		return
	}
	p.quic.metrics.tunnel("inbound", transport)
	p.relayInbound(ctx, r, down, upstream, down, false, ac)
}

// relayInbound carries an accepted inbound connection: it copies between
// the client's side down and the application's upstream, closing both if a
// policy change denies the connection, then finishes r. tracked is the
// connection to register for Close (the one its caller has not); held
// says that the caller's other connection is tracked already, so that
// tracked is registered during a drain too (trackUpstream).
func (p *Proxy) relayInbound(ctx context.Context, r *connResult, down, upstream, tracked net.Conn, held bool, ac authz.Conn) {
	r.open()
	if !p.register(tracked, held) {
		upstream.Close()
		r.discard()
		return
	}
	defer p.untrack(tracked)
	ic := p.watchInbound(ac, down, upstream)
	defer p.unwatchInbound(ic)
	toServer, toClient, err := hbone.Relay(down, upstream)
	r.relayed(toServer, toClient)
	err = p.relayErr(tracked, ignoreClosed(err))
	if v := ic.closedBy(); v != nil {
		r.setFlags(telemetry.FlagDeny) // the record's only: the metrics are open
		r.setPolicy(v.Policy)
		err = ErrPolicyChange
	}
	r.finish(ctx, err)
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
