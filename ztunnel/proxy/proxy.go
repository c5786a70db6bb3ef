// Package proxy is ztunnel's data path: outbound (from a local pod to the
// mesh), inbound (HBONE from the mesh to a local pod), and the SOCKS5 front
// end that local mode uses in place of transparent capture.
//
// Outbound resolves the destination against the Store (a service VIP picks
// an endpoint round robin; a pod IP is itself), then opens an HBONE tunnel
// to the destination's ztunnel with the source workload's certificate, or
// dials directly when the destination is not in the mesh. A service with a
// waypoint, or a pod with its own, is reached through the waypoint instead:
// HBONE to a waypoint pod with the original address as :authority, as
// Istio's ztunnel does. Inbound checks the CONNECT (its :authority must be
// the local workload's address, or something the local workload is the
// waypoint of), dials the application from the client's own address and
// only then answers 200. Both ends write one access log record per connection
// and update Istio's TCP metrics.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultReservedPorts returns Istio's ztunnel ports, the default of
// Config.ReservedPorts: admin 15000, outbound capture 15001, inbound
// plaintext 15006, HBONE 15008, metrics 15020, readiness 15021 and SOCKS5
// 15080.
func DefaultReservedPorts() []uint16 {
	return []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}
}

// Config configures a Proxy. Store, Pool, Metrics and AccessLog are
// required.
type Config struct {
	Store     *state.Store
	Pool      *hbone.Pool
	Metrics   *telemetry.Metrics
	AccessLog *accesslog.Logger
	// AcceptErrors counts the accept errors the accept loops retry; nil
	// counts nothing.
	AcceptErrors *telemetry.AcceptErrors

	// HBONEPort is the port of destination ztunnels; default 15008.
	HBONEPort uint16
	// ReservedPorts are ztunnel's own ports, never a valid target: a
	// CONNECT to one is answered 400, an outbound or plaintext inbound
	// connection to one is refused, so that no tunnel reaches ztunnel
	// itself (and acts with a pod's identity). Default
	// DefaultReservedPorts(): 15000, 15001, 15006, 15008, 15020, 15021,
	// 15080. ztunnel sets it from its configured ports.
	ReservedPorts []uint16
	// ConnectTimeout bounds dials to applications; default 10s.
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds reading a SOCKS5 request; default 10s.
	HandshakeTimeout time.Duration
	// Control, if set, is applied to every socket ztunnel dials to an
	// application (in-pod capture sets SO_MARK and IP_TRANSPARENT here).
	Control func(network, address string, c syscall.RawConn) error
	// DialPod, if set, opens ztunnel's connections on behalf of the local
	// pod whose address is pod (in-pod mode: inside the pod's network
	// namespace), from the local address from: the pod's own, or, inbound,
	// the client's. Nil dials with a net.Dialer (and Control) from here.
	DialPod func(ctx context.Context, pod, from netip.Addr, to netip.AddrPort) (net.Conn, error)
	Logger  *slog.Logger
}

// Proxy carries connections. It tracks every tunnel so Close can end them.
type Proxy struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	draining bool
	wg       sync.WaitGroup

	authz    authorizer      // L4 policy enforcement (authz.go)
	reserved map[uint16]bool // Config.ReservedPorts

	peak         int       // most connections tracked since the last release (memory.go)
	released     time.Time // last release
	freeOSMemory func()    // debug.FreeOSMemory; tests set it

	now         func() time.Time // time.Now; tests set it
	acceptMu    sync.Mutex
	acceptErr   error     // the last retried accept error (accept.go)
	acceptErrAt time.Time // when
}

// New returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Pool == nil || cfg.Metrics == nil || cfg.AccessLog == nil {
		return nil, errors.New("proxy: Store, Pool, Metrics and AccessLog are required")
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReservedPorts == nil {
		cfg.ReservedPorts = DefaultReservedPorts()
	}
	p := &Proxy{cfg: cfg, log: log.With("component", "proxy"), conns: map[net.Conn]struct{}{}, reserved: map[uint16]bool{}, now: time.Now, freeOSMemory: debug.FreeOSMemory}
	for _, port := range cfg.ReservedPorts {
		p.reserved[port] = true
	}
	p.authz.init(cfg.Store, p.log)
	return p, nil
}

// track registers c for Close; it returns false (and closes c) once the
// proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.draining {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	p.peak = max(p.peak, len(p.conns))
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// Drain waits until every connection has ended by itself or ctx is done,
// then closes what remains.
func (p *Proxy) Drain(ctx context.Context) {
	p.mu.Lock()
	p.draining = true // no new connections: Add never races with Wait
	p.mu.Unlock()
	idle := make(chan struct{})
	go func() { p.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-ctx.Done():
	}
	p.Close()
	<-idle
}

// Close closes every connection the proxy carries and waits for their
// handlers to finish.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// Listener names, the label of telemetry.AcceptErrors.
const (
	ListenerHBONE            = "hbone"
	ListenerSOCKS5           = "socks5"
	ListenerOutbound         = "outbound"          // 15001, in-pod capture
	ListenerInboundPlaintext = "inbound_plaintext" // 15006, in-pod capture
)

// Errors of outbound resolution.
var (
	ErrUnknownHost  = errors.New("unknown host")
	ErrIllegalPort  = errors.New("port is reserved for ztunnel")
	errNoWorkload   = errors.New("no workload with this address on this node")
	errAuthorityMis = errors.New("authority does not match the connection's destination")
	errNoVIP        = errors.New("service has no VIP to address its waypoint")
)

// destination is where an outbound connection goes.
type destination struct {
	service  *state.Service  // the service addressed; nil when addressed to a pod or outside the mesh
	workload *state.Workload // the endpoint picked or the pod addressed; nil outside the mesh or when a service's waypoint takes the connection
	// addr is the target: the endpoint's IP and target port, or, through
	// a waypoint, the address the client connected to (the service's VIP
	// and port, or the pod's IP and port). It is the HBONE :authority.
	addr netip.AddrPort
	// waypoint, when set, is where the tunnel goes: the service's
	// waypoint, or the addressed pod's own (workload) waypoint.
	waypoint *state.Waypoint
}

// resolve finds where a connection of the local workload src, from its
// address client, to target (or to the service named host, on target's
// port) goes, as Istio's ztunnel does (outbound.rs build_request):
//   - service-addressed, and the service has a waypoint: to the waypoint,
//     whatever the port, with the VIP and port as authority; a waypoint
//     that does not resolve fails the connection;
//   - service-addressed otherwise: to an endpoint picked round robin,
//     directly, even when that endpoint has a workload waypoint;
//   - addressed to a pod with a waypoint: to the waypoint, with the pod's
//     IP and port as authority, unless the connection comes from that
//     waypoint itself (it has the waypoint's identity and address): then
//     directly, so that it crosses the waypoint once;
//   - otherwise to the pod, or, outside the mesh, to target as it is.
//
// On error the destination holds what was resolved, for the access log.
func (p *Proxy) resolve(src *state.Workload, client netip.Addr, target netip.AddrPort, host string) (destination, error) {
	store := p.cfg.Store
	var svc *state.Service
	switch {
	case host != "":
		if svc = store.ServiceByHostname(host); svc == nil {
			return destination{}, fmt.Errorf("%s: %w", host, ErrUnknownHost)
		}
	default:
		svc = store.ServiceByVIP(target.Addr())
	}
	if svc != nil {
		if svc.WaypointRef != nil {
			dst := destination{service: svc, addr: target}
			if host != "" {
				if len(svc.VIPs) == 0 {
					return dst, fmt.Errorf("service %s: %w", svc.Hostname, errNoVIP)
				}
				dst.addr = netip.AddrPortFrom(svc.VIPs[0], target.Port())
			}
			wp, err := store.ServiceWaypoint(svc, dst.addr.Addr())
			if err != nil {
				return dst, fmt.Errorf("service %s: %w", svc.Hostname, err)
			}
			dst.waypoint = wp
			return dst, nil
		}
		w, port, err := store.PickEndpoint(svc, target.Port())
		if err != nil {
			return destination{service: svc}, fmt.Errorf("service %s port %d: %w", svc.Hostname, target.Port(), err)
		}
		if p.reserved[port] {
			return destination{service: svc}, fmt.Errorf("service %s port %d: target port %d: %w", svc.Hostname, target.Port(), port, ErrIllegalPort)
		}
		return destination{service: svc, workload: w, addr: netip.AddrPortFrom(w.Addrs[0], port)}, nil
	}
	if p.reserved[target.Port()] {
		return destination{}, fmt.Errorf("%v: %w", target, ErrIllegalPort)
	}
	dst := destination{workload: store.WorkloadByAddr(target.Addr()), addr: target}
	if w := dst.workload; w != nil && w.WaypointRef != nil && !store.IsFromWaypoint(w, src.ID, client) {
		wp, err := store.WorkloadWaypoint(w, target.Addr())
		if err != nil {
			return dst, fmt.Errorf("workload %s/%s: %w", w.Namespace, w.Name, err)
		}
		dst.waypoint = wp
	}
	return dst, nil
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

// dialHBONE opens a tunnel for the local workload src (whose client
// connected from clientAddr) to authority, through the HBONE server at
// hboneAddr that must present one of ids. svc is the service addressed,
// if any: its hostname goes in the forwarded header.
func (p *Proxy) dialHBONE(ctx context.Context, src *state.Workload, clientAddr netip.AddrPort, svc *state.Service, authority, hboneAddr netip.AddrPort, ids []spiffeid.ID) (net.Conn, error) {
	forwarded := `for="` + clientAddr.String() + `"`
	if svc != nil {
		forwarded += ";host=" + svc.Hostname
	}
	h := http.Header{
		"Forwarded": {forwarded},
		"Baggage":   {baggage(src)},
	}
	c, err := p.cfg.Pool.Dial(ctx, hbone.Target{
		Addr:       hboneAddr,
		Authority:  authority.String(),
		SourceID:   src.ID,
		DestIDs:    ids,
		SourceAddr: src.Addrs[0],
		Header:     h,
	})
	if err != nil {
		return nil, err // not a nil *hbone.Conn in a non-nil net.Conn
	}
	return c, nil
}

// sans returns the service's subject_alt_names that are SPIFFE IDs.
func sans(svc *state.Service) []spiffeid.ID {
	var ids []spiffeid.ID
	for _, san := range svc.SubjectAltNames {
		if id, err := spiffeid.FromString(san); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// baggage describes the source workload as Istio's ztunnel does.
func baggage(w *state.Workload) string {
	kind := "pod"
	switch w.WorkloadType {
	case workloadapi.WorkloadType_DEPLOYMENT:
		kind = "deployment"
	case workloadapi.WorkloadType_JOB:
		kind = "job"
	case workloadapi.WorkloadType_CRONJOB:
		kind = "cronjob"
	}
	return "k8s.namespace.name=" + w.Namespace +
		",k8s." + kind + ".name=" + w.WorkloadName +
		",service.name=" + w.CanonicalName +
		",service.version=" + w.CanonicalRevision
}

// dialDirect dials addr, for the local pod whose address is pod, from the
// local address from, as the application itself would have.
func (p *Proxy) dialDirect(ctx context.Context, pod, from netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	if p.cfg.DialPod != nil {
		ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
		return p.cfg.DialPod(ctx, pod, from, addr)
	}
	d := net.Dialer{Timeout: p.cfg.ConnectTimeout, Control: p.cfg.Control}
	if from.IsValid() {
		// The port is picked at connect (unique for the 4-tuple), not at
		// bind: a bind searches the ports TIME_WAIT holds on from.
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		d.Control = capture.BindNoPort(d.Control)
	}
	return d.DialContext(ctx, "tcp", addr.String())
}

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

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// CloseFor closes the connections to or from the workload address a (one
// end's address is a): those of a pod that left the node or the mesh.
func (p *Proxy) CloseFor(a netip.Addr) {
	p.mu.Lock()
	var gone []net.Conn
	for c := range p.conns {
		if addrPort(c.LocalAddr()).Addr() == a || addrPort(c.RemoteAddr()).Addr() == a {
			gone = append(gone, c)
		}
	}
	p.mu.Unlock()
	for _, c := range gone {
		c.Close()
	}
}
