// Package ztunnel assembles the node proxy: it connects to istiod-lite for
// configuration (delta xDS) and certificates (CA), keeps the mesh state,
// and serves the data path for the workloads of its node.
//
// How it reaches the node's pods is its dataplane (dataplane.go), one per
// Config.Mode. In local mode (local.go) every pod IP is a loopback address,
// and ztunnel binds, on each ambient pod's own address, an HBONE listener
// (inbound, 15008) and a SOCKS5 listener (outbound, 15080); it dials
// applications from the client's pod address, so applications see the real
// source address without any capture rules or privileges. In in-pod mode
// (inpod.go) the CNI plugin hands ztunnel each pod's network namespace, and
// ztunnel captures the pod's traffic and listens inside it, as Istio's
// ztunnel does.
package ztunnel

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
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
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
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/proxy"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

// DefaultXDSServerName is the name the xDS and CA server's certificate is
// checked for by default: Istio's istiod's, which istiod-lite's also carries.
const DefaultXDSServerName = "istiod.istio-system.svc"

// Config configures a ztunnel. Node and Token (or TokenFile) are required.
type Config struct {
	// Node is the name of the node this ztunnel serves.
	Node string
	// XDSAddress is istiod-lite's gRPC address (xDS and CA); default
	// "127.0.0.1:15012".
	XDSAddress string
	// CARoot, when set, is the PEM root that istiod-lite's serving
	// certificate chains to, and the connection uses TLS; empty means
	// plaintext (istiod-lite's loopback-only plaintext port, for tests).
	CARoot []byte
	// XDSServerName is the name istiod-lite's serving certificate is
	// checked for; default "istiod.istio-system.svc", the name Istio's
	// ztunnel checks, which istiod-lite's certificate and Istio's istiod's
	// both carry.
	XDSServerName string
	// Token authenticates this node to istiod-lite, for xDS and the CA
	// (local mode: the node's token from the config directory; cluster
	// mode: ztunnel's ServiceAccount token). TokenFile, if set, is read
	// instead at every use (a projected token the kubelet rotates).
	Token, TokenFile string
	// ClusterID is sent to the CA; default "Kubernetes".
	ClusterID string
	// CertTTL is the certificate lifetime requested; default 24h.
	CertTTL time.Duration

	// HBONEPort and SOCKSPort are bound on every local pod address;
	// defaults 15008 and 15080.
	HBONEPort, SOCKSPort uint16

	// QUIC is HBONE over QUIC: proxy.QUICOff (default), QUICOn (also
	// serve UDP 15008 on every pod address) or QUICPrefer (also dial over
	// QUIC first, falling back to TCP after QUICTimeout, default 1 s, and
	// remembering the failure for QUICHold, default 5 min), for the
	// source workloads of QUICNamespaces (empty: all). docs/quic.md.
	QUIC                  string
	QUICTimeout, QUICHold time.Duration
	QUICNamespaces        []string

	// AdminAddr, MetricsAddr and ReadinessAddr default to
	// 127.0.0.1:15000, :15020 and :15021.
	AdminAddr, MetricsAddr, ReadinessAddr string

	// DrainTimeout is how long open connections may run on after Start's
	// context ends; default 5s.
	DrainTimeout time.Duration

	// Limits are the data path's limits (limits.go); the zero value is
	// every documented default.
	Limits Limits

	// Mode is ModeLocal (default) or ModeInpod. In ModeInpod ztunnel
	// captures the traffic of each ambient pod inside the pod's network
	// namespace, which the CNI plugin hands over on ZDSSocket; pods that
	// were running before ztunnel started are read from PodStateDir.
	Mode string
	// ZDSSocket is where in-pod mode listens for the CNI plugin; default
	// zds.DefaultSocket.
	ZDSSocket string
	// PodStateDir holds the CNI plugin's pod records; default
	// zds.DefaultStateDir.
	PodStateDir string
	// PodWorkloadTimeout bounds how long in-pod mode's AddPod waits for a
	// new pod's workload from istiod-lite (published when the pod is
	// scheduled, before it has an IP) to decide whether to capture it;
	// past it the CNI ADD fails and the kubelet retries the sandbox.
	// Default 5s: it must stay below the CNI plugin's ack timeout (10s,
	// cni.Plugin.Timeout), so that the plugin receives ztunnel's error.
	// Negative: AddPod does not wait, and a new pod is captured only once
	// its workload arrives, after its containers started — for Istio's
	// istiod, which publishes a pod only once it has an IP (with it,
	// waiting would fail every new pod).
	PodWorkloadTimeout time.Duration

	// Logger receives ztunnel's logs and access logs; LogLevel, if set, is
	// the level /logging changes.
	Logger   *slog.Logger
	LogLevel *slog.LevelVar
	// AccessLog, if set, receives the access log instead of Logger, as
	// JSON lines of the same shape written without slog (at a fraction of
	// the cost: accesslog.NewJSON), at LogLevel.
	AccessLog io.Writer

	// AccessLogRing is how many access-log records are kept for `meshctl
	// logs` (streamed to istiod-lite's relay); default
	// logstream.DefaultRingSize.
	AccessLogRing int

	// WorkerThreads, if positive, sets GOMAXPROCS for the whole process
	// (like Istio ztunnel's ZTUNNEL_WORKER_THREADS, default 2 there).
	// Zero: $ZTUNNEL_WORKER_THREADS if set, otherwise the runtime is left
	// alone (in-process tests run several ztunnels and must not change it).
	// One thread cuts ztunnel's CPU per request by about a third on a
	// loopback benchmark (docs/optimisations.md): goroutine hand-offs stay
	// on one P instead of waking idle threads through futex.
	WorkerThreads int
}

// workerThreads applies Config.WorkerThreads or $ZTUNNEL_WORKER_THREADS.
func workerThreads(n int, log *slog.Logger) {
	if n <= 0 {
		v := os.Getenv("ZTUNNEL_WORKER_THREADS")
		if v == "" {
			return
		}
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			log.Warn("ignoring ZTUNNEL_WORKER_THREADS: not a positive integer", "value", v)
			return
		}
	}
	runtime.GOMAXPROCS(n)
	log.Info("worker threads (GOMAXPROCS) set", "threads", n)
}

// Ztunnel is a running node proxy.
type Ztunnel struct {
	cfg    Config
	log    *slog.Logger
	store  *state.Store
	certs  *identity.Manager
	pool   *hbone.Pool
	server *hbone.Server
	quic   *quicNode // nil: QUIC off (quic.go)
	proxy  *proxy.Proxy
	xds    *xds.Client
	admin  *admin.Server
	conn   *grpc.ClientConn
	access *accesslog.Logger

	kick  chan struct{}
	ready chan struct{}
	// reconciled is signalled after every reconcile, for releaseLoop
	// (settle.go).
	reconciled chan struct{}
	readyOnce  sync.Once
	bound      atomic.Bool

	dp dataplane // local or in-pod (Config.Mode)

	// runners are what Start runs until its context is done or one fails.
	runners []runner
}

// runner is one of the goroutines of Start.
type runner struct {
	name string
	run  func(context.Context) error
}

// New validates cfg and builds a ztunnel; Start runs it.
func New(cfg Config) (*Ztunnel, error) {
	if cfg.Node == "" {
		return nil, errors.New("ztunnel: Node is required")
	}
	if cfg.Token == "" && cfg.TokenFile == "" {
		return nil, errors.New("ztunnel: Token or TokenFile is required")
	}
	if cfg.XDSAddress == "" {
		cfg.XDSAddress = "127.0.0.1:15012"
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = "Kubernetes"
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	if cfg.SOCKSPort == 0 {
		cfg.SOCKSPort = 15080
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeLocal
	case ModeLocal, ModeInpod:
	default:
		return nil, fmt.Errorf("ztunnel: unknown Mode %q (want %q or %q)", cfg.Mode, ModeLocal, ModeInpod)
	}
	if cfg.ZDSSocket == "" {
		cfg.ZDSSocket = zds.DefaultSocket
	}
	if cfg.PodStateDir == "" {
		cfg.PodStateDir = zds.DefaultStateDir
	}
	if cfg.PodWorkloadTimeout == 0 {
		cfg.PodWorkloadTimeout = 5 * time.Second
	}
	if cfg.LogLevel == nil {
		cfg.LogLevel = new(slog.LevelVar)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	workerThreads(cfg.WorkerThreads, log)
	z := &Ztunnel{
		cfg:   cfg,
		log:   log.With("component", "ztunnel", "node", cfg.Node),
		store: state.NewStore(),
		kick:  make(chan struct{}, 1),
		ready: make(chan struct{}),

		reconciled: make(chan struct{}, 1),
	}
	z.dp = newDataplane(z)
	z.store.SetLogger(z.log)

	creds := insecure.NewCredentials()
	if len(cfg.CARoot) > 0 {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(cfg.CARoot) {
			return nil, errors.New("ztunnel: CARoot holds no PEM certificate")
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, ServerName: cmp.Or(cfg.XDSServerName, DefaultXDSServerName)})
	}
	conn, err := grpc.NewClient(cfg.XDSAddress, grpc.WithTransportCredentials(creds), xds.KeepaliveDialOption())
	if err != nil {
		return nil, fmt.Errorf("ztunnel: istiod-lite client: %w", err)
	}
	z.conn = conn

	z.certs = identity.NewManager(identity.ManagerConfig{
		Requester: &identity.CAClient{
			Conn:        conn,
			Token:       identity.TokenSource(cfg.Token, cfg.TokenFile),
			Impersonate: true,
			ClusterID:   cfg.ClusterID,
		},
		TTL:    cfg.CertTTL,
		Logger: log,
	})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	z.access = accesslog.New(log)
	if cfg.AccessLog != nil {
		var level slog.Leveler // info
		if cfg.LogLevel != nil {
			level = cfg.LogLevel
		}
		z.access = accesslog.NewJSON(cfg.AccessLog, level)
	}
	logAgent, err := z.logStream(conn, reg, log)
	if err != nil {
		return nil, err
	}
	limitHits := proxy.NewLimitHits(reg)
	poolCfg := hbone.PoolConfig{TLSConfig: z.certs.ClientTLSConfig, Logger: log}
	cfg.Limits.applyPool(&poolCfg, limitHits)
	var dialPod func(context.Context, netip.Addr, netip.Addr, netip.AddrPort) (net.Conn, error)
	if d, ok := z.dp.(podDialer); ok {
		// In-pod: every socket is opened inside the pod's netns.
		poolCfg.Dialer, dialPod = d.dialHBONE, d.dialPod
	}
	z.pool = hbone.NewPool(poolCfg)
	var quicCfg proxy.QUICConfig
	if z.quic, quicCfg, err = z.newQUIC(reg, log); err != nil {
		return nil, err
	}
	z.proxy, err = proxy.New(cfg.Limits.proxyConfig(proxy.Config{
		Store:         z.store,
		Pool:          z.pool,
		Metrics:       telemetry.NewMetrics(reg),
		AccessLog:     z.access,
		AcceptErrors:  telemetry.NewAcceptErrors(reg),
		HBONEPort:     cfg.HBONEPort,
		ReservedPorts: reservedPorts(cfg),
		DialPod:       dialPod,
		QUIC:          quicCfg,
		Logger:        log,
	}, limitHits))
	if err != nil {
		return nil, err
	}
	z.server = &hbone.Server{
		TLSConfig: z.certs.ServerTLSConfig(z.serverIdentity),
		Handler:   z.proxy,
		Logger:    log,
		OnAcceptError: func(err error) {
			z.proxy.AcceptError(proxy.ListenerHBONE, err)
		},
	}
	cfg.Limits.applyServer(z.server, limitHits)

	z.xds, err = xds.NewClient(xds.ClientConfig{
		Target:      cfg.XDSAddress,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)},
		Token:       identity.TokenSource(cfg.Token, cfg.TokenFile),
		Node: &adspb.Node{
			Id:      "ztunnel~127.0.0.1~ztunnel-" + cfg.Node + ".istio-system~istio-system.svc.cluster.local",
			Cluster: cfg.ClusterID,
		},
		TypeURLs: []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL},
		Handler:  z.store,
		Logger:   log,
	})
	if err != nil {
		return nil, err
	}
	z.store.OnChange(func() {
		select {
		case z.kick <- struct{}{}:
		default:
		}
	})

	z.admin, err = admin.New(admin.Config{
		Name:          "ztunnel",
		AdminAddr:     cfg.AdminAddr,
		MetricsAddr:   cfg.MetricsAddr,
		ReadinessAddr: cfg.ReadinessAddr,
		Gatherer:      reg,
		ConfigDump:    z.configDump,
		Ready:         z.readyErr,
		Level:         cfg.LogLevel,
		Logger:        log,
	})
	if err != nil {
		return nil, err
	}
	z.runners = []runner{
		{"admin", z.admin.Serve},
		{"certificates", z.certs.Start},
		{"xds", z.xds.Start},
		{"listeners", z.reconcileLoop},
		{"memory", z.proxy.ReleaseMemoryLoop}, // memory back to the OS after load
		{"settled", z.releaseLoop},            // and after configuration changes (settle.go)
		{"idle", z.proxy.IdleLoop},            // tunnel idle timeout
		{"logstream", logAgent.Start},
	}
	z.runners = append(z.runners, z.dp.runners()...)
	return z, nil
}

// logStream keeps the last access-log records in a ring and carries them
// to istiod-lite's relay over conn (package logstream).
func (z *Ztunnel) logStream(conn *grpc.ClientConn, reg prometheus.Registerer, log *slog.Logger) (*logstream.Agent, error) {
	ring := logstream.NewRing(z.cfg.AccessLogRing)
	z.access.SetSink(ring.Sink())
	svc := logstream.NewService(logstream.Config{
		Ring: ring, Kind: logsv1.ProxyKind_ZTUNNEL, Name: z.cfg.Node,
		Apps: func(a netip.Addr) string {
			if w := z.store.WorkloadByAddr(a); w != nil {
				return w.WorkloadName
			}
			return ""
		},
		Metrics: logstream.NewMetrics(reg),
		Logger:  log,
	})
	return logstream.NewAgent(logstream.AgentConfig{
		Conn: conn, Token: identity.TokenSource(z.cfg.Token, z.cfg.TokenFile), Service: svc, Logger: log,
	})
}

// reservedPorts are the ports no connection may target: Istio's ztunnel
// ports (proxy.DefaultReservedPorts) and this ztunnel's own: HBONE, SOCKS5,
// and the admin, metrics and readiness ports (defaults where cfg leaves
// them empty; a port 0, picked by the kernel, is not known in advance and
// is left out).
func reservedPorts(cfg Config) []uint16 {
	ports := append(proxy.DefaultReservedPorts(), capture.OutboundPort, capture.InboundPlaintextPort, cfg.HBONEPort, cfg.SOCKSPort)
	for _, a := range []struct{ addr, def string }{
		{cfg.AdminAddr, admin.DefaultAdminAddr},
		{cfg.MetricsAddr, admin.DefaultMetricsAddr},
		{cfg.ReadinessAddr, admin.DefaultReadinessAddr},
	} {
		addr := a.addr
		if addr == "" {
			addr = a.def
		}
		if _, p, err := net.SplitHostPort(addr); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n != 0 {
				ports = append(ports, uint16(n))
			}
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// serverIdentity picks the certificate the HBONE server presents: that of
// the local workload whose address the client dialed.
func (z *Ztunnel) serverIdentity(hello *tls.ClientHelloInfo) (spiffeid.ID, error) {
	a := addrOf(hello.Conn.LocalAddr())
	w := z.store.WorkloadByAddr(a)
	if w == nil || w.Node != z.cfg.Node {
		return spiffeid.ID{}, fmt.Errorf("no local workload at %s", a)
	}
	return w.ID, nil
}

// Start runs the ztunnel until ctx is done, then drains it. The admin,
// metrics and readiness listeners are bound before anything else starts.
func (z *Ztunnel) Start(ctx context.Context) error {
	if err := z.admin.Listen(); err != nil {
		z.conn.Close()
		return err
	}
	// Every runner runs until ctx is done or one of them fails; then the
	// others stop, and every error is returned.
	g, gctx := errgroup.WithContext(ctx)
	var (
		errMu sync.Mutex
		errs  []error
	)
	for _, r := range z.runners {
		g.Go(func() error {
			err := r.run(gctx)
			if err != nil {
				err = fmt.Errorf("%s: %w", r.name, err)
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
			}
			return err // the first error cancels gctx
		})
	}
	g.Wait()

	z.dp.close() // in-pod: after a successor took the listeners (handover.go)
	// Drain: no new connections; open tunnels get DrainTimeout to finish.
	drain, cancelDrain := context.WithTimeout(context.Background(), z.cfg.DrainTimeout)
	z.server.Shutdown(drain)
	z.quic.shutdown(drain)
	z.proxy.Drain(drain)
	cancelDrain()
	z.dp.finish()
	z.pool.Close()
	z.quic.close()
	z.conn.Close()
	return errors.Join(errs...)
}

// Ready is closed once ztunnel has its configuration and has bound its
// listeners.
func (z *Ztunnel) Ready() <-chan struct{} { return z.ready }

// readyErr is /healthz/ready: not ready until the configuration is in
// and the listeners are bound, and then while accepting connections fails
// (for proxy.AcceptErrorHold after the last failure).
func (z *Ztunnel) readyErr() error {
	select {
	case <-z.ready:
		return z.proxy.AcceptHealth()
	default:
	}
	select {
	case <-z.xds.Synced():
		return errors.New("binding listeners")
	default:
		return errors.New("waiting for configuration from istiod-lite")
	}
}

// Admin returns the admin server, for its addresses.
func (z *Ztunnel) Admin() *admin.Server { return z.admin }

// AccessLog returns the access logger, to subscribe to records.
func (z *Ztunnel) AccessLog() *accesslog.Logger { return z.access }

// Store returns the mesh state.
func (z *Ztunnel) Store() *state.Store { return z.store }

// Certificates returns the certificate manager.
func (z *Ztunnel) Certificates() *identity.Manager { return z.certs }

// reconcileLoop keeps one set of listeners per local ambient pod, level
// based: after each store change it binds what is missing and closes what
// is no longer wanted.
func (z *Ztunnel) reconcileLoop(ctx context.Context) error {
	select {
	case <-z.xds.Synced():
	case <-ctx.Done():
		return nil
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		if err := z.reconcile(ctx); err != nil {
			z.log.Warn("binding pod listeners", "error", err)
			retry.Reset(time.Second)
		} else {
			z.readyOnce.Do(func() { close(z.ready) })
		}
		select {
		case z.reconciled <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-z.kick:
		case <-retry.C:
		}
	}
}

// reconcile brings the dataplane in line with the store, then fetches
// the certificates of the workloads it serves ahead of their first
// connection and forgets those of identities that left the node.
func (z *Ztunnel) reconcile(ctx context.Context) error {
	ids, err := z.dp.reconcile(ctx)
	for id := range ids {
		go func() {
			if _, err := z.certs.Get(ctx, id); err != nil && ctx.Err() == nil {
				z.log.Warn("fetching certificate", "identity", id.String(), "error", err)
			}
		}()
	}
	for _, c := range z.certs.Certificates() {
		if !ids[c.ID] {
			z.certs.Forget(c.ID)
		}
	}
	return err
}

// release ends every connection of the workload at address a, which left
// the node or the mesh: its pooled HBONE connections, the tunnels to it and
// the connections the proxy carries for it.
func (z *Ztunnel) release(a netip.Addr) {
	z.pool.CloseFrom(a)
	z.server.CloseTo(a)
	z.quic.release(a)
	z.proxy.CloseFor(a)
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}
