package xds

// The debug service: which proxies are connected and whether each holds
// what the server last pushed (meshctl proxy-status). It is Envoy's Client
// Status Discovery Service (envoy.service.status.v3, the messages istioctl
// reads from istiod's syncz), answered from the server's own bookkeeping
// of what it sent and what each proxy ACKed, one GenericXdsConfig per
// subscribed type:
//
//   - NOT_SENT: nothing sent yet for the type;
//   - ERROR: the proxy NACKed the latest response (error_state holds its
//     message);
//   - STALE: a response is not ACKed yet, or changes are waiting to be
//     sent to the proxy;
//   - SYNCED: the proxy ACKed the latest response and nothing is pending.
//
// version_info is the server's generation of the type (a counter of the
// Sets that changed it) in the last response the proxy ACKed; last_updated
// is when it ACKed it.

import (
	"context"
	"crypto/subtle"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DebugConfig configures the debug service.
type DebugConfig struct {
	// Authorize decides whether the caller of a debug request may see every
	// connected proxy. It returns nil to allow, a gRPC status error
	// (Unauthenticated, PermissionDenied) to refuse. Nil refuses every
	// request: the service lists every proxy of the mesh.
	Authorize func(ctx context.Context) error
}

// RegisterDebug serves the Client Status Discovery Service
// (FetchClientStatus; the streaming method answers Unimplemented) on g.
func (s *Server) RegisterDebug(g *grpc.Server, cfg DebugConfig) {
	statusv3.RegisterClientStatusDiscoveryServiceServer(g, &csdsService{s: s, authorize: cfg.Authorize})
}

type csdsService struct {
	statusv3.UnimplementedClientStatusDiscoveryServiceServer
	s         *Server
	authorize func(ctx context.Context) error
}

func (c *csdsService) FetchClientStatus(ctx context.Context, req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	if c.authorize == nil {
		return nil, status.Error(codes.PermissionDenied, "xds debug: no caller is authorized")
	}
	if err := c.authorize(ctx); err != nil {
		if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
			return nil, err
		}
		return nil, status.Errorf(codes.PermissionDenied, "xds debug: %v", err)
	}
	return &statusv3.ClientStatusResponse{Config: c.s.ClientStatus()}, nil
}

// ClientStatus returns the sync state of every open stream that has sent
// its node id, oldest first.
func (s *Server) ClientStatus() []*statusv3.ClientConfig {
	s.mu.RLock()
	streams := make([]*stream, 0, len(s.streams))
	for st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.RUnlock()

	type entry struct {
		at  time.Time
		cfg *statusv3.ClientConfig
	}
	var entries []entry
	for _, st := range streams {
		st.mu.Lock()
		node := st.nodeID
		order := append([]string(nil), st.order...)
		pending := make(map[string]bool, len(st.pending))
		for t, names := range st.pending {
			pending[t] = len(names) > 0
		}
		st.mu.Unlock()
		if node == "" {
			continue
		}
		cfg := &statusv3.ClientConfig{Node: &corev3.Node{Id: node}}
		for _, typeURL := range order {
			cfg.GenericXdsConfigs = append(cfg.GenericXdsConfigs, st.sync.config(typeURL, pending[typeURL]))
		}
		entries = append(entries, entry{st.connectedAt, cfg})
	}
	// Oldest first, then by node id: a stable listing.
	for i := 1; i < len(entries); i++ {
		for j := i; j > 0; j-- {
			a, b := entries[j-1], entries[j]
			if a.at.Before(b.at) || (a.at.Equal(b.at) && a.cfg.Node.Id <= b.cfg.Node.Id) {
				break
			}
			entries[j-1], entries[j] = b, a
		}
	}
	out := make([]*statusv3.ClientConfig, len(entries))
	for i, e := range entries {
		out[i] = e.cfg
	}
	return out
}

// syncState is what a stream was sent and what it ACKed, per type. Its
// methods are called by the goroutine serving the stream and by
// ClientStatus.
type syncState struct {
	mu    sync.Mutex
	types map[string]*typeSync
}

type typeSync struct {
	sentNonce  string
	sentGen    uint64
	ackedNonce string
	ackedGen   uint64
	ackedAt    time.Time
	nackNonce  string
	nackErr    string
	nackAt     time.Time
}

func (ss *syncState) get(typeURL string) *typeSync {
	if ss.types == nil {
		ss.types = make(map[string]*typeSync)
	}
	t := ss.types[typeURL]
	if t == nil {
		t = &typeSync{}
		ss.types[typeURL] = t
	}
	return t
}

// sent records a response of typeURL with nonce, holding generation gen.
func (ss *syncState) sent(typeURL, nonce string, gen uint64) {
	ss.mu.Lock()
	t := ss.get(typeURL)
	t.sentNonce, t.sentGen = nonce, gen
	ss.mu.Unlock()
}

// acked records the ACK of the latest response of typeURL.
func (ss *syncState) acked(typeURL, nonce string) {
	ss.mu.Lock()
	t := ss.get(typeURL)
	if nonce == t.sentNonce {
		t.ackedNonce, t.ackedGen, t.ackedAt = nonce, t.sentGen, time.Now()
	}
	ss.mu.Unlock()
}

// nacked records a NACK of typeURL's response with nonce.
func (ss *syncState) nacked(typeURL, nonce, msg string) {
	ss.mu.Lock()
	t := ss.get(typeURL)
	t.nackNonce, t.nackErr, t.nackAt = nonce, clip(msg), time.Now()
	ss.mu.Unlock()
}

func (ss *syncState) config(typeURL string, pending bool) *statusv3.ClientConfig_GenericXdsConfig {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	c := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: typeURL}
	t := ss.types[typeURL]
	switch {
	case t == nil || t.sentNonce == "":
		c.ConfigStatus = statusv3.ConfigStatus_NOT_SENT
		return c
	case t.nackNonce == t.sentNonce:
		c.ConfigStatus = statusv3.ConfigStatus_ERROR
		c.ClientStatus = adminv3.ClientResourceStatus_NACKED
		c.ErrorState = &adminv3.UpdateFailureState{
			LastUpdateAttempt: timestamppb.New(t.nackAt),
			Details:           t.nackErr,
			VersionInfo:       strconv.FormatUint(t.sentGen, 10),
		}
	case t.ackedNonce != t.sentNonce || pending:
		c.ConfigStatus = statusv3.ConfigStatus_STALE
		c.ClientStatus = adminv3.ClientResourceStatus_REQUESTED
	default:
		c.ConfigStatus = statusv3.ConfigStatus_SYNCED
		c.ClientStatus = adminv3.ClientResourceStatus_ACKED
	}
	if t.ackedNonce != "" {
		c.VersionInfo = strconv.FormatUint(t.ackedGen, 10)
		c.LastUpdated = timestamppb.New(t.ackedAt)
	}
	return c
}

// genOf returns the current generation of typeURL.
func (s *Server) genOf(typeURL string) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gens[typeURL]
}

// TokenAuthorizer returns a DebugConfig.Authorize that accepts a request
// whose `authorization: Bearer` token is one of tokens() (compared in
// constant time): local mode, where the tokens come from the config
// directory.
func TokenAuthorizer(tokens func() []string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		token, err := bearer(ctx)
		if err != nil {
			return status.Error(codes.Unauthenticated, err.Error())
		}
		ok := 0
		for _, known := range tokens() {
			ok |= subtle.ConstantTimeCompare([]byte(known), []byte(token))
		}
		if ok != 1 {
			return status.Error(codes.Unauthenticated, "xds debug: unknown bearer token")
		}
		return nil
	}
}

// bearer returns the token of the request's `authorization: Bearer` metadata.
func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
		if ok && strings.EqualFold(scheme, "bearer") && strings.TrimSpace(token) != "" {
			return strings.TrimSpace(token), nil
		}
	}
	return "", errors.New("xds debug: no bearer token")
}
