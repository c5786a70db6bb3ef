// Package relay is istiod-lite's access-log relay, what hubble-relay is to
// Cilium: `meshctl logs` asks it (LogStream.Watch) and it asks every
// ztunnel and waypoint that needs asking, merges their streams by time
// and sends one stream back.
//
// Proxies are never dialed. Each proxy keeps a LogRelay.Connect stream
// open to istiod-lite over the connection it already uses for xDS (TLS
// verified against the mesh root, authenticated with the same token), says
// who it is, and receives the queries; it answers each on a Deliver stream
// of its own. The relay thus knows every connected proxy, sees one appear
// or restart (a new instance id) the moment it connects, and needs no
// address, port or certificate of the proxies. docs/observability.md says
// why this design was chosen.
//
// Callers of Watch are authorized by an Authorizer: in cluster mode a
// Kubernetes bearer token (TokenReview) and SubjectAccessReviews of `get
// pods/log` per namespace; in local mode a token from the config
// directory. A caller sees only records with an end in a namespace it may
// read, and asking for any other namespace is PermissionDenied.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// ProxyCaller is who opened a LogRelay stream, as the xDS server
// authenticates it: a node agent (Node) or a workload (Identity).
type ProxyCaller struct {
	Node     string
	Identity string // spiffe://<td>/ns/<ns>/sa/<sa>
}

// Config configures a Relay. AuthenticateProxy and Authorizer are
// required.
type Config struct {
	// AuthenticateProxy establishes which proxy opened a LogRelay stream.
	AuthenticateProxy func(ctx context.Context) (ProxyCaller, error)
	// Authorizer decides what a Watch caller may see.
	Authorizer Authorizer
	// Window is how long the relay holds a record back to sort it among
	// the records of other proxies; default 1s.
	Window time.Duration
	// MaxBuffered bounds the records held per caller for sorting; when
	// full, the oldest is sent at once. Default 8192.
	MaxBuffered int
	// StartTimeout bounds how long a query without follow waits for a
	// proxy to start answering; default 10s.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Relay serves LogRelay to proxies and LogStream to callers.
type Relay struct {
	logsv1.UnimplementedLogStreamServer
	logsv1.UnimplementedLogRelayServer

	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	proxies map[string]*proxyConn // by name
	legs    map[uint64]*leg       // queries sent to proxies, by id
	watches map[*watch]struct{}
	nextID  uint64
}

var (
	_ logsv1.LogStreamServer = (*Relay)(nil)
	_ logsv1.LogRelayServer  = (*Relay)(nil)
)

// New returns a relay.
func New(cfg Config) (*Relay, error) {
	if cfg.AuthenticateProxy == nil || cfg.Authorizer == nil {
		return nil, errors.New("relay: AuthenticateProxy and Authorizer are required")
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Second
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 8192
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{
		cfg:     cfg,
		log:     log.With("component", "relay"),
		proxies: map[string]*proxyConn{},
		legs:    map[uint64]*leg{},
		watches: map[*watch]struct{}{},
	}, nil
}

// Register registers both services on g.
func (r *Relay) Register(g *grpc.Server) {
	logsv1.RegisterLogStreamServer(g, r)
	logsv1.RegisterLogRelayServer(g, r)
}

// Proxy describes a connected proxy.
type Proxy struct {
	Name     string
	Kind     logsv1.ProxyKind
	Instance string
}

// Proxies lists the connected proxies.
func (r *Relay) Proxies() []Proxy {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Proxy, 0, len(r.proxies))
	for _, p := range r.proxies {
		out = append(out, Proxy{Name: p.name, Kind: p.kind, Instance: p.instance})
	}
	return out
}

// proxyConn is one connected proxy's Connect stream.
type proxyConn struct {
	name, instance string
	kind           logsv1.ProxyKind
	caller         ProxyCaller
	cmds           chan *logsv1.RelayCommand // to its Connect stream
	done           chan struct{}             // closed when the stream ends
	joined         sync.WaitGroup            // join's notifications
}

// send queues a command for the proxy without blocking for long: a proxy
// that does not read its commands is dropped.
func (p *proxyConn) send(ctx context.Context, c *logsv1.RelayCommand) bool {
	select {
	case p.cmds <- c:
		return true
	case <-p.done:
	case <-ctx.Done():
	}
	return false
}

// mayClaim says whether caller may speak for the proxy named in hello: a
// ztunnel only for its own node; a waypoint for its namespace, with a
// workload identity in that namespace or a node agent's token (local mode
// waypoints use their node's).
func mayClaim(caller ProxyCaller, h *logsv1.ProxyMessage_Hello) error {
	switch h.GetKind() {
	case logsv1.ProxyKind_ZTUNNEL:
		if caller.Node == "" || caller.Node != h.GetName() {
			return fmt.Errorf("caller of node %q may not speak for ztunnel %q", caller.Node, h.GetName())
		}
	case logsv1.ProxyKind_WAYPOINT:
		ns, _, ok := strings.Cut(h.GetName(), "/")
		if !ok || ns == "" {
			return fmt.Errorf("waypoint name %q is not namespace/name", h.GetName())
		}
		if caller.Node == "" && identityNamespace(caller.Identity) != ns {
			return fmt.Errorf("identity %q may not speak for waypoint %q", caller.Identity, h.GetName())
		}
	default:
		return fmt.Errorf("unknown proxy kind %v", h.GetKind())
	}
	return nil
}

// identityNamespace is the namespace of a workload identity
// spiffe://<td>/ns/<ns>/sa/<sa>, or "" for any other string.
func identityNamespace(id string) string {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return ""
	}
	seg := strings.Split(sid.Path(), "/")
	if len(seg) != 5 || seg[1] != "ns" || seg[3] != "sa" || seg[2] == "" || seg[4] == "" {
		return ""
	}
	return seg[2]
}

// Connect implements LogRelay: a proxy joins.
func (r *Relay) Connect(stream grpc.BidiStreamingServer[logsv1.ProxyMessage, logsv1.RelayCommand]) error {
	ctx := stream.Context()
	caller, err := r.cfg.AuthenticateProxy(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	if err := mayClaim(caller, h); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	p := &proxyConn{
		name: h.GetName(), instance: h.GetInstance(), kind: h.GetKind(), caller: caller,
		cmds: make(chan *logsv1.RelayCommand, 64), done: make(chan struct{}),
	}
	r.join(p)
	defer r.leave(p)
	r.log.Info("proxy joined the log relay", "proxy", p.name, "kind", p.kind.String(), "instance", p.instance)

	errc := make(chan error, 1)
	go func() {
		// The proxy sends nothing after Hello; Recv ends with the stream.
		for {
			if _, err := stream.Recv(); err != nil {
				errc <- err
				return
			}
		}
	}()
	for {
		select {
		case c := <-p.cmds:
			if err := stream.Send(c); err != nil {
				return err
			}
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// join registers p, replacing an earlier stream of the same proxy, and
// asks p, in the background (p's commands are sent by its Connect
// handler, which must not wait for this), what every following watch
// wants.
func (r *Relay) join(p *proxyConn) {
	r.mu.Lock()
	old := r.proxies[p.name]
	r.proxies[p.name] = p
	var ws []*watch
	for w := range r.watches {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	p.joined.Add(1)
	go func() {
		defer p.joined.Done()
		if old != nil {
			r.finishLegsOf(old)
		}
		for _, w := range ws {
			w.proxyJoined(p)
		}
	}()
}

// leave forgets p (unless a newer stream replaced it) and ends its legs.
func (r *Relay) leave(p *proxyConn) {
	close(p.done)
	p.joined.Wait()
	r.mu.Lock()
	gone := r.proxies[p.name] == p
	if gone {
		delete(r.proxies, p.name)
	}
	var ws []*watch
	for w := range r.watches {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	r.finishLegsOf(p)
	if gone {
		for _, w := range ws {
			w.proxyLeft(p)
		}
	}
	r.log.Info("proxy left the log relay", "proxy", p.name, "instance", p.instance)
}

func (r *Relay) finishLegsOf(p *proxyConn) {
	r.mu.Lock()
	var ls []*leg
	for _, l := range r.legs {
		if l.proxy == p {
			ls = append(ls, l)
		}
	}
	r.mu.Unlock()
	for _, l := range ls {
		l.finish()
	}
}

// Deliver implements LogRelay: a proxy answers one query.
func (r *Relay) Deliver(stream grpc.ClientStreamingServer[logsv1.Delivery, logsv1.DeliverSummary]) error {
	ctx := stream.Context()
	caller, err := r.cfg.AuthenticateProxy(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	r.mu.Lock()
	l := r.legs[first.GetQueryId()]
	r.mu.Unlock()
	if l == nil || l.proxy.caller != caller || l.proxy.instance != first.GetInstance() {
		// Not a query of this proxy (or one that has ended).
		return status.Error(codes.NotFound, "no such query for this proxy")
	}
	l.started()
	defer l.finish()
	for {
		d, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return stream.SendAndClose(&logsv1.DeliverSummary{})
			}
			return err
		}
		for _, resp := range d.GetResponses() {
			if !l.w.deliver(ctx, l, resp) {
				return nil // the caller has gone; the proxy sees its stream end
			}
		}
	}
}
