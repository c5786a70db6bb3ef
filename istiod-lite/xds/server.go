// Package xds is istiod-lite's delta ADS server: it holds the current resources of every type and pushes
// what changes to each connected proxy.
//
// The server speaks envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources as Istio
// does for ztunnel. The first request for a type subscribes the stream (as a wildcard when it names no
// resources) and is always answered, even when there is nothing to send, so a proxy is never left waiting;
// initial_resource_versions on a reconnect make that answer hold only the differences. Later changes arrive
// through Set, which replaces all resources of one type: Set hashes each resource's deterministic encoding
// into its version (skipping messages it was handed by the previous Set), diffs once against the previous set, and hands the changed names to every subscribed
// stream. Each stream keeps a set of pending names and a single sender goroutine that sends the latest state
// of those names, so a slow proxy coalesces pushes instead of blocking Set or other proxies. Encoded
// resources are shared by all streams.
//
// Streams that name resources explicitly (resource_names_subscribe without "*") get those resources only;
// that on-demand mode is minimal: it does not track which versions such a stream already holds.
//
// Every stream is authenticated (ServerConfig.Authenticate) before a request is read or a resource sent.
// Clients are untrusted for logging too: the strings they send are cut to a bounded length in log records,
// and each stream writes a bounded number of records per minute (logs.go).
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Logger receives stream events and NACKs. Strings that come from the client (node id, type URLs,
	// nonces, error details) are cut to maxLogString bytes, and each stream logs at most logBurst records per
	// logWindow, then one summary of how many it suppressed. Default: discard.
	Logger *slog.Logger
	// Authenticate establishes who opened a stream, before the server reads a request or sends anything.
	// An error ends the stream with it when it is a gRPC status, otherwise with codes.Unauthenticated.
	// Nil accepts every stream as an anonymous caller: only for tests of this package and for listeners
	// nobody else can reach; istiod-lite always sets it.
	Authenticate func(ctx context.Context) (Caller, error)
}

// Caller is who opened a stream, as ServerConfig.Authenticate established it.
type Caller struct {
	// Node is set when the caller is a node agent (ztunnel) authenticated for that node.
	Node string
	// Identity is the caller's SPIFFE ID when it has one of its own (a service account token or a
	// workload certificate).
	Identity string
}

// ClientInfo describes one connected stream.
type ClientInfo struct {
	NodeID      string    // Node.Id from the stream's first request that carried a Node
	Caller      Caller    // who the stream authenticated as
	ConnectedAt time.Time // when the stream opened
	Types       []string  // subscribed type URLs, in subscription order
}

// Stats are counters since the server was created.
type Stats struct {
	Streams   int    // streams open now
	Pushes    uint64 // responses sent
	Resources uint64 // resources sent, summed over responses
	Nacks     uint64 // distinct NACKed nonces
}

// Server is a delta ADS server. Create it with NewServer, Register it on a grpc.Server and feed it with Set.
type Server struct {
	log  *slog.Logger
	auth func(context.Context) (Caller, error)
	// rejected limits the records about refused streams, which anyone who
	// reaches the port can cause.
	rejected logLimiter

	setMu sync.Mutex // serializes Set

	mu    sync.RWMutex // guards types and streams; taken before stream.mu
	types map[string]map[string]*discoveryv3.Resource
	// msgs holds, per type, the message each resource was encoded from, so
	// that a Set handing over the same message again skips its encoding.
	// Only Set uses it (under setMu).
	msgs    map[string]map[string]proto.Message
	streams map[*stream]struct{}
	gens    map[string]uint64 // per type, incremented by every Set that changes something

	// prepared caches, per type, the encoded full-state response that new
	// wildcard streams without initial versions receive, so that a herd of
	// connecting proxies shares one encoding (and its memory) instead of
	// encoding megabytes each.
	prepMu   sync.Mutex
	prepared map[string]*preparedInitial

	nonce     atomic.Uint64
	pushes    atomic.Uint64
	resources atomic.Uint64
	nacks     atomic.Uint64
}

// NewServer returns a Server with no resources.
func NewServer(cfg ServerConfig) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		log:      log.With("component", "xds-server"),
		auth:     cfg.Authenticate,
		types:    make(map[string]map[string]*discoveryv3.Resource),
		msgs:     make(map[string]map[string]proto.Message),
		gens:     make(map[string]uint64),
		prepared: make(map[string]*preparedInitial),
		streams:  make(map[*stream]struct{}),
	}
}

// Register serves DeltaAggregatedResources on g; StreamAggregatedResources (state of the world) answers
// codes.Unimplemented. Streams end only when the client leaves or g stops, so shut g down with Stop (or
// GracefulStop after the clients are gone). Requests carrying initial_resource_versions for a whole
// cluster can exceed gRPC's default 4 MiB receive limit; raise it with grpc.MaxRecvMsgSize when needed.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, &adsService{s: s})
}

type adsService struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	s *Server
}

func (a *adsService) DeltaAggregatedResources(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.s.serve(ss)
}

// Set replaces all resources of typeURL (name → message). Only resources whose encoding changed, and names
// that disappeared, are pushed to the streams subscribed to typeURL. A message whose full name does not match
// typeURL ("type.googleapis.com/<full name>") is logged and left out. The server keeps the messages: they
// must not be modified during or after Set (hand over new messages instead). A message that is the very one
// (same pointer) handed over for the same name by the previous Set is not encoded again, so a caller that
// reuses the messages of unchanged resources makes Set's cost proportional to what changed.
func (s *Server) Set(typeURL string, resources map[string]proto.Message) {
	if typeURL == "" {
		s.log.Error("xds set without type url")
		return
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()

	// Only Set writes s.types, and setMu is held: reading it without s.mu is safe.
	old := s.types[typeURL]
	oldMsgs := s.msgs[typeURL]
	next := make(map[string]*discoveryv3.Resource, len(resources))
	nextMsgs := make(map[string]proto.Message, len(resources))
	var changed []string
	opts := proto.MarshalOptions{Deterministic: true}
	wantName := "type.googleapis.com/"
	for name, msg := range resources {
		if name == "" || msg == nil {
			s.log.Error("xds set skips resource without name or message", "type_url", typeURL, "name", name)
			continue
		}
		if prev, ok := old[name]; ok && oldMsgs[name] == msg {
			// The very message of the previous Set: its encoding cannot
			// have changed (messages are not modified once handed over).
			next[name], nextMsgs[name] = prev, msg
			continue
		}
		if got := wantName + string(msg.ProtoReflect().Descriptor().FullName()); got != typeURL {
			s.log.Error("xds set skips resource of another type", "type_url", typeURL, "name", name, "message", got)
			continue
		}
		b, err := opts.Marshal(msg)
		if err != nil {
			s.log.Error("xds set skips resource that does not encode", "type_url", typeURL, "name", name, "error", err)
			continue
		}
		sum := sha256.Sum256(b)
		version := hex.EncodeToString(sum[:8])
		nextMsgs[name] = msg
		if prev, ok := old[name]; ok && prev.GetVersion() == version {
			next[name] = prev
			continue
		}
		next[name] = &discoveryv3.Resource{
			Name:     name,
			Version:  version,
			Resource: &anypb.Any{TypeUrl: typeURL, Value: b},
		}
		changed = append(changed, name)
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			changed = append(changed, name)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.types[typeURL] = next
	s.msgs[typeURL] = nextMsgs
	if len(changed) == 0 {
		return
	}
	s.gens[typeURL]++
	for st := range s.streams {
		st.enqueue(typeURL, changed)
	}
	s.log.Debug("xds set", "type_url", typeURL, "resources", len(next), "changed", len(changed), "streams", len(s.streams))
}

// Clients lists the open streams, oldest first.
func (s *Server) Clients() []ClientInfo {
	s.mu.RLock()
	out := make([]ClientInfo, 0, len(s.streams))
	for st := range s.streams {
		st.mu.Lock()
		out = append(out, ClientInfo{NodeID: st.nodeID, Caller: st.caller, ConnectedAt: st.connectedAt, Types: slices.Clone(st.order)})
		st.mu.Unlock()
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b ClientInfo) int {
		if c := a.ConnectedAt.Compare(b.ConnectedAt); c != 0 {
			return c
		}
		return strings.Compare(a.NodeID, b.NodeID)
	})
	return out
}

// Version returns the version of a resource, or "" if the server does not hold it.
func (s *Server) Version(typeURL, name string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.types[typeURL][name].GetVersion()
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	n := len(s.streams)
	s.mu.RUnlock()
	return Stats{Streams: n, Pushes: s.pushes.Load(), Resources: s.resources.Load(), Nacks: s.nacks.Load()}
}

// subscription is what one stream wants of one type.
type subscription struct {
	wildcard bool
	names    map[string]struct{} // explicit names when not wildcard
}

func (s *subscription) wants(name string) bool {
	if s.wildcard {
		return true
	}
	_, ok := s.names[name]
	return ok
}

// stream is the server side of one DeltaAggregatedResources call.
type stream struct {
	connectedAt time.Time
	caller      Caller
	wake        chan struct{} // capacity 1: pending has names
	logs        logLimiter    // of the records about this stream's requests
	sync        syncState     // what was sent and ACKed, for the debug service (debug.go)

	mu      sync.Mutex
	nodeID  string
	subs    map[string]*subscription
	order   []string
	pending map[string]map[string]struct{} // type URL → names to (re)send

	// Owned by the goroutine serving the stream.
	nonces      map[string]string              // type URL → last nonce sent
	nacked      map[string]string              // type URL → last NACKed nonce logged
	outstanding map[string][]string            // nonce → names sent in that response, until ACKed or NACKed
	retry       map[string]map[string]struct{} // type URL → names of NACKed responses, resent with the next push
}

// maxOutstanding bounds the responses a stream remembers for NACK retries when its client does not answer.
const maxOutstanding = 64

// maxTypesPerStream bounds the type URLs one stream may subscribe to (a ztunnel uses two); each costs the
// stream a subscription and its bookkeeping.
const maxTypesPerStream = 16

// enqueue records changed names for the stream. The caller holds s.mu.
func (st *stream) enqueue(typeURL string, names []string) {
	st.mu.Lock()
	sub := st.subs[typeURL]
	added := false
	if sub != nil {
		p := st.pending[typeURL]
		for _, name := range names {
			if !sub.wants(name) {
				continue
			}
			if p == nil {
				p = make(map[string]struct{}, len(names))
				st.pending[typeURL] = p
			}
			p[name] = struct{}{}
			added = true
		}
	}
	st.mu.Unlock()
	if added {
		select {
		case st.wake <- struct{}{}:
		default:
		}
	}
}

// authenticate runs ServerConfig.Authenticate and turns its error into a gRPC status.
func (s *Server) authenticate(ctx context.Context) (Caller, error) {
	if s.auth == nil {
		return Caller{}, nil
	}
	c, err := s.auth(ctx)
	if err == nil {
		return c, nil
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown && st.Code() != codes.OK {
		err = st.Err()
	} else {
		err = status.Errorf(codes.Unauthenticated, "xds: %v", err)
	}
	if ok, suppressed := s.rejected.allow(time.Now()); ok {
		attrs := []any{"error", clip(err.Error())}
		if p, ok := peer.FromContext(ctx); ok {
			attrs = append(attrs, "peer", p.Addr.String())
		}
		if suppressed > 0 {
			attrs = append(attrs, "suppressed", suppressed)
		}
		s.log.Warn("xds stream refused", attrs...)
	}
	return Caller{}, err
}

func (s *Server) serve(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := ss.Context()
	caller, err := s.authenticate(ctx)
	if err != nil {
		return err
	}
	st := &stream{
		connectedAt: time.Now(),
		caller:      caller,
		wake:        make(chan struct{}, 1),
		subs:        make(map[string]*subscription),
		pending:     make(map[string]map[string]struct{}),
		nonces:      make(map[string]string),
		nacked:      make(map[string]string),
		outstanding: make(map[string][]string),
		retry:       make(map[string]map[string]struct{}),
	}
	s.mu.Lock()
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		if n := st.logs.flush(); n > 0 {
			s.log.Warn("xds log records suppressed", "node", clip(st.nodeID), "suppressed", n)
		}
	}()

	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := ss.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	for {
		select {
		case <-ctx.Done():
			st.mu.Lock()
			node := st.nodeID
			st.mu.Unlock()
			s.log.Info("xds stream cancelled", "node", clip(node), "cause", context.Cause(ctx))
			return nil
		case err := <-recvErr:
			st.mu.Lock()
			node := st.nodeID
			st.mu.Unlock()
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				s.log.Info("xds stream closed", "node", clip(node))
				return nil
			}
			s.log.Info("xds stream ended", "node", clip(node), "error", clip(err.Error()))
			return err
		case req := <-reqs:
			if err := s.handleRequest(ss, st, req); err != nil {
				s.logEnd(st, err)
				return err
			}
		case <-st.wake:
			if err := s.flush(ss, st); err != nil {
				s.logEnd(st, err)
				return err
			}
		}
	}
}

// logEnd logs a stream that ends because a request was refused or a
// response could not be sent (its connection gone: a send on a closed
// transport fails before the stream's context is seen cancelled).
func (s *Server) logEnd(st *stream, err error) {
	st.mu.Lock()
	node := st.nodeID
	st.mu.Unlock()
	s.log.Info("xds stream ended", "node", clip(node), "error", clip(err.Error()))
}

func (s *Server) handleRequest(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, st *stream, req *discoveryv3.DeltaDiscoveryRequest) error {
	typeURL := req.GetTypeUrl()
	st.mu.Lock()
	opened := false
	if st.nodeID == "" && req.GetNode().GetId() != "" {
		st.nodeID = req.GetNode().GetId()
		opened = true
	}
	node := st.nodeID
	_, subscribed := st.subs[typeURL]
	tooMany := !subscribed && len(st.subs) >= maxTypesPerStream
	st.mu.Unlock()
	if opened {
		s.log.Info("xds stream opened", "node", clip(node), "caller_node", st.caller.Node, "caller_identity", st.caller.Identity)
	}
	if typeURL == "" {
		return status.Error(codes.InvalidArgument, "request without type_url")
	}
	if tooMany {
		return status.Errorf(codes.InvalidArgument, "more than %d type URLs on one stream", maxTypesPerStream)
	}

	if nonce := req.GetResponseNonce(); nonce != "" {
		sent, known := st.outstanding[nonce]
		delete(st.outstanding, nonce)
		switch {
		case req.GetErrorDetail() != nil:
			// The client kept its previous state for what it rejected: send those names again with the next
			// push of the type, so a later fix reaches it even if it changes only some of them.
			if known {
				r := st.retry[typeURL]
				if r == nil {
					r = make(map[string]struct{}, len(sent))
					st.retry[typeURL] = r
				}
				for _, name := range sent {
					r[name] = struct{}{}
				}
			}
			if st.nacked[typeURL] != nonce {
				st.nacked[typeURL] = nonce
				st.sync.nacked(typeURL, nonce, req.GetErrorDetail().GetMessage())
				s.nacks.Add(1)
				s.streamLog(st, slog.LevelWarn, "xds nack", "node", clip(node), "type_url", clip(typeURL), "nonce", clip(nonce),
					"error", clip(req.GetErrorDetail().GetMessage()))
			}
		case nonce == st.nonces[typeURL]:
			st.sync.acked(typeURL, nonce)
			s.streamLog(st, slog.LevelDebug, "xds ack", "node", clip(node), "type_url", clip(typeURL), "nonce", clip(nonce))
		default:
			s.streamLog(st, slog.LevelDebug, "xds stale ack ignored", "node", clip(node), "type_url", clip(typeURL), "nonce", clip(nonce))
		}
	}

	subscribe, unsubscribe := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	s.mu.RLock()
	st.mu.Lock()
	sub, ok := st.subs[typeURL]
	var resp *discoveryv3.DeltaDiscoveryResponse
	initial := false
	switch {
	case !ok:
		// First request for the type: subscribe and always answer.
		sub = &subscription{names: make(map[string]struct{})}
		for _, name := range subscribe {
			if name == "*" {
				sub.wildcard = true
			} else {
				sub.names[name] = struct{}{}
			}
		}
		sub.wildcard = sub.wildcard || len(subscribe) == 0
		st.subs[typeURL] = sub
		st.order = append(st.order, typeURL)
		if sub.wildcard && len(req.GetInitialResourceVersions()) == 0 && uncompressed(ss.Context()) {
			initial = true // the shared full state, below
			break
		}
		resp = s.initialResponse(typeURL, sub, req.GetInitialResourceVersions())
	case len(subscribe) > 0 || len(unsubscribe) > 0:
		var added []string
		for _, name := range unsubscribe {
			if name == "*" {
				sub.wildcard = false
			} else {
				delete(sub.names, name)
			}
		}
		for _, name := range subscribe {
			if name == "*" {
				if !sub.wildcard {
					sub.wildcard = true
					for n := range s.types[typeURL] {
						added = append(added, n)
					}
				}
				continue
			}
			if _, ok := sub.names[name]; !ok {
				sub.names[name] = struct{}{}
				added = append(added, name)
			}
		}
		if len(added) > 0 {
			resp = s.response(typeURL, sub, added)
		}
	}
	st.mu.Unlock()
	s.mu.RUnlock()
	if initial {
		// Changes after the subscription are pending for the stream and
		// follow this answer, which is at least as recent as the
		// subscription.
		return s.sendInitial(ss, st, typeURL)
	}
	if resp == nil {
		return nil
	}
	return s.send(ss, st, resp)
}

// preparedInitial is an encoded full-state response of one type.
type preparedInitial struct {
	gen   uint64
	msg   *grpc.PreparedMsg
	nonce string
	names []string // sent; shared, read-only
	count int
}

// uncompressed reports whether the stream's responses are sent
// uncompressed, as the shared encodings are.
func uncompressed(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, e := range md.Get("grpc-encoding") {
		if e != "" && e != "identity" {
			return false
		}
	}
	return true
}

// sendInitial sends the full state of typeURL, encoded once for all streams
// that need it until the next change. Its nonce is shared by those streams:
// nonces only need to be unique within a stream, and every other nonce comes
// from the same counter.
func (s *Server) sendInitial(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, st *stream, typeURL string) error {
	s.prepMu.Lock()
	s.mu.RLock()
	p := s.prepared[typeURL]
	if gen := s.gens[typeURL]; p == nil || p.gen != gen {
		resp := s.initialResponse(typeURL, &subscription{wildcard: true}, nil)
		s.mu.RUnlock()
		resp.Nonce = strconv.FormatUint(s.nonce.Add(1), 10)
		names := make([]string, 0, len(resp.Resources))
		for _, r := range resp.Resources {
			names = append(names, r.GetName())
		}
		// Encoding outside s.mu: Set replaces resources, never modifies them.
		msg := &grpc.PreparedMsg{}
		if err := msg.Encode(ss, resp); err != nil {
			s.prepMu.Unlock()
			return err
		}
		p = &preparedInitial{gen: gen, msg: msg, nonce: resp.Nonce, names: names, count: len(resp.Resources)}
		s.prepared[typeURL] = p
	} else {
		s.mu.RUnlock()
	}
	s.prepMu.Unlock()

	st.nonces[typeURL] = p.nonce
	st.sync.sent(typeURL, p.nonce, p.gen)
	if len(st.outstanding) >= maxOutstanding {
		clear(st.outstanding)
	}
	st.outstanding[p.nonce] = p.names
	if err := ss.SendMsg(p.msg); err != nil {
		return err
	}
	s.pushes.Add(1)
	s.resources.Add(uint64(p.count))
	return nil
}

// initialResponse answers the first request of a type: everything the client lacks or holds at another
// version, and removals for names it holds that no longer exist. The caller holds s.mu.
func (s *Server) initialResponse(typeURL string, sub *subscription, have map[string]string) *discoveryv3.DeltaDiscoveryResponse {
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL}
	cur := s.types[typeURL]
	add := func(name string, r *discoveryv3.Resource) {
		if v, ok := have[name]; !ok || v != r.GetVersion() {
			resp.Resources = append(resp.Resources, r)
		}
	}
	if sub.wildcard {
		for name, r := range cur {
			add(name, r)
		}
	} else {
		for name := range sub.names {
			if r, ok := cur[name]; ok {
				add(name, r)
			}
		}
	}
	for name := range have {
		if _, ok := cur[name]; !ok {
			resp.RemovedResources = append(resp.RemovedResources, name)
		}
	}
	return resp
}

// response holds the current state of names: the resource, or a removal when it no longer exists. Names the
// subscription does not want are left out. The caller holds s.mu.
func (s *Server) response(typeURL string, sub *subscription, names []string) *discoveryv3.DeltaDiscoveryResponse {
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL}
	cur := s.types[typeURL]
	for _, name := range names {
		if !sub.wants(name) {
			continue
		}
		if r, ok := cur[name]; ok {
			resp.Resources = append(resp.Resources, r)
		} else {
			resp.RemovedResources = append(resp.RemovedResources, name)
		}
	}
	return resp
}

// flush sends the latest state of every pending name, one response per type.
func (s *Server) flush(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, st *stream) error {
	var resps []*discoveryv3.DeltaDiscoveryResponse
	s.mu.RLock()
	st.mu.Lock()
	for _, typeURL := range st.order {
		pending := st.pending[typeURL]
		if len(pending) == 0 {
			continue
		}
		delete(st.pending, typeURL)
		names := make([]string, 0, len(pending)+len(st.retry[typeURL]))
		for name := range pending {
			names = append(names, name)
		}
		for name := range st.retry[typeURL] {
			if _, ok := pending[name]; !ok {
				names = append(names, name)
			}
		}
		delete(st.retry, typeURL)
		if resp := s.response(typeURL, st.subs[typeURL], names); len(resp.Resources)+len(resp.RemovedResources) > 0 {
			resps = append(resps, resp)
		}
	}
	st.mu.Unlock()
	s.mu.RUnlock()
	for _, resp := range resps {
		if err := s.send(ss, st, resp); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) send(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, st *stream, resp *discoveryv3.DeltaDiscoveryResponse) error {
	resp.Nonce = strconv.FormatUint(s.nonce.Add(1), 10)
	st.nonces[resp.TypeUrl] = resp.Nonce
	st.sync.sent(resp.TypeUrl, resp.Nonce, s.genOf(resp.TypeUrl))
	if len(st.outstanding) >= maxOutstanding {
		clear(st.outstanding)
	}
	sent := make([]string, 0, len(resp.Resources)+len(resp.RemovedResources))
	for _, r := range resp.Resources {
		sent = append(sent, r.GetName())
	}
	st.outstanding[resp.Nonce] = append(sent, resp.RemovedResources...)
	if err := ss.Send(resp); err != nil {
		return err
	}
	s.pushes.Add(1)
	s.resources.Add(uint64(len(resp.Resources)))
	return nil
}
