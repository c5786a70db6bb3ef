package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// errDenied is the error of a stream denied by policy.
var errDenied = errors.New("denied by policy")

// serveTCP carries a stream that is not HTTP: L4 policy (EvaluateTCP),
// then an endpoint, then bytes both ways. It counts Istio's TCP metrics
// and writes one access log record.
func (p *Proxy) serveTCP(ctx context.Context, st *stream, c net.Conn) {
	defer c.Close()
	rec := st.record()
	labels := st.labels
	labels.RequestProtocol = telemetry.ProtocolTCP
	b := st.binding
	areq := authz.Request{
		Peer:     st.client.Addr(),
		Remote:   st.client.Addr(),
		Identity: st.peerID,
		DestIP:   b.authority.Addr(),
		Port:     b.authority.Port(),
		Gateway:  p.gateway,
	}
	if b.service != nil {
		areq.Service = b.service.Key
	}
	fail := func(flags string, err error) {
		labels.ResponseFlags = flags
		p.cfg.Metrics.Open(&labels).Close()
		rec.ResponseFlags, rec.Err = flags, err
		rec.Duration = time.Since(rec.Start)
		p.cfg.AccessLog.Log(ctx, rec)
	}
	dec := p.cfg.Policies().EvaluateTCP(&areq)
	rec.Policy = dec.Policy
	if !dec.Allow {
		fail(telemetry.FlagDeny, errDenied)
		return
	}
	w, port, l, err := p.tcpEndpoint(b, st.req.PeerID, &labels, rec) // routed.go: the Service's TCPRoutes
	if err != nil {
		fail(telemetry.FlagNoHealthyUpstream, err)
		return
	}
	addr := netip.AddrPortFrom(w.Addrs[0], port)
	var hboneAddr netip.AddrPort
	if p.up.tunnelled(w) {
		hboneAddr = netip.AddrPortFrom(w.Addrs[0], p.cfg.HBONEPort)
	}
	setEndpoint(rec, &labels, w, addr, hboneAddr)
	up, err := p.up.dial(ctx, "tcp", addr.String())
	if err != nil {
		p.lb.done(l, tryOutcome(ctx, err))
		fail(telemetry.FlagUpstreamFailure, fmt.Errorf("endpoint %v: %w", addr, err))
		return
	}
	m := p.cfg.Metrics.Open(&labels)
	sent, recv, err := hbone.Relay(c, up)
	p.lb.done(l, outcomeConnected)
	m.AddReceived(sent)
	m.AddSent(recv)
	m.Close()
	rec.BytesRecv, rec.BytesSent = sent, recv // the waypoint serves the client
	rec.Duration = time.Since(rec.Start)
	if !errors.Is(err, net.ErrClosed) {
		rec.Err = err
	}
	p.cfg.AccessLog.Log(ctx, rec)
}
