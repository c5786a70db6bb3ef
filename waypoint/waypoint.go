// Package waypoint assembles the mesh's L7 proxy: it obtains the
// waypoint's own certificate from istiod-lite's CA, learns the mesh
// (Workload API), its L7 policies and the Services' routes over delta
// xDS, terminates HBONE on :15008 and serves the data path of package
// proxy, with Istio's metrics on :15020 and readiness on :15021.
//
// A waypoint runs as the ServiceAccount of its Gateway, in the Gateway's
// namespace; istiod-lite binds services and workloads to it by the
// hostname of its Service, <gateway>.<namespace>.svc.<domain>.
package waypoint

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/admin"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
	"github.com/ambient-go/mesh/waypoint/proxy"
)

// Config configures a waypoint. Namespace, Gateway and Token (or TokenFile) are
// required.
type Config struct {
	// Namespace and Gateway name the waypoint's Gateway. ServiceAccount is
	// the identity it runs as; default Gateway (istiod-lite names the
	// ServiceAccount after the Gateway). TrustDomain defaults to
	// "cluster.local", ClusterDomain to "cluster.local".
	Namespace, Gateway, ServiceAccount string
	TrustDomain, ClusterDomain         string
	// PodName and PodIP describe this replica (for the xDS node id and
	// the baggage header); defaults <Gateway> and 127.0.0.1.
	PodName string
	PodIP   netip.Addr

	// XDSAddress is istiod-lite's gRPC address (xDS and CA); default
	// "127.0.0.1:15012".
	XDSAddress string
	// CARoot, when set, is the PEM root of istiod-lite's serving
	// certificate and the connection uses TLS; empty means plaintext
	// (istiod-lite's loopback-only port, for tests).
	CARoot []byte
	// Token authenticates the waypoint to istiod-lite (xDS and CA).
	// TokenFile, if set, is read instead at every use (a projected token
	// the kubelet rotates).
	Token, TokenFile string
	// Impersonate asks the CA for the waypoint's identity by impersonation
	// (ImpersonatedIdentity): in local mode the token is the waypoint's
	// node's token, and the CA grants identities of pods on that node.
	// False (cluster mode): the token is the waypoint's own ServiceAccount
	// token, and the CA grants the token's own identity.
	Impersonate bool
	// ClusterID is sent to the CA; default "Kubernetes".
	ClusterID string
	// CertTTL is the certificate lifetime requested; default 24h.
	CertTTL time.Duration
	// CA, if set, signs the waypoint's certificate instead of istiod-lite
	// (tests).
	CA identity.Requester

	// HBONEAddr is the HBONE listener; default ":15008".
	HBONEAddr string
	// AdminAddr, MetricsAddr and ReadinessAddr default to 127.0.0.1:15000,
	// :15020 and :15021.
	AdminAddr, MetricsAddr, ReadinessAddr string

	// DrainTimeout bounds the drain once Start's context is done; default
	// 5s.
	DrainTimeout time.Duration
	// SniffTimeout and RequestTimeout: see proxy.Config.
	SniffTimeout, RequestTimeout time.Duration
	// LB is how a Service's endpoints are picked: proxy.LeastRequest (the
	// default, Istio's) or proxy.RoundRobin.
	LB proxy.LBPolicy

	// AccessLogRing is how many access-log records are kept for `meshctl
	// logs` (streamed to istiod-lite's relay); default
	// logstream.DefaultRingSize.
	AccessLogRing int
	// Logger receives the waypoint's logs and access logs; LogLevel, if
	// set, is the level /logging on the admin port shows and changes.
	Logger   *slog.Logger
	LogLevel *slog.LevelVar
	// AccessLog, if set, receives the access log instead of Logger, as
	// JSON lines of the same shape written without slog (at a fraction of
	// the cost: accesslog.NewJSON), at LogLevel.
	AccessLog io.Writer
}

// Waypoint is a running L7 proxy.
type Waypoint struct {
	cfg    Config
	log    *slog.Logger
	id     spiffeid.ID
	store  *state.Store
	l7     *policies
	certs  *identity.Manager
	pool   *hbone.Pool
	server *hbone.Server
	proxy  *proxy.Proxy
	xds    *xds.Client
	admin  *admin.Server
	conn   *grpc.ClientConn
	access *accesslog.Logger
	logs   *logstream.Agent

	mu       sync.Mutex
	hboneLn  net.Listener
	certErr  error       // last failure to get the certificate
	haveCert atomic.Bool // the certificate is there
	ready    chan struct{}
	once     sync.Once
}

// New validates cfg and builds a waypoint; Start runs it.
func New(cfg Config) (*Waypoint, error) {
	if cfg.Namespace == "" || cfg.Gateway == "" {
		return nil, errors.New("waypoint: Namespace and Gateway are required")
	}
	if cfg.Token == "" && cfg.TokenFile == "" && cfg.CA == nil {
		return nil, errors.New("waypoint: Token or TokenFile is required")
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = cfg.Gateway
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.PodName == "" {
		cfg.PodName = cfg.Gateway
	}
	// Upstream tunnels leave from the pod's address when it is given, as
	// every pod's do (it matters where pods share a network namespace:
	// local mode on loopback).
	sourceAddr := cfg.PodIP
	if !cfg.PodIP.IsValid() {
		cfg.PodIP = netip.MustParseAddr("127.0.0.1")
	}
	if cfg.XDSAddress == "" {
		cfg.XDSAddress = "127.0.0.1:15012"
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = "Kubernetes"
	}
	if cfg.HBONEAddr == "" {
		cfg.HBONEAddr = fmt.Sprintf(":%d", hbone.Port)
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	id, err := identity.WorkloadID(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("waypoint: identity: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Waypoint{
		cfg:   cfg,
		log:   log.With("component", "waypoint", "gateway", cfg.Namespace+"/"+cfg.Gateway),
		id:    id,
		store: state.NewStore(),
		ready: make(chan struct{}),
	}
	w.store.SetLogger(w.log)
	w.l7 = newPolicies(w.store, w.log)

	creds := insecure.NewCredentials()
	if len(cfg.CARoot) > 0 {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(cfg.CARoot) {
			return nil, errors.New("waypoint: CARoot holds no PEM certificate")
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, ServerName: "istiod-lite.istio-system.svc"})
	}
	token := identity.TokenSource(cfg.Token, cfg.TokenFile)
	w.conn, err = grpc.NewClient(cfg.XDSAddress, grpc.WithTransportCredentials(creds), xds.KeepaliveDialOption())
	if err != nil {
		return nil, fmt.Errorf("waypoint: istiod-lite client: %w", err)
	}
	ca := cfg.CA
	if ca == nil {
		ca = &identity.CAClient{Conn: w.conn, Token: token, Impersonate: cfg.Impersonate, ClusterID: cfg.ClusterID}
	}
	w.certs = identity.NewManager(identity.ManagerConfig{Requester: ca, TTL: cfg.CertTTL, Logger: log})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w.access = accesslog.New(log)
	if cfg.AccessLog != nil {
		var level slog.Leveler // info
		if cfg.LogLevel != nil {
			level = cfg.LogLevel
		}
		w.access = accesslog.NewJSON(cfg.AccessLog, level)
	}
	ring := logstream.NewRing(cfg.AccessLogRing)
	w.access.SetSink(ring.Sink())
	w.logs, err = logstream.NewAgent(logstream.AgentConfig{
		Conn: w.conn, Token: token, Logger: log,
		Service: logstream.NewService(logstream.Config{
			Ring: ring, Kind: logsv1.ProxyKind_WAYPOINT, Name: cfg.Namespace + "/" + cmp.Or(cfg.PodName, cfg.Gateway), // one per replica
			Apps: func(a netip.Addr) string {
				if wl := w.store.WorkloadByAddr(a); wl != nil {
					return wl.WorkloadName
				}
				return ""
			},
			Metrics: logstream.NewMetrics(reg), Logger: log,
		}),
	})
	if err != nil {
		w.conn.Close()
		return nil, err
	}
	w.pool = hbone.NewPool(hbone.PoolConfig{TLSConfig: w.certs.ClientTLSConfig, Logger: log})
	w.proxy, err = proxy.New(proxy.Config{
		Store:          w.store,
		Policies:       w.l7.current,
		Routes:         w.l7.currentRoutes,
		Pool:           w.pool,
		Identity:       id,
		SourceAddr:     sourceAddr,
		Gateway:        cfg.Gateway,
		Namespace:      cfg.Namespace,
		ClusterDomain:  cfg.ClusterDomain,
		Baggage:        baggage(cfg),
		Metrics:        telemetry.NewMetrics(reg),
		Requests:       telemetry.NewRequests(reg),
		AccessLog:      w.access,
		SniffTimeout:   cfg.SniffTimeout,
		RequestTimeout: cfg.RequestTimeout,
		LB:             cfg.LB,
		LBMetrics:      proxy.NewLBMetrics(reg),
		Logger:         log,
	})
	if err != nil {
		w.conn.Close()
		return nil, err
	}
	w.server = &hbone.Server{
		TLSConfig: w.certs.ServerTLSConfig(func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id, nil }),
		Handler:   w.proxy,
		Logger:    log,
	}
	w.xds, err = xds.NewClient(xds.ClientConfig{
		Target:      cfg.XDSAddress,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)},
		Token:       token,
		Node:        &adspb.Node{Id: NodeID(cfg), Cluster: cfg.ClusterID},
		TypeURLs:    []string{workloadapi.AddressTypeURL, workloadapi.WaypointAuthorizationTypeURL, workloadapi.WaypointRoutesTypeURL},
		Handler:     w.l7,
		Logger:      log,
	})
	if err != nil {
		w.proxy.Close()
		w.conn.Close()
		return nil, err
	}
	w.admin, err = admin.New(admin.Config{
		Name:          "waypoint",
		Level:         cfg.LogLevel,
		AdminAddr:     cfg.AdminAddr,
		MetricsAddr:   cfg.MetricsAddr,
		ReadinessAddr: cfg.ReadinessAddr,
		Gatherer:      reg,
		Ready:         w.readyErr,
		ConfigDump:    w.configDump,
		Logger:        log,
	})
	if err != nil {
		w.proxy.Close()
		w.conn.Close()
		return nil, err
	}
	return w, nil
}

// NodeID is the waypoint's xDS node id, in Istio's form for a waypoint
// (Envoy "router" proxies): router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local.
func NodeID(cfg Config) string {
	ip := cfg.PodIP.String()
	if !cfg.PodIP.IsValid() {
		ip = "127.0.0.1"
	}
	pod := cfg.PodName
	if pod == "" {
		pod = cfg.Gateway
	}
	return "router~" + ip + "~" + pod + "." + cfg.Namespace + "~" + cfg.Namespace + ".svc.cluster.local"
}

// baggage describes the waypoint itself, as Istio's waypoint does on the
// CONNECT to the endpoint (its Deployment is named after the Gateway;
// canonical revision "latest").
func baggage(cfg Config) string {
	return "k8s.namespace.name=" + cfg.Namespace +
		",k8s.deployment.name=" + cfg.Gateway +
		",service.name=" + cfg.Gateway +
		",service.version=latest"
}

// ID is the waypoint's SPIFFE identity.
func (w *Waypoint) ID() spiffeid.ID { return w.id }

// Store returns the mesh state.
func (w *Waypoint) Store() *state.Store { return w.store }

// AccessLog returns the access logger, to subscribe to records.
func (w *Waypoint) AccessLog() *accesslog.Logger { return w.access }

// Admin returns the admin server, for its addresses.
func (w *Waypoint) Admin() *admin.Server { return w.admin }

// HBONEAddr is the bound HBONE listener's address, nil before Start.
func (w *Waypoint) HBONEAddr() net.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hboneLn == nil {
		return nil
	}
	return w.hboneLn.Addr()
}

// Ready is closed once the waypoint has its certificate and a first xDS
// response of each type.
func (w *Waypoint) Ready() <-chan struct{} { return w.ready }

func (w *Waypoint) readyErr() error {
	select {
	case <-w.ready:
		return nil
	default:
	}
	if !w.haveCert.Load() {
		w.mu.Lock()
		err := w.certErr
		w.mu.Unlock()
		if err != nil {
			return fmt.Errorf("waiting for the certificate: %w", err)
		}
		return errors.New("waiting for the certificate")
	}
	return errors.New("waiting for configuration from istiod-lite")
}

// Start binds the HBONE, admin, metrics and readiness listeners, runs the
// waypoint until ctx is done, then drains open streams for DrainTimeout.
func (w *Waypoint) Start(ctx context.Context) error {
	defer w.conn.Close()
	if err := w.admin.Listen(); err != nil {
		w.proxy.Close()
		return fmt.Errorf("waypoint: admin: %w", err)
	}
	ln, err := net.Listen("tcp", w.cfg.HBONEAddr)
	if err != nil {
		w.proxy.Close()
		return fmt.Errorf("waypoint: hbone listener: %w", err)
	}
	w.mu.Lock()
	w.hboneLn = ln
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	run := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				emu.Unlock()
				cancel()
			}
		})
	}
	run("admin", w.admin.Serve)
	run("certificates", w.certs.Start)
	run("xds", w.xds.Start)
	run("readiness", w.becomeReady)
	run("logstream", w.logs.Start)
	hboneDone := make(chan struct{})
	go func() {
		defer close(hboneDone)
		if err := w.server.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			emu.Lock()
			errs = append(errs, fmt.Errorf("hbone: %w", err))
			emu.Unlock()
			cancel()
		}
	}()
	w.log.Info("waypoint started", "identity", w.id.String(), "hostname", w.proxy.Hostname(), "hbone", ln.Addr().String())
	<-ctx.Done()
	// Drain: no new tunnels; open ones get DrainTimeout.
	drain, cancelDrain := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	var dwg sync.WaitGroup
	dwg.Go(func() { w.server.Shutdown(drain) })
	dwg.Go(func() { w.proxy.Drain(drain) })
	dwg.Wait()
	cancelDrain()
	<-hboneDone
	w.pool.Close()
	wg.Wait()
	w.log.Info("waypoint stopped")
	emu.Lock()
	defer emu.Unlock()
	return errors.Join(errs...)
}

// becomeReady fetches the waypoint's certificate (retrying with the
// manager's backoff) and waits for the first configuration, then closes
// Ready.
func (w *Waypoint) becomeReady(ctx context.Context) error {
	for !w.haveCert.Load() {
		_, err := w.certs.Get(ctx, w.id)
		if err == nil {
			w.haveCert.Store(true)
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		w.mu.Lock()
		w.certErr = err
		w.mu.Unlock()
		w.log.Warn("fetching the waypoint certificate", "identity", w.id.String(), "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	select {
	case <-w.xds.Synced():
	case <-ctx.Done():
		return nil
	}
	w.once.Do(func() { close(w.ready) })
	w.log.Info("waypoint ready")
	return nil
}
