package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// Errors of binding a CONNECT's authority to a target of this waypoint.
var (
	// ErrUnknownTarget: the authority is neither a service VIP nor a
	// workload address the waypoint knows (503).
	ErrUnknownTarget = errors.New("unknown target")
	// ErrNotBound: the target exists but does not use this waypoint (400).
	ErrNotBound = errors.New("target does not use this waypoint")
	// ErrNoPort: the service has no such port (503).
	ErrNoPort = errors.New("service has no such port")
)

// binding is the target of one CONNECT.
type binding struct {
	authority netip.AddrPort
	// service is set for service-addressed traffic; workload for
	// workload-addressed traffic.
	service  *state.Service
	workload *state.Workload
	// appProtocol is the protocol the service port declares, or
	// protoUnknown (sniffed).
	appProtocol protocol
}

// bind resolves authority to a target bound to this waypoint: a service
// VIP first, then a workload address, as Istio's ztunnel resolves a
// destination.
func (p *Proxy) bind(authority netip.AddrPort) (*binding, error) {
	store := p.cfg.Store
	if svc := store.ServiceByVIP(authority.Addr()); svc != nil {
		if !p.isSelf(svc.GetWaypoint()) {
			return nil, fmt.Errorf("service %s: %w", svc.Hostname, ErrNotBound)
		}
		if _, ok := svc.TargetPort(authority.Port()); !ok {
			return nil, fmt.Errorf("service %s port %d: %w", svc.Hostname, authority.Port(), ErrNoPort)
		}
		return &binding{authority: authority, service: svc, appProtocol: servicePortProtocol(svc, authority.Port())}, nil
	}
	if w := store.WorkloadByAddr(authority.Addr()); w != nil {
		if !p.isSelf(w.GetWaypoint()) {
			return nil, fmt.Errorf("workload %s/%s: %w", w.Namespace, w.Name, ErrNotBound)
		}
		return &binding{authority: authority, workload: w}, nil
	}
	return nil, fmt.Errorf("%v: %w", authority, ErrUnknownTarget)
}

// isSelf reports whether a Workload API waypoint address names this
// waypoint: its Service hostname (istiod-lite's form, namespace included),
// or one of its own addresses.
func (p *Proxy) isSelf(gw *workloadapi.GatewayAddress) bool {
	if gw == nil {
		return false
	}
	if h := gw.GetHostname(); h != nil {
		return strings.EqualFold(h.GetHostname(), p.hostname) && (h.GetNamespace() == "" || h.GetNamespace() == p.cfg.Namespace)
	}
	if a := gw.GetAddress(); a != nil {
		ip, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			return false
		}
		if svc := p.cfg.Store.ServiceByVIP(ip.Unmap()); svc != nil {
			return strings.EqualFold(svc.Hostname, p.hostname) // our Service's VIP
		}
		w := p.cfg.Store.WorkloadByAddr(ip.Unmap())
		return w != nil && w.ID == p.cfg.Identity && w.Namespace == p.cfg.Namespace // one of our pods
	}
	return false
}

// stream is what the waypoint knows of one accepted CONNECT: who sent it
// and where it goes.
type stream struct {
	p        *Proxy
	start    time.Time
	req      *hbone.Request
	client   netip.AddrPort  // the original client (forwarded for=), else the HBONE peer
	clientIP string          // client's address as text (x-forwarded-for)
	peerID   string          // the HBONE client's SPIFFE ID (the source workload's)
	src      *state.Workload // the client's workload, if known
	binding  *binding
	labels   telemetry.Labels // source and destination service labels
}

func (p *Proxy) newStream(req *hbone.Request) *stream {
	st := &stream{p: p, start: time.Now(), req: req, client: req.RemoteAddr, peerID: req.PeerID.String()}
	if fwd, ok := req.ForwardedFor(); ok {
		st.client = fwd
	}
	st.clientIP = st.client.Addr().String()
	st.labels = telemetry.Labels{
		Reporter:                 telemetry.ReporterWaypoint,
		SourcePrincipal:          st.peerID,
		ConnectionSecurityPolicy: telemetry.PolicyMutualTLS,
	}
	if w := p.cfg.Store.WorkloadByAddr(st.client.Addr()); w != nil {
		st.src = w
		st.labels.SetSource(w)
	}
	return st
}

// setDestination fills the destination labels known from the binding.
func (st *stream) setDestination() {
	if s := st.binding.service; s != nil {
		st.labels.SetService(s)
	}
	if w := st.binding.workload; w != nil {
		st.labels.SetDestination(w)
	}
}

// record returns the access log record of the stream, before any endpoint
// is chosen.
func (st *stream) record() *accesslog.Record {
	rec := &accesslog.Record{
		Direction:   accesslog.Inbound,
		Start:       st.start,
		SrcAddr:     st.client,
		SrcIdentity: st.peerID,
		DstAddr:     st.req.Authority,
	}
	if st.src != nil {
		rec.SrcWorkload, rec.SrcNamespace = st.src.Name, st.src.Namespace
	}
	if b := st.binding; b != nil && b.service != nil {
		rec.DstService = b.service.Hostname
	}
	return rec
}

// setEndpoint fills the destination fields of rec and labels with the
// endpoint w chosen for the stream or request.
func setEndpoint(rec *accesslog.Record, labels *telemetry.Labels, w *state.Workload, addr netip.AddrPort, hboneAddr netip.AddrPort) {
	rec.DstWorkload, rec.DstNamespace, rec.DstIdentity = w.Name, w.Namespace, w.ID.String()
	rec.UpstreamHost = addr
	if hboneAddr.IsValid() {
		rec.DstHBONEAddr = hboneAddr
	}
	labels.SetDestination(w)
	labels.DestinationPrincipal = w.ID.String()
}

// reject answers a CONNECT that could not be bound, and logs and counts it.
func (st *stream) reject(ctx context.Context, t *hbone.Tunnel, err error) {
	code := http.StatusServiceUnavailable
	if errors.Is(err, ErrNotBound) {
		code = http.StatusBadRequest
	}
	t.Reject(code, err.Error())
	labels := st.labels
	labels.ResponseFlags = telemetry.FlagConnect
	st.p.cfg.Metrics.Open(&labels).Close()
	rec := st.record()
	rec.Err = fmt.Errorf("%d: %w", code, err)
	rec.ResponseFlags = telemetry.FlagConnect
	st.p.cfg.AccessLog.Log(ctx, rec)
}
