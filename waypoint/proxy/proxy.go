// Package proxy is the waypoint's data path: HBONE in, HTTP (or TCP)
// through L7 policy, HBONE out to the chosen endpoint.
//
// Each CONNECT a source ztunnel opens to the waypoint names its real
// target in :authority: a service VIP and port (service-addressed traffic)
// or a pod IP and port (workload-addressed). The waypoint serves only
// targets bound to it (bind.go) and answers 400 for others, 503 for
// unknown ones, as the inbound side of Istio's ztunnel does. An accepted
// stream is HTTP when its Service port declares an HTTP application
// protocol, or when its first bytes are an HTTP/1.x request line or the
// HTTP/2 preface (sniff.go); the common HTTP/1.1 request is then served on
// the stream's own goroutine (h1server.go), and anything else by one
// net/http server for all streams (HTTP/1.1 and h2c prior knowledge, gRPC
// included; http.go). Each request is authorized with the waypoint's L7
// policies, routed by its Service's HTTPRoutes and GRPCRoutes when it has
// some (route.go, routed.go) and forwarded over pooled HBONE to an
// endpoint pod's ztunnel under the waypoint's own identity (upstream.go;
// the common HTTP/1.1 request without the reverse proxy, forward.go).
// Other streams are authorized as TCP and relayed (tcp.go), to a backend
// of the Service's TCPRoutes when it has some.
//
// Every request gets one access log record and Istio's request metrics
// (reporter="waypoint"); TCP streams get Istio's TCP metrics. Every stream
// is tracked so Drain can end them.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// Config configures a Proxy. Store, Pool, Identity, Gateway, Namespace,
// Metrics, Requests and AccessLog are required.
type Config struct {
	// Store is the mesh state (Workload API) the waypoint resolves targets
	// and endpoints in.
	Store *state.Store
	// Policies returns the compiled L7 policies in force; nil (or a nil
	// result) allows everything.
	Policies func() *authz.L7Policies
	// Routes returns the compiled routes in force (CompileRoutes); nil (or
	// a nil result) serves every Service without routes.
	Routes func() *Routes
	// Pool opens HBONE tunnels to endpoints; its TLS config must present
	// Identity.
	Pool *hbone.Pool
	// Identity is the waypoint's own SPIFFE ID: upstream tunnels present it.
	Identity spiffeid.ID
	// SourceAddr is the local address upstream connections are bound to;
	// zero: any (the kernel's choice).
	SourceAddr netip.Addr

	// Gateway and Namespace name the waypoint's Gateway; ClusterDomain
	// (default "cluster.local") completes its Service hostname
	// <Gateway>.<Namespace>.svc.<ClusterDomain>, the form in which
	// istiod-lite binds services and workloads to it.
	Gateway, Namespace, ClusterDomain string
	// Baggage is sent on every upstream CONNECT (Istio's baggage header,
	// describing the waypoint itself); empty sends none.
	Baggage string

	Metrics   *telemetry.Metrics  // TCP streams
	Requests  *telemetry.Requests // HTTP requests
	AccessLog *accesslog.Logger

	// HBONEPort is the port of endpoint ztunnels; default 15008.
	HBONEPort uint16
	// SniffTimeout bounds the wait for a stream's first bytes on a port
	// whose protocol is not declared; a stream silent for that long
	// (a server-first protocol) is carried as TCP. Default 1s.
	SniffTimeout time.Duration
	// ConnectTimeout bounds opening a tunnel to an endpoint; default 10s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds each request until its response headers; 0
	// (the default, as Istio's routes) means none.
	RequestTimeout time.Duration
	// IdleTimeout closes a downstream HTTP connection without requests
	// for this long; default 1h (Envoy's).
	IdleTimeout time.Duration

	// LB is how a Service's endpoints are picked: LeastRequest (the
	// default, Istio's) or RoundRobin; either skips endpoints ejected
	// after failing to connect (balance.go).
	LB LBPolicy
	// LBMetrics counts outlier ejections; nil: not counted.
	LBMetrics *LBMetrics

	Logger *slog.Logger
}

// Proxy serves the streams of the waypoint. It is an hbone.Handler.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	hostname string // the waypoint's Service hostname
	gateway  string // namespace/name of its Gateway, for policies

	httpSrv  *http.Server
	httpLn   *streamListener
	httpDone chan struct{} // closed when httpSrv.Serve returned
	up       *upstream
	lb       *balancer // picks endpoints (balance.go)
	mirrors  *mirrors  // RequestMirror copies in flight (mirror.go)

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	h1Conns   map[*h1ServerConn]struct{} // served by serveH1
	draining  bool
	drainFlag atomic.Bool // draining, read without mu
	wg        sync.WaitGroup
}

var _ hbone.Handler = (*Proxy)(nil)

// New validates cfg and returns a Proxy; its HTTP server runs until Drain
// or Close.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Pool == nil || cfg.Identity.IsZero() || cfg.Gateway == "" || cfg.Namespace == "" ||
		cfg.Metrics == nil || cfg.Requests == nil || cfg.AccessLog == nil {
		return nil, errors.New("proxy: Store, Pool, Identity, Gateway, Namespace, Metrics, Requests and AccessLog are required")
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	if cfg.SniffTimeout <= 0 {
		cfg.SniffTimeout = time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Hour
	}
	switch cfg.LB {
	case "":
		cfg.LB = LeastRequest
	case LeastRequest, RoundRobin:
	default:
		return nil, fmt.Errorf("proxy: unknown load balancing policy %q (want %q or %q)", cfg.LB, LeastRequest, RoundRobin)
	}
	if cfg.Policies == nil {
		cfg.Policies = func() *authz.L7Policies { return nil }
	}
	if cfg.Routes == nil {
		cfg.Routes = func() *Routes { return nil }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg:      cfg,
		log:      log.With("component", "waypoint-proxy"),
		hostname: cfg.Gateway + "." + cfg.Namespace + ".svc." + cfg.ClusterDomain,
		gateway:  cfg.Namespace + "/" + cfg.Gateway,
		conns:    map[net.Conn]struct{}{},
		httpDone: make(chan struct{}),
	}
	p.lb = newBalancer(cfg.Store, cfg.LB, cfg.LBMetrics, p.log)
	p.up = newUpstream(p)
	p.mirrors = newMirrors(p)
	p.httpLn = newStreamListener()
	p.httpSrv = p.newHTTPServer()
	go func() {
		defer close(p.httpDone)
		p.httpSrv.Serve(p.httpLn) // returns when httpLn is closed
	}()
	return p, nil
}

// Hostname is the waypoint's Service hostname, to which istiod-lite binds
// services and workloads.
func (p *Proxy) Hostname() string { return p.hostname }

// track registers c for Drain; it returns false (and closes c) once the
// proxy drains.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// Drain stops taking streams, lets open ones finish until ctx is done
// (HTTP connections finish their requests and close), then closes what
// remains and releases the upstream connections.
func (p *Proxy) Drain(ctx context.Context) {
	p.mu.Lock()
	p.draining = true
	p.drainFlag.Store(true)
	p.mu.Unlock()
	p.closeIdleH1()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		p.httpSrv.Shutdown(ctx) // closes httpLn; idle connections at once, busy ones once done
	}()
	idle := make(chan struct{})
	go func() { p.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-ctx.Done():
	}
	<-shut
	p.Close()
	<-idle
}

// Close closes every stream at once and waits for their handlers.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.draining = true
	p.drainFlag.Store(true)
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.httpSrv.Close()
	<-p.httpDone
	p.wg.Wait()
	p.mirrors.close()
	p.up.close()
	return nil
}

// ServeHBONE serves one CONNECT to the waypoint.
func (p *Proxy) ServeHBONE(ctx context.Context, req *hbone.Request, t *hbone.Tunnel) {
	st := p.newStream(req)
	b, err := p.bind(req.Authority)
	if err != nil {
		st.reject(ctx, t, err)
		return
	}
	st.binding = b
	st.setDestination()
	down, err := t.Accept()
	if err != nil {
		st.reject(ctx, t, err)
		return
	}
	if !p.track(down) {
		return
	}
	defer p.untrack(down)

	proto := b.appProtocol
	var conn net.Conn = down
	if proto == protoUnknown {
		conn, proto = sniff(down, p.cfg.SniffTimeout)
	}
	if proto == protoTCP {
		p.serveTCP(ctx, st, conn)
		return
	}
	p.serveHTTPStream(ctx, st, conn)
}
