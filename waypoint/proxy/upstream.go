package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// upstream forwards requests to endpoints: net/http Transports (one for
// HTTP/1.1, one for h2c) whose connections are HBONE tunnels from the
// pool, so that HTTP connections are kept and reused per endpoint
// (Transport's pool, keyed by podIP:targetPort) over HTTP/2 connections
// shared per endpoint node (hbone.Pool).
//
// The common HTTP/1.1 request to a tunnelled endpoint (no upgrade, a body
// of known length up to maxFastBody) takes fast instead (h1client.go).
type upstream struct {
	p      *Proxy
	h1, h2 *http.Transport
	fast   *h1Client
	proxy  *httputil.ReverseProxy
}

func newUpstream(p *Proxy) *upstream {
	u := &upstream{p: p}
	transport := func(h2 bool) *http.Transport {
		var protos http.Protocols
		if h2 {
			protos.SetUnencryptedHTTP2(true)
		} else {
			protos.SetHTTP1(true)
		}
		return &http.Transport{
			DialContext:           u.dial,
			Protocols:             &protos,
			MaxIdleConnsPerHost:   100,
			IdleConnTimeout:       5 * time.Minute, // as the HBONE pool
			DisableCompression:    true,            // pass Accept-Encoding through untouched
			ResponseHeaderTimeout: p.cfg.RequestTimeout,
		}
	}
	u.h1, u.h2 = transport(false), transport(true)
	u.fast = &h1Client{dial: u.dialAddr, idleTimeout: 5 * time.Minute, headerWait: p.cfg.RequestTimeout}
	u.proxy = p.newReverseProxy(u)
	return u
}

// RoundTrip sends r over HTTP/2 or HTTP/1.1, as its request state says.
func (u *upstream) RoundTrip(r *http.Request) (*http.Response, error) {
	rq, _ := r.Context().Value(requestKey{}).(*request)
	if rq != nil && rq.retry != nil { // a route's tries (retry.go)
		return rq.retry.roundTrip(r, rq, func(o *http.Request) (*http.Response, error) { return u.roundTripOnce(o, rq) })
	}
	return u.roundTripOnce(r, rq)
}

// roundTripOnce sends r once to rq's endpoint.
func (u *upstream) roundTripOnce(r *http.Request, rq *request) (*http.Response, error) {
	switch {
	case rq == nil:
	case rq.h2:
		return u.h2.RoundTrip(r)
	case fastEligible(r, rq):
		return u.fast.roundTrip(r, rq.upstream, nil)
	}
	return u.h1.RoundTrip(r)
}

// tunnelled reports whether w is reached over HBONE (it is in the mesh).
func (u *upstream) tunnelled(w *state.Workload) bool {
	return w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE
}

// dialError is a failure to open the connection to an endpoint (Envoy's
// UF).
type dialError struct{ err error }

func (e *dialError) Error() string { return "upstream connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dial opens the connection to the endpoint addr (podIP:targetPort): an
// HBONE tunnel to the pod's ztunnel with :authority addr, presenting the
// waypoint's own certificate and expecting the endpoint's identity; or a
// plain TCP connection to an endpoint outside the mesh.
func (u *upstream) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, &dialError{fmt.Errorf("endpoint %q: %w", addr, err)}
	}
	return u.dialAddr(ctx, ap)
}

// dialAddr is dial with the endpoint's address parsed.
func (u *upstream) dialAddr(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	addr := ap.String()
	ctx, cancel := context.WithTimeout(ctx, u.p.cfg.ConnectTimeout)
	defer cancel()
	w := u.p.cfg.Store.WorkloadByAddr(ap.Addr())
	if w == nil || !u.tunnelled(w) {
		var d net.Dialer
		if u.p.cfg.SourceAddr.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(u.p.cfg.SourceAddr, 0))
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, &dialError{err}
		}
		return c, nil
	}
	t := hbone.Target{
		Addr:       netip.AddrPortFrom(ap.Addr(), u.p.cfg.HBONEPort),
		Authority:  addr,
		SourceID:   u.p.cfg.Identity,
		DestIDs:    []spiffeid.ID{w.ID},
		SourceAddr: u.p.cfg.SourceAddr,
	}
	if u.p.cfg.Baggage != "" {
		t.Header = http.Header{"Baggage": {u.p.cfg.Baggage}}
	}
	c, err := u.p.cfg.Pool.Dial(ctx, t)
	if err != nil {
		return nil, &dialError{err}
	}
	return c, nil
}

// close releases the idle upstream connections.
func (u *upstream) close() {
	u.fast.close()
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
}
