// Package proxy is ztunnel's data path: outbound (from a local pod to the
// mesh), inbound (HBONE from the mesh to a local pod), inbound plaintext
// (in-pod capture of connections that did not come over HBONE), and the
// SOCKS5 front end that local mode uses in place of transparent capture.
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
//
// One file per hop, as istio/ztunnel's src/proxy: outbound.go (captured
// 15001 and SOCKS5-originated), inbound.go (HBONE 15008),
// inbound_passthrough.go (plaintext 15006), socks5.go (the SOCKS5 listener;
// the protocol is package pkg/socks5). What they share: resolve.go (where
// an outbound connection goes), dial.go (HBONE and direct dials),
// clientgone.go (an outbound client watched while its upstream is dialed),
// reserved.go (ztunnel's own ports), result.go (a connection's access log
// record and metrics), authz.go (L4 policy), accept.go (the accept loop),
// drain.go (tracking for shutdown) and memory.go.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

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
	// Limits counts the limits hit (ztunnel_limit_hits_total); nil counts
	// nothing.
	Limits *LimitHits
	// MaxConnsPerPod bounds the outbound connections of one source pod
	// open at once; past it a new one is reset (response flag LIMIT).
	// Default DefaultMaxConnsPerPod (10,000); negative: no limit.
	MaxConnsPerPod int
	// StreamIdleTimeout closes an HBONE tunnel (over TCP) that carried no
	// byte either way for this long (IdleLoop). Default 0: never, as
	// Istio's ztunnel.
	StreamIdleTimeout time.Duration
	// SocketOptions are set on the applications' connections, accepted
	// and dialed: TCP keepalive (default 180 s idle, 180 s interval, 9
	// probes, as Istio's ztunnel) and TCP_USER_TIMEOUT (default off).
	SocketOptions hbone.SocketOptions
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
	// QUIC is HBONE over QUIC (quic.go); the zero value is off.
	QUIC   QUICConfig
	Logger *slog.Logger
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
	quic     *quicState      // HBONE over QUIC (quic.go)
	reserved map[uint16]bool // Config.ReservedPorts

	peak         int       // most connections tracked since the last release (memory.go)
	released     time.Time // last release
	freeOSMemory func()    // debug.FreeOSMemory; tests set it

	limitMu    sync.Mutex
	podConns   map[string]int    // open outbound connections by source pod (limits.go)
	idleClosed map[net.Conn]bool // tunnels IdleLoop closed, until their relay ends

	now         func() time.Time // time.Now; tests set it
	acceptMu    sync.Mutex
	acceptErr   error     // the last retried accept error (accept.go)
	acceptErrAt time.Time // when

	live connTable // the open connections, for the admin server (conns.go)
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
	if cfg.MaxConnsPerPod == 0 {
		cfg.MaxConnsPerPod = DefaultMaxConnsPerPod
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReservedPorts == nil {
		cfg.ReservedPorts = DefaultReservedPorts()
	}
	p := &Proxy{cfg: cfg, log: log.With("component", "proxy"), conns: map[net.Conn]struct{}{}, reserved: map[uint16]bool{}, podConns: map[string]int{}, idleClosed: map[net.Conn]bool{}, now: time.Now, freeOSMemory: debug.FreeOSMemory}
	for _, port := range cfg.ReservedPorts {
		p.reserved[port] = true
	}
	p.authz.init(cfg.Store, p.log)
	var err error
	if p.quic, err = newQUICState(cfg.QUIC, p.log); err != nil {
		return nil, err
	}
	return p, nil
}

// Listener names, the label of telemetry.AcceptErrors.
const (
	ListenerHBONE            = "hbone"
	ListenerSOCKS5           = "socks5"
	ListenerOutbound         = "outbound"          // 15001, in-pod capture
	ListenerInboundPlaintext = "inbound_plaintext" // 15006, in-pod capture
)

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
