// Package server assembles istiod-lite: a configuration source feeds the
// model, whose output the delta xDS server pushes to every connected
// ztunnel, and the CA signs workload certificates for the nodes that run
// them. The xDS server and the CA share one gRPC server, exposed with TLS
// (15012) and, only when Config.PlaintextAddr asks for it in tests, in
// plaintext on a loopback address.
//
// Every xDS stream is authenticated before anything is sent: with the
// bearer token the CA accepts (a node token in local mode, a
// ServiceAccount token reviewed by the API server in cluster mode), or,
// on the TLS listener, with a client certificate chained to the mesh root
// whose SPIFFE ID is in the mesh's trust domain. Anything else is refused
// with codes.Unauthenticated, on both listeners.
//
// In local mode the source is a watched directory of Kubernetes YAML
// (package localdir), and nodes authenticate to the CA with per-node tokens
// from that directory. In cluster mode (Config.Kube set) the source is the
// informer caches of a controller-runtime manager (package source/kube),
// nodes authenticate with service account tokens checked by TokenReview
// (ca.TokenReviewAuthenticator), every replica signs with the root kept in
// the Secret istio-system/istio-ca-secret, and the elected leader deploys
// waypoints (package deployer), writes policy, Service and Gateway status
// onto the objects (package status) and publishes the root
// in the ConfigMap istio-ca-root-cert of every namespace. Both sources
// feed the same model and the same xDS server.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ambient-go/mesh/istiod-lite/ca"
	"github.com/ambient-go/mesh/istiod-lite/deployer"
	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/relay"
	"github.com/ambient-go/mesh/istiod-lite/source/kube"
	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
	"github.com/ambient-go/mesh/istiod-lite/status"
	"github.com/ambient-go/mesh/istiod-lite/xds"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	pkgxds "github.com/ambient-go/mesh/pkg/xds"
)

// Config configures istiod-lite. StateDir is required, and ConfigDir in
// local mode (Kube nil).
type Config struct {
	// ConfigDir is the directory of Kubernetes YAML that local mode serves.
	ConfigDir string
	// Kube selects cluster mode: the API server istiod-lite watches, reviews
	// tokens with and writes status to. Nil is local mode.
	Kube *rest.Config
	// Cluster tunes cluster mode.
	Cluster ClusterOptions
	// StateDir keeps the CA's root key and certificate across restarts.
	StateDir string
	// Addr is the TLS gRPC address (xDS and CA); default ":15012".
	Addr string
	// PlaintextAddr is a plaintext gRPC address (xDS and CA) for tests and
	// local experiments; default "" (or "off"): no plaintext listener. It
	// must be a loopback address (New refuses any other): the transport is
	// unauthenticated and unencrypted, so a bearer token sent over it can
	// be read by anyone on the path. Callers must still authenticate with
	// a token, as on Addr.
	PlaintextAddr string
	// MetricsAddr serves Prometheus metrics on /metrics; default "": no
	// listener (Istio's istiod uses :15014).
	MetricsAddr string
	// RateLimits bound the CA and xDS requests of each authenticated
	// caller (ratelimit.go); the zero value is the defaults.
	RateLimits RateLimits
	// Model holds the mesh-wide options (trust domain, cluster id...).
	Model  model.Options
	Logger *slog.Logger
}

// ClusterOptions tune cluster mode; the zero value works.
type ClusterOptions struct {
	// LeaderElectionNamespace holds the Lease of the status writer's leader
	// election; default model.Options.RootNamespace, or "istio-system".
	LeaderElectionNamespace string
	// LeaderElectionID names the Lease; default "istiod-lite".
	LeaderElectionID string
	// NodeAgents are the "namespace/name" of the service accounts that may
	// obtain certificates for the identities on their pod's node; default
	// [ca.DefaultNodeAgent].
	NodeAgents []string
	// Debounce coalesces cluster events; default kube.DefaultDebounce.
	Debounce time.Duration
	// WaypointImage is the image of the waypoint Deployments the leader
	// deploys for Gateways of class istio-waypoint; default
	// deployer.DefaultImage.
	WaypointImage string
	// WaypointXDSAddress is istiod-lite's address as waypoint pods dial
	// it (xDS and CA); default deployer.DefaultXDSAddress.
	WaypointXDSAddress string
}

// Server is a running istiod-lite.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ca      *ca.CA
	xds     *xds.Server
	relay   *relay.Relay
	watcher *localdir.Watcher     // local mode
	mgr     manager.Manager       // cluster mode
	status  *status.Writer        // cluster mode
	rootCM  *ca.RootCertPublisher // cluster mode
	grpc    *grpc.Server
	plain   *grpc.Server
	tlsL    net.Listener
	plainL  net.Listener

	reg        *prometheus.Registry // metrics.go
	metricsL   net.Listener
	metricsSrv *http.Server

	// snapshot is what the CA authorizes against: the latest tokens and
	// per-node identities.
	snapshot atomic.Pointer[authSnapshot]
	synced   chan struct{}
	once     sync.Once

	// builder turns inputs into xDS resources, reusing what did not change
	// since the previous snapshot (owned by apply's goroutine, like
	// statusLogged).
	builder *model.Builder

	// statuses are the latest policy statuses; statusLogged holds what was
	// last logged per policy (owned by apply's goroutine).
	statuses     atomic.Pointer[map[string]*model.PolicyStatus]
	statusLogged map[string]string
	// gatewayStatuses are the latest waypoint Gateway statuses;
	// gatewayLogged holds what was last logged per Gateway (owned by
	// apply's goroutine).
	gatewayStatuses atomic.Pointer[map[string]*model.GatewayStatus]
	gatewayLogged   map[string]string
	// routeStatuses are the latest route statuses; routeLogged holds
	// what was last logged per route (owned by apply's goroutine).
	routeStatuses atomic.Pointer[map[string]*model.RouteStatus]
	routeLogged   map[string]string

	// logUsers are local mode's meshctl tokens (user → token), and
	// namespaces every namespace, for the log relay's authorizer.
	logUsers   atomic.Pointer[map[string]string]
	namespaces atomic.Pointer[[]string]
}

type authSnapshot struct {
	tokens     map[string]string              // token → node
	identities map[string]map[string]struct{} // node → SPIFFE IDs
}

// New builds istiod-lite and binds its listeners, so that Addr and
// PlaintextAddr are known before Start.
func New(cfg Config) (*Server, error) {
	if cfg.StateDir == "" || (cfg.ConfigDir == "" && cfg.Kube == nil) {
		return nil, errors.New("istiod-lite: ConfigDir and StateDir are required")
	}
	if cfg.Addr == "" {
		cfg.Addr = ":15012"
	}
	if cfg.PlaintextAddr == "off" {
		cfg.PlaintextAddr = ""
	}
	if err := checkLoopback(cfg.PlaintextAddr); err != nil {
		return nil, fmt.Errorf("istiod-lite: plaintext gRPC address: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(cmp.Or(cfg.Model.TrustDomain, ca.DefaultTrustDomain))
	if err != nil {
		return nil, fmt.Errorf("istiod-lite: trust domain: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "istiod-lite"), synced: make(chan struct{})}
	s.snapshot.Store(&authSnapshot{})
	hits, err := s.newMetrics()
	if err != nil {
		return nil, fmt.Errorf("istiod-lite: metrics: %w", err)
	}
	rl := cfg.RateLimits
	caLimit := newCallerLimiter(LimitCARequests, rl.CARate, rl.CABurst, 20, 200, hits)
	xdsLimit := newCallerLimiter(LimitXDSRequests, rl.XDSRate, rl.XDSBurst, 50, 500, hits)

	var (
		authn ca.Authenticator = &ca.TokenAuthenticator{Tokens: func() map[string]string { return s.snapshot.Load().tokens }}
		cs    kubernetes.Interface
	)
	if cfg.Kube != nil {
		rc := rest.CopyConfig(cfg.Kube)
		if rc.QPS == 0 {
			// A starting ztunnel asks for every identity of its node at once;
			// reviews are cached, but the first ones should not queue.
			rc.QPS, rc.Burst = 50, 100
		}
		if cs, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("istiod-lite: kubernetes client: %w", err)
		}
		authn = &ca.TokenReviewAuthenticator{Client: cs, NodeAgents: cfg.Cluster.NodeAgents, TrustDomain: cfg.Model.TrustDomain}
	}
	caCfg := ca.Config{
		StateDir:      cfg.StateDir,
		TrustDomain:   cfg.Model.TrustDomain,
		Authenticator: limitCA(authn, caLimit),
		Authorizer:    s,
		Logger:        log,
	}
	if cfg.Kube != nil {
		// Every replica signs with the root of the Secret istio-ca-secret.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s.ca, err = ca.NewShared(ctx, cs, cmp.Or(cfg.Model.RootNamespace, model.DefaultRootNamespace), caCfg)
		cancel()
	} else {
		s.ca, err = ca.New(caCfg)
	}
	if err != nil {
		return nil, fmt.Errorf("istiod-lite: %w", err)
	}
	s.xds = xds.NewServer(xds.ServerConfig{Logger: log, Authenticate: limitXDS(xdsAuthenticator(authn, td), xdsLimit)})
	if s.relay, err = newRelay(s, cs, xdsAuthenticator(authn, td), log); err != nil {
		return nil, fmt.Errorf("istiod-lite: %w", err)
	}
	if cfg.Kube != nil {
		if err := s.newCluster(log); err != nil {
			return nil, fmt.Errorf("istiod-lite: %w", err)
		}
	} else {
		s.watcher, err = localdir.NewWatcher(localdir.Config{Dir: cfg.ConfigDir, Logger: log, OnUpdate: s.apply})
		if err != nil {
			return nil, fmt.Errorf("istiod-lite: %w", err)
		}
	}

	cert := &servingCert{ca: s.ca}
	if _, err := cert.get(); err != nil {
		return nil, fmt.Errorf("istiod-lite: serving certificate: %w", err)
	}
	roots := x509.NewCertPool()
	for _, r := range s.ca.Roots() {
		roots.AddCert(r)
	}
	// Both servers keep Istio's keepalive (pkg/xds KeepaliveServerOptions).
	common := append(pkgxds.KeepaliveServerOptions(), grpc.ChainStreamInterceptor(xdsLimit.streamInterceptor))
	s.grpc = grpc.NewServer(append(common, grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get() },
		// A mesh certificate authenticates an xDS stream; ztunnels send a
		// token instead, and the CA always asks for one.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  roots,
	})))...)
	s.register(s.grpc)
	if s.tlsL, err = net.Listen("tcp", cfg.Addr); err != nil {
		return nil, fmt.Errorf("istiod-lite: %w", err)
	}
	if cfg.PlaintextAddr != "" {
		s.plain = grpc.NewServer(common...)
		s.register(s.plain)
		if s.plainL, err = net.Listen("tcp", cfg.PlaintextAddr); err != nil {
			s.tlsL.Close()
			return nil, fmt.Errorf("istiod-lite: %w", err)
		}
	}
	if err := s.listenMetrics(); err != nil {
		s.tlsL.Close()
		if s.plainL != nil {
			s.plainL.Close()
		}
		return nil, fmt.Errorf("istiod-lite: metrics: %w", err)
	}
	return s, nil
}

// checkLoopback accepts "" and a host:port whose host is a loopback IP
// address or "localhost".
func checkLoopback(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address: the plaintext port is unauthenticated transport for tests and binds only to loopback", addr)
	}
	return nil
}

// xdsAuthenticator authenticates an xDS stream with the CA's bearer token
// authenticator when the stream carries a token, otherwise with the
// client certificate of a TLS connection, which must chain to the mesh
// root (the TLS handshake verified that) and hold a SPIFFE ID of trust
// domain td.
func xdsAuthenticator(authn ca.Authenticator, td spiffeid.TrustDomain) func(context.Context) (xds.Caller, error) {
	return func(ctx context.Context) (xds.Caller, error) {
		if _, err := ca.BearerToken(ctx); err == nil {
			c, err := authn.Authenticate(ctx)
			if err != nil {
				return xds.Caller{}, err
			}
			if c == nil {
				return xds.Caller{}, errors.New("no caller")
			}
			caller := xds.Caller{Node: c.Node}
			if !c.Identity.IsZero() {
				caller.Identity = c.Identity.String()
			}
			return caller, nil
		}
		var info credentials.TLSInfo
		if p, ok := peer.FromContext(ctx); ok {
			info, _ = p.AuthInfo.(credentials.TLSInfo)
		}
		if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
			return xds.Caller{}, errors.New("no bearer token and no client certificate")
		}
		leaf := info.State.VerifiedChains[0][0]
		if len(leaf.URIs) != 1 {
			return xds.Caller{}, fmt.Errorf("client certificate has %d URI SANs, want one SPIFFE ID", len(leaf.URIs))
		}
		id, err := spiffeid.FromURI(leaf.URIs[0])
		if err != nil {
			return xds.Caller{}, fmt.Errorf("client certificate: %w", err)
		}
		if !id.MemberOf(td) {
			return xds.Caller{}, fmt.Errorf("client certificate identity %q is not in trust domain %q", id, td.Name())
		}
		return xds.Caller{Identity: id.String()}, nil
	}
}

// newCluster builds cluster mode's manager, source, status writer and
// waypoint deployer.
func (s *Server) newCluster(log *slog.Logger) error {
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	opt := s.cfg.Cluster
	if opt.LeaderElectionNamespace == "" {
		opt.LeaderElectionNamespace = cmp.Or(s.cfg.Model.RootNamespace, model.DefaultRootNamespace)
	}
	if opt.LeaderElectionID == "" {
		opt.LeaderElectionID = "istiod-lite"
	}
	s.mgr, err = manager.New(s.cfg.Kube, manager.Options{
		Scheme:                        scheme,
		Logger:                        logr.FromSlogHandler(log.With("component", "controller-runtime").Handler()),
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		LeaderElection:                true,
		LeaderElectionID:              opt.LeaderElectionID,
		LeaderElectionNamespace:       opt.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				// Only the ConfigMaps the root certificate publisher writes.
				&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", ca.RootCertConfigMap)},
				// Only the Deployments of waypoints.
				&appsv1.Deployment{}: {Label: labels.SelectorFromSet(labels.Set{deployer.ManagedLabel: deployer.ManagedValue})},
			},
		},
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	// The waypoint deployer needs the Gateway API's CRDs: set up now, or
	// once the source sees them installed.
	var (
		deployerMu   sync.Mutex
		deployerDone bool
	)
	setupDeployer := func() error {
		deployerMu.Lock()
		defer deployerMu.Unlock()
		if deployerDone {
			return nil
		}
		err := s.setupDeployer(opt, log)
		deployerDone = err == nil
		return err
	}
	src, err := kube.New(context.Background(), s.mgr, kube.Config{Debounce: opt.Debounce, Logger: log, OnUpdate: s.applyKube,
		OnWatched: func(kind string) {
			if kind != model.KindGateway && kind != "GatewayClass" {
				return
			}
			switch err := setupDeployer(); {
			case err == nil:
				log.Info("waypoint deployer started: the Gateway API CRDs were installed")
			case meta.IsNoMatchError(err):
				// The other kind's CRD is not served yet; its turn comes.
			default:
				log.Error("waypoint deployer not started", "error", err.Error())
			}
		}})
	if err != nil {
		return err
	}
	if s.rootCM, err = ca.NewRootCertPublisher(s.mgr.GetClient(), s.ca.RootPEM(), log); err != nil {
		return err
	}
	inf, err := s.mgr.GetCache().GetInformer(context.Background(), &corev1.ConfigMap{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("configmap informer: %w", err)
	}
	trigger := func(any) { s.rootCM.Trigger() }
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: trigger, DeleteFunc: trigger, UpdateFunc: func(_, o any) { trigger(o) },
	}); err != nil {
		return fmt.Errorf("configmap informer: %w", err)
	}
	if err := s.mgr.Add(s.rootCM); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if s.status, err = status.New(status.Config{Client: s.mgr.GetClient(), Skip: src.Skipped(), Watched: src.Watched, Logger: log}); err != nil {
		return err
	}
	if err := s.mgr.Add(s.status); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if !slices.Contains(src.Skipped(), model.KindGateway) {
		if err := setupDeployer(); err != nil {
			if !meta.IsNoMatchError(err) {
				return err
			}
			log.Warn("waypoints not deployed until the Gateway API CRDs are installed", "error", err.Error())
		}
	}
	return nil
}

// setupDeployer adds the waypoint deployer to the manager (at start, or
// once the Gateway API's CRDs are installed).
func (s *Server) setupDeployer(opt ClusterOptions, log *slog.Logger) error {
	d, err := deployer.New(deployer.Config{
		Client: s.mgr.GetClient(), Reader: s.mgr.GetAPIReader(),
		Image: opt.WaypointImage, XDSAddress: opt.WaypointXDSAddress,
		TrustDomain: s.cfg.Model.TrustDomain, DomainSuffix: s.cfg.Model.DomainSuffix, ClusterID: s.cfg.Model.ClusterID,
		Logger: log,
	})
	if err != nil {
		return err
	}
	return d.SetupWithManager(s.mgr)
}

func (s *Server) register(g *grpc.Server) {
	s.xds.Register(g)
	s.xds.RegisterDebug(g, s.debugConfig())
	s.ca.Register(g)
	s.relay.Register(g)
}

// Addr is the TLS gRPC listener's address.
func (s *Server) Addr() net.Addr { return s.tlsL.Addr() }

// Manager is cluster mode's controller-runtime manager, or nil in local
// mode.
func (s *Server) Manager() manager.Manager { return s.mgr }

// PlaintextAddr is the plaintext gRPC listener's address, or nil.
func (s *Server) PlaintextAddr() net.Addr {
	if s.plainL == nil {
		return nil
	}
	return s.plainL.Addr()
}

// RootPEM is the mesh's root certificate, which ztunnels use to verify
// istiod-lite's TLS listener.
func (s *Server) RootPEM() []byte { return s.ca.RootPEM() }

// Synced is closed once the first configuration has been loaded and served.
func (s *Server) Synced() <-chan struct{} { return s.synced }

// XDS returns the xDS server (for its connected clients).
func (s *Server) XDS() *xds.Server { return s.xds }

// Start serves until ctx is done.
func (s *Server) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Go(func() {
		if err := s.serveMetrics(ctx); err != nil {
			errc <- fmt.Errorf("metrics: %w", err)
			cancel()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := func(ctx context.Context) error { return s.watcher.Start(ctx) }
		if s.mgr != nil {
			start = s.mgr.Start
		}
		if err := start(ctx); err != nil {
			errc <- fmt.Errorf("config source: %w", err)
			cancel()
		}
	}()
	serve := func(g *grpc.Server, l net.Listener) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("grpc %s: %w", l.Addr(), err)
				cancel()
			}
		}()
	}
	serveAll := func() {
		serve(s.grpc, s.tlsL)
		if s.plain != nil {
			serve(s.plain, s.plainL)
		}
		source := slog.String("config_dir", s.cfg.ConfigDir)
		if s.mgr != nil {
			source = slog.String("kubernetes", s.cfg.Kube.Host)
		}
		s.log.Info("serving", "grpc_tls", s.tlsL.Addr().String(), "grpc_plaintext", fmt.Sprint(s.PlaintextAddr()), source)
	}
	if s.mgr == nil {
		serveAll()
	} else {
		// Cluster mode serves once the caches have synced: a ztunnel that
		// reconnects to a fresh replica must not be told that everything
		// is gone, nor be refused certificates for lack of pods. Until
		// then its connection waits in the listener's backlog.
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-s.synced:
				if ctx.Err() == nil {
					serveAll()
					return
				}
			case <-ctx.Done():
			}
			s.tlsL.Close()
			if s.plainL != nil {
				s.plainL.Close()
			}
		}()
	}
	<-ctx.Done()
	// Streams to ztunnels never end by themselves; Stop closes them, and
	// ztunnels keep their last configuration until we are back.
	s.grpc.Stop()
	if s.plain != nil {
		s.plain.Stop()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// apply applies one snapshot of the config directory (local mode).
func (s *Server) apply(snap *localdir.Snapshot) {
	s.setLogUsers(snap.Secrets)
	s.applyInputs(snap.Inputs, snap.NodeTokens)
}

// applyKube applies one snapshot of the informer caches (cluster mode) and
// hands the policy, Service and Gateway statuses to the status writer.
func (s *Server) applyKube(snap *kube.Snapshot) {
	st := s.applyInputs(snap.Inputs, nil)
	if s.status != nil {
		s.status.Update(st)
		if gw := s.gatewayStatuses.Load(); gw != nil {
			s.status.UpdateGateways(*gw)
		}
		if rs := s.routeStatuses.Load(); rs != nil {
			s.status.UpdateRoutes(*rs)
		}
	}
	s.rootCM.Trigger() // namespaces may have changed
}

// applyInputs turns one snapshot of either source into xDS resources and
// the CA's view of nodes, and returns the policy statuses.
func (s *Server) applyInputs(in *model.Inputs, tokens map[string]string) map[string]*model.PolicyStatus {
	start := time.Now()
	if s.builder == nil {
		s.builder = model.NewBuilder(s.cfg.Model)
	}
	out := s.builder.Build(in)
	s.setNamespaces(in)
	s.snapshot.Store(&authSnapshot{
		tokens:     tokens,
		identities: model.NodeIdentities(in, s.cfg.Model),
	})
	addrs := make(map[string]proto.Message, len(out.Addresses))
	for k, v := range out.Addresses {
		addrs[k] = v
	}
	pols := make(map[string]proto.Message, len(out.Authorizations))
	for k, v := range out.Authorizations {
		pols[k] = v
	}
	wpols := make(map[string]proto.Message, len(out.WaypointAuthorizations))
	for k, v := range out.WaypointAuthorizations {
		wpols[k] = v
	}
	routes := make(map[string]proto.Message, len(out.WaypointRoutes))
	for k, v := range out.WaypointRoutes {
		routes[k] = v
	}
	s.logPolicyStatuses(out.PolicyStatuses)
	s.logGatewayStatuses(out.GatewayStatuses)
	s.logRouteStatuses(out.RouteStatuses)
	s.xds.Set(workloadapi.AddressTypeURL, addrs)
	s.xds.Set(workloadapi.AuthorizationTypeURL, pols)
	s.xds.Set(workloadapi.WaypointAuthorizationTypeURL, wpols)
	s.xds.Set(workloadapi.WaypointRoutesTypeURL, routes)
	s.once.Do(func() { close(s.synced) })
	s.log.Info("configuration applied", "addresses", len(addrs), "policies", len(pols), "took", time.Since(start).String())
	return out.PolicyStatuses
}

var _ ca.Authorizer = (*Server)(nil)

// IdentityOnNode implements ca.Authorizer: a node may obtain the identities
// of the pods scheduled on it, nothing else.
func (s *Server) IdentityOnNode(node string, id spiffeid.ID) bool {
	_, ok := s.snapshot.Load().identities[node][id.String()]
	return ok
}

// servingCert is istiod-lite's own TLS certificate, reissued at half its
// lifetime.
type servingCert struct {
	ca   *ca.CA
	mu   sync.Mutex
	cert *tls.Certificate
}

const servingTTL = 24 * time.Hour

func (c *servingCert) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && time.Until(c.cert.Leaf.NotAfter) > servingTTL/2 {
		return c.cert, nil
	}
	cert, err := c.ca.ServingCertificate(
		// istiod.istio-system.svc: the name Istio's ztunnel and proxies
		// dial and check by default (deploy/ has a Service istiod).
		[]string{"istiod-lite.istio-system.svc", "istiod-lite.istio-system.svc.cluster.local",
			"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "localhost"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, servingTTL)
	if err != nil {
		return nil, err
	}
	c.cert = &cert
	return c.cert, nil
}

// Errors are the configuration source's current parse errors (file and
// line), whose files' last good content stays served, the policies that
// are not applied and the Services whose waypoint does not bind (status
// condition False), the Gateways that are not accepted, and the routes
// not accepted, with unresolved references or rules not served.
func (s *Server) Errors() []error {
	var errs []error
	if s.watcher != nil {
		errs = s.watcher.Errors()
	}
	for _, st := range s.PolicyStatuses() {
		for _, c := range st.Conditions {
			switch {
			case c.Rejected() && c.Type == model.ConditionWaypointBound:
				errs = append(errs, fmt.Errorf("%s %s/%s not bound to a waypoint: %s: %s", st.Kind, st.Namespace, st.Name, c.Reason, c.Message))
			case c.Rejected():
				errs = append(errs, fmt.Errorf("%s %s/%s not applied: %s: %s", st.Kind, st.Namespace, st.Name, c.Reason, c.Message))
			}
		}
	}
	for _, st := range s.GatewayStatuses() {
		for _, r := range st.Rejected() {
			errs = append(errs, fmt.Errorf("%s %s/%s: %s", model.KindGateway, st.Namespace, st.Name, r))
		}
	}
	for _, st := range s.RouteStatuses() {
		for _, r := range st.Rejected() {
			errs = append(errs, fmt.Errorf("%s %s/%s: %s", st.Kind, st.Namespace, st.Name, r))
		}
	}
	return errs
}

// GatewayStatuses returns the status of every waypoint Gateway, sorted by
// namespace and name. Local mode has no API server to write them to; they
// are logged when they change.
func (s *Server) GatewayStatuses() []*model.GatewayStatus {
	m := s.gatewayStatuses.Load()
	if m == nil {
		return nil
	}
	out := make([]*model.GatewayStatus, 0, len(*m))
	for _, k := range slices.Sorted(maps.Keys(*m)) {
		out = append(out, (*m)[k])
	}
	return out
}

// logGatewayStatuses stores the Gateway statuses and logs each Gateway
// whose conditions or addresses changed: a warning when a condition is
// False.
func (s *Server) logGatewayStatuses(statuses map[string]*model.GatewayStatus) {
	s.gatewayStatuses.Store(&statuses)
	if s.gatewayLogged == nil {
		s.gatewayLogged = map[string]string{}
	}
	for k := range s.gatewayLogged {
		if _, ok := statuses[k]; !ok {
			delete(s.gatewayLogged, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(statuses)) {
		st := statuses[k]
		var addrs []string
		for _, a := range st.Addresses {
			addrs = append(addrs, a.Value)
		}
		var conds []string
		for _, c := range st.Conditions {
			conds = append(conds, c.Type+"="+string(c.Status)+" "+c.Reason)
		}
		rejected := st.Rejected()
		sig := fmt.Sprint(addrs, conds, rejected)
		if s.gatewayLogged[k] == sig {
			continue
		}
		s.gatewayLogged[k] = sig
		level := slog.LevelInfo
		if len(rejected) > 0 {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "gateway status", "namespace", st.Namespace, "name", st.Name,
			"addresses", addrs, "conditions", conds, "problems", rejected)
	}
}

// PolicyStatuses returns the status of every AuthorizationPolicy and
// PeerAuthentication, sorted by kind, namespace and name. Local mode has no
// API server to write them to; they are logged when they change.
func (s *Server) PolicyStatuses() []*model.PolicyStatus {
	m := s.statuses.Load()
	if m == nil {
		return nil
	}
	out := make([]*model.PolicyStatus, 0, len(*m))
	for _, k := range slices.Sorted(maps.Keys(*m)) {
		out = append(out, (*m)[k])
	}
	return out
}

// logPolicyStatuses stores the statuses and logs each condition that
// changed: a warning when the policy is not applied or only in part.
func (s *Server) logPolicyStatuses(statuses map[string]*model.PolicyStatus) {
	s.statuses.Store(&statuses)
	if s.statusLogged == nil {
		s.statusLogged = map[string]string{}
	}
	for k := range s.statusLogged {
		if _, ok := statuses[k]; !ok {
			delete(s.statusLogged, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(statuses)) {
		st := statuses[k]
		for _, c := range st.Conditions {
			sig := c.Type + "|" + c.Status + "|" + c.Reason + "|" + c.Message
			if s.statusLogged[k] == sig {
				continue
			}
			s.statusLogged[k] = sig
			level := slog.LevelInfo
			if c.Rejected() || (c.Reason != model.ReasonAccepted && c.Reason != model.ReasonWaypointAccepted) {
				level = slog.LevelWarn
			}
			s.log.Log(context.Background(), level, "policy status", "kind", st.Kind, "namespace", st.Namespace, "name", st.Name,
				"condition", c.Type, "status", c.Status, "reason", c.Reason, "message", c.Message)
		}
	}
}
