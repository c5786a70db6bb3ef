package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// The route decision of an HTTP request (serveRoute), taken after the L7
// policies have allowed the request as it came (Envoy's filter order in
// Istio's waypoint: RBAC, then the router). A Service with routes for the
// request's port has the request served by the first entry that matches:
// CORS preflights and redirects are answered by the waypoint, anything
// else goes, with the entry's filters applied, to an endpoint of the
// backend Service picked by weight, within the entry's timeouts and
// retries.

// flagNoRoute is Envoy's response flag for a request no route matches.
const flagNoRoute = "NR"

// Errors of the access log of requests the route decision answers.
var (
	errNoRoute         = errors.New("no route matches the request")
	errNoBackend       = errors.New("route has no backend with a weight")
	errUnknownBackend  = errors.New("backend service unknown")
	errRouteTimeout    = errors.New("route request timeout")
	errPerTryTimeout   = errors.New("route backend request timeout")
	errInvalidRouteMsg = "route rule is invalid: "
)

// routeResponse is what the route decision does to the answer: response
// header modifiers (route then backend) and CORS headers.
type routeResponse struct {
	headers []*headerModifier
	cors    *corsPolicy
	origin  string
}

func (rr *routeResponse) apply(h http.Header) {
	for _, m := range rr.headers {
		m.apply(h)
	}
	if rr.cors != nil {
		rr.cors.actual(h, rr.origin)
	}
}

// serveRoute serves r by the routes of its Service and reports true, or
// reports false when the Service has no routes for the request's port (the
// request is then served without routes).
func (p *Proxy) serveRoute(rw *responseWriter, r *http.Request, st *stream, labels *telemetry.RequestLabels, rec *accesslog.Record, grpc bool) bool {
	rt := p.cfg.Routes()
	b := st.binding
	if rt == nil || b.service == nil {
		return false
	}
	sr := rt.services[b.service.Key]
	if sr == nil {
		return false
	}
	port := b.authority.Port()
	g := sr.httpFor(st.req.PeerID, port) // the client namespace's consumer routes, or the producer routes
	if len(g.http) == 0 {
		return false
	}
	var view requestView // on the stack: the route decision allocates nothing of its own
	view.init(r)
	v := &view
	hr, routed := g.routeHTTP(v, port)
	if !routed {
		return false
	}
	fail := func(code int, flags, body string, err error) bool {
		if flags != "" {
			labels.ResponseFlags = flags
		}
		rec.Err = err
		localReply(rw, grpc, code, body)
		return true
	}
	if hr == nil {
		return fail(http.StatusNotFound, flagNoRoute, "", errNoRoute)
	}
	rec.Route = hr.name
	if hr.invalid != "" {
		return fail(http.StatusInternalServerError, "", errInvalidRouteMsg+hr.invalid, errors.New(errInvalidRouteMsg+hr.invalid))
	}
	f := &hr.filters
	origin := ""
	if f.cors != nil {
		if o := r.Header.Get("Origin"); o != "" && f.cors.originAllowed(o) {
			if isPreflight(r) {
				f.cors.preflight(rw, r, o)
				return true
			}
			origin = o
		}
	}
	if f.redirect != nil {
		rw.Header().Set("Location", f.redirect.location(r, v, port))
		rw.Header().Set("Content-Length", "0")
		rw.WriteHeader(f.redirect.code)
		return true
	}
	be := hr.backends.pick()
	switch {
	case be == nil:
		return fail(http.StatusInternalServerError, "", "no backend", errNoBackend)
	case be.invalid != "":
		return fail(http.StatusInternalServerError, "", "invalid backend: "+be.invalid, errors.New("invalid backend: "+be.invalid))
	}
	svc := b.service
	if be.key != svc.Key {
		svc = p.cfg.Store.ServiceByHostname(be.hostname)
		if svc == nil || svc.Key != be.key {
			return fail(http.StatusInternalServerError, "", "backend service unknown", errUnknownBackend)
		}
		// As Istio's waypoint (the upstream cluster's service): the
		// backend is the destination service.
		labels.SetService(svc)
		rec.DstService = svc.Hostname
	}
	bport := be.servicePort(port)

	// The request as the backend gets it: route filters, then backend
	// filters.
	f.request.applyRequest(r)
	f.rewrite.apply(r, v)
	bf := &be.filters
	bf.request.applyRequest(r)
	bf.rewrite.apply(r, v)

	var (
		rs   *retryState
		rr   *routedRequest
		body []byte
	)
	if hr.retry.attempts > 0 || hr.backendTimeout > 0 {
		rr = new(routedRequest) // the request state and its tries in one allocation
		rs = &rr.tries
		*rs = retryState{p: p, policy: &hr.retry, perTry: time.Duration(hr.backendTimeout) * time.Millisecond, svc: svc, port: bport}
	}
	mirrors := f.mirrors
	if len(bf.mirrors) > 0 {
		mirrors = append(mirrors[:len(mirrors):len(mirrors)], bf.mirrors...)
	}
	if rs != nil || len(mirrors) > 0 {
		var ok bool
		var bb *bufferedBody
		if rr != nil {
			bb = &rr.body
		}
		body, ok = bufferBody(r, bb)
		if rs != nil {
			rs.replayable, rs.body = ok, body
		}
		if ok {
			for _, m := range mirrors {
				p.mirrors.send(r, body, m, port)
			}
		}
	}

	w, tport, l, err := p.lb.pick(svc, bport) // balance.go
	if err != nil {
		return fail(http.StatusServiceUnavailable, telemetry.FlagNoHealthyUpstream, noHealthyUpstreamBody, err)
	}
	var rq *request
	if rr != nil {
		rq = &rr.request
	} else {
		rq = new(request)
	}
	p.initRequest(rq, r, st, svc, bport, w, tport)
	rq.retry = rs
	rq.lease = l
	defer p.lb.release(rq) // a retry releases its tries' leases (retry.go)
	var hboneAddr netip.AddrPort
	if rq.hbone {
		hboneAddr = netip.AddrPortFrom(w.Addrs[0], p.cfg.HBONEPort)
	}
	setEndpoint(rec, &labels.Labels, w, rq.upstream, hboneAddr)

	if f.response != nil || bf.response != nil || origin != "" {
		rr := &routeResponse{origin: origin}
		if f.response != nil {
			rr.headers = append(rr.headers, f.response)
		}
		if bf.response != nil {
			rr.headers = append(rr.headers, bf.response)
		}
		if origin != "" {
			rr.cors = f.cors
		}
		rw.route = rr
	}
	if hr.requestTimeout > 0 {
		ctx, cancel := context.WithTimeoutCause(r.Context(), time.Duration(hr.requestTimeout)*time.Millisecond, errRouteTimeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	p.send(rw, r, rq)
	if rs != nil && rs.last != nil { // the access log shows the last try
		hboneAddr = netip.AddrPort{}
		if rq.hbone {
			hboneAddr = netip.AddrPortFrom(rs.last.Addrs[0], p.cfg.HBONEPort)
		}
		rec.DstHBONEAddr = hboneAddr
		setEndpoint(rec, &labels.Labels, rs.last, rq.upstream, hboneAddr)
	}
	if rq.flags != "" {
		labels.ResponseFlags = rq.flags
	}
	return true
}

// routedRequest is a request's state with its tries.
type routedRequest struct {
	request
	tries retryState
	body  bufferedBody
}

// initRequest fills rq, the state of r sent to endpoint w of svc.
func (p *Proxy) initRequest(rq *request, r *http.Request, st *stream, svc *state.Service, servicePort uint16, w *state.Workload, port uint16) {
	*rq = request{
		upstream: netip.AddrPortFrom(w.Addrs[0], port),
		h2:       r.ProtoMajor == 2 || svc != nil && servicePortProtocol(svc, servicePort) == protoHTTP2,
		client:   st.client.Addr(),
		clientIP: st.clientIP,
		hbone:    p.up.tunnelled(w),
	}
}

// send forwards r to rq's endpoint: forward for the common request, the
// reverse proxy for the rest.
func (p *Proxy) send(rw http.ResponseWriter, r *http.Request, rq *request) {
	if useForward && canForward(r, rq) {
		p.forward(rw, r, rq) // forward.go: the common request, without the reverse proxy
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), requestKey{}, rq))
	p.up.proxy.ServeHTTP(rw, r)
}

// bufferBody reads a body of known length up to maxFastBody into memory
// and puts it back as r's body (bb, or a new one when nil), so that it can
// be sent again (retries, mirrors). It reports false for a body it cannot
// hold (unknown length or larger), which is left alone; a request without
// body is replayable.
func bufferBody(r *http.Request, bb *bufferedBody) ([]byte, bool) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, true
	}
	if r.ContentLength < 0 || r.ContentLength > maxFastBody {
		return nil, false
	}
	buf := make([]byte, r.ContentLength)
	n, err := io.ReadFull(r.Body, buf)
	if err != nil {
		// Whatever came is still sent: the upstream sees the short body
		// as the client sent it.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(buf[:n]), errReader{err}))
		return nil, false
	}
	if bb == nil {
		bb = new(bufferedBody)
	}
	bb.Reset(buf)
	r.Body = bb
	return buf, true
}

// bufferedBody is a request body held in memory.
type bufferedBody struct{ bytes.Reader }

func newBufferedBody(b []byte) *bufferedBody {
	bb := new(bufferedBody)
	bb.Reset(b)
	return bb
}

func (*bufferedBody) Close() error { return nil }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// tcpEndpoint picks the endpoint of a TCP stream: by the Service's
// TCPRoutes for the port when it has some (a backend by weight, then one
// of its endpoints), else as without routes. src is the client's identity
// (consumer routes apply to its namespace).
func (p *Proxy) tcpEndpoint(b *binding, src spiffeid.ID, labels *telemetry.Labels, rec *accesslog.Record) (*state.Workload, uint16, lease, error) {
	rt := p.cfg.Routes()
	if rt == nil || b.service == nil {
		return p.endpoint(b)
	}
	sr := rt.services[b.service.Key]
	if sr == nil {
		return p.endpoint(b)
	}
	port := b.authority.Port()
	tr := sr.routeTCPFor(src, port)
	if tr == nil {
		return p.endpoint(b)
	}
	rec.Route = tr.name
	be := tr.backends.pick()
	switch {
	case be == nil:
		return nil, 0, lease{}, errNoBackend
	case be.invalid != "":
		return nil, 0, lease{}, errors.New("invalid backend: " + be.invalid)
	}
	svc := b.service
	if be.key != svc.Key {
		svc = p.cfg.Store.ServiceByHostname(be.hostname)
		if svc == nil || svc.Key != be.key {
			return nil, 0, lease{}, errUnknownBackend
		}
		labels.SetService(svc)
		rec.DstService = svc.Hostname
	}
	return p.lb.pick(svc, be.servicePort(port))
}
