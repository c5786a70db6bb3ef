// Package xds is the delta ADS client the ztunnel uses to receive its configuration from istiod-lite.
//
// The client opens one gRPC stream,
// envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources, and subscribes to each
// configured type URL as a wildcard, the way Istio's ztunnel does: the first request for a type carries the
// Node and no resource names. Each response is handed to a Handler; the client ACKs it when the Handler
// returns nil and NACKs it (with error_detail) otherwise. The client remembers the version of every resource
// it has ACKed and sends them as initial_resource_versions when it reconnects, so the server only sends what
// changed while it was away. Disconnects never touch the Handler's state: the ztunnel keeps serving its last
// configuration while the control plane is unreachable, and the client retries with exponential backoff.
//
// The messages are the adspb package's, wire-compatible subsets of Envoy's, not go-control-plane's: a
// proxy that links go-control-plane links Envoy's whole configuration API and its descriptors
// (docs/optimisations.md, "Binary size"). Servers may use either; the bytes are the same.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// Handler applies updates; returning an error NACKs the response (the client keeps its previous state for
// those resources).
type Handler interface {
	// OnUpdate is called once per response, serially. updated resources carry Name, Version and Resource
	// (*anypb.Any whose type URL equals typeURL); removed holds resource names.
	OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(typeURL string, updated []*adspb.Resource, removed []string) error

// OnUpdate calls f.
func (f HandlerFunc) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	return f(typeURL, updated, removed)
}

var _ Handler = HandlerFunc(nil)

// DeltaADSMethod is the gRPC method the client calls: Envoy's, which istiod-lite and Istio's istiod serve.
const DeltaADSMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

var deltaADSStream = grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true}

// DefaultMaxRecvMsgSize is the largest response the client accepts unless DialOptions say otherwise. It is
// far above gRPC's 4 MiB default because an initial response may hold every workload of a cluster.
const DefaultMaxRecvMsgSize = 256 << 20

// ClientConfig configures a Client.
type ClientConfig struct {
	// Target is the gRPC target of istiod-lite, e.g. "istiod-lite.istio-system.svc:15012". Required.
	Target string
	// Token returns the bearer token that authenticates the client to istiod-lite (the same token the
	// node's CA client sends), sent as `authorization: Bearer <token>` metadata on every stream; it is
	// called once per stream, so a rotated token is picked up on reconnect. Nil sends none, and
	// istiod-lite refuses the stream. The metadata is sent whatever the transport, so in production the
	// DialOptions must carry TLS credentials.
	Token func(ctx context.Context) (string, error)
	// DialOptions are appended to the defaults (insecure transport credentials, a receive limit of
	// DefaultMaxRecvMsgSize and KeepaliveDialOption), so a transport credentials option here replaces
	// plaintext.
	DialOptions []grpc.DialOption
	// Node identifies the proxy; Node.Id is required
	// (`ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
	Node *adspb.Node
	// TypeURLs are subscribed as wildcards, in this order. Required.
	TypeURLs []string
	// Handler applies every response. Required.
	Handler Handler
	// MinBackoff is the first delay before reconnecting. Default 100ms.
	MinBackoff time.Duration
	// MaxBackoff caps the exponential backoff (with jitter) between reconnects; the backoff is reset after a
	// stream that received a response. Default 15s.
	MaxBackoff time.Duration
	// Logger receives connection events and NACKs. Default: discard.
	Logger *slog.Logger
}

// Errors returned by NewClient and Start.
var (
	ErrInvalidConfig  = errors.New("xds: invalid client config")
	ErrAlreadyRunning = errors.New("xds: client already running")
)

// Client is a delta ADS client. Create it with NewClient and run it with Start.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	running   atomic.Bool
	connected atomic.Bool

	synced     chan struct{}
	syncedOnce sync.Once
	answered   map[string]bool // type URLs that received a response; only touched by the Start goroutine

	// versions holds, per type URL, the version of every resource the client ACKed. Only the Start goroutine
	// touches it.
	versions map[string]map[string]string
}

// NewClient validates cfg and returns a Client that is not yet connected.
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Target == "":
		return nil, fmt.Errorf("%w: target is required", ErrInvalidConfig)
	case cfg.Node == nil || cfg.Node.GetId() == "":
		return nil, fmt.Errorf("%w: node id is required", ErrInvalidConfig)
	case len(cfg.TypeURLs) == 0:
		return nil, fmt.Errorf("%w: at least one type URL is required", ErrInvalidConfig)
	case cfg.Handler == nil:
		return nil, fmt.Errorf("%w: handler is required", ErrInvalidConfig)
	case cfg.MinBackoff < 0 || cfg.MaxBackoff < 0:
		return nil, fmt.Errorf("%w: negative backoff", ErrInvalidConfig)
	}
	seen := make(map[string]bool, len(cfg.TypeURLs))
	for _, t := range cfg.TypeURLs {
		if t == "" || seen[t] {
			return nil, fmt.Errorf("%w: empty or duplicate type URL %q", ErrInvalidConfig, t)
		}
		seen[t] = true
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.TypeURLs = append([]string(nil), cfg.TypeURLs...)
	return &Client{
		cfg:      cfg,
		log:      log.With("component", "xds-client", "target", cfg.Target),
		synced:   make(chan struct{}),
		answered: make(map[string]bool, len(cfg.TypeURLs)),
		versions: make(map[string]map[string]string, len(cfg.TypeURLs)),
	}, nil
}

// Synced is closed once the first response for every configured type URL has been handled (ACKed or
// NACKed). It closes once and stays closed across reconnects.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Connected reports whether a stream is open and has received at least one response.
func (c *Client) Connected() bool { return c.connected.Load() }

// Start connects and keeps reconnecting until ctx is done; it then returns nil. It returns
// ErrAlreadyRunning if another Start is running. A Client may be started again after Start returns; it then
// resumes from the versions it has ACKed.
func (c *Client) Start(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer c.running.Store(false)

	backoff := c.cfg.MinBackoff
	for {
		gotResponse, err := c.runStream(ctx)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if gotResponse {
			backoff = c.cfg.MinBackoff
		}
		// Full jitter in the upper half: sleep in [backoff/2, backoff].
		delay := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("xds stream ended", "error", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// runStream dials, runs one stream until it fails and reports whether it received any response.
func (c *Client) runStream(ctx context.Context) (gotResponse bool, err error) {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxRecvMsgSize)),
		KeepaliveDialOption(),
	}, c.cfg.DialOptions...)
	conn, err := grpc.NewClient(c.cfg.Target, opts...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", c.cfg.Target, err)
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.cfg.Token != nil {
		tok, err := c.cfg.Token(ctx)
		if err != nil {
			return false, fmt.Errorf("token: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	cs, err := conn.NewStream(ctx, &deltaADSStream, DeltaADSMethod)
	if err != nil {
		return false, fmt.Errorf("open delta ads stream: %w", err)
	}
	stream := &grpc.GenericClientStream[adspb.DeltaDiscoveryRequest, adspb.DeltaDiscoveryResponse]{ClientStream: cs}
	for _, typeURL := range c.cfg.TypeURLs {
		req := &adspb.DeltaDiscoveryRequest{
			Node:                    c.cfg.Node,
			TypeUrl:                 typeURL,
			InitialResourceVersions: c.versions[typeURL],
		}
		if err := stream.Send(req); err != nil {
			return false, fmt.Errorf("send initial request for %s: %w", typeURL, err)
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return gotResponse, fmt.Errorf("receive: %w", err)
		}
		if !gotResponse {
			gotResponse = true
			c.connected.Store(true)
			c.log.Info("xds stream connected")
		}
		if err := stream.Send(c.handle(resp)); err != nil {
			return gotResponse, fmt.Errorf("send ack for %s: %w", resp.GetTypeUrl(), err)
		}
	}
}

// handle applies one response and returns the ACK or NACK to send.
func (c *Client) handle(resp *adspb.DeltaDiscoveryResponse) *adspb.DeltaDiscoveryRequest {
	typeURL := resp.GetTypeUrl()
	ack := &adspb.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce()}
	err := validate(resp)
	if err == nil {
		err = c.cfg.Handler.OnUpdate(typeURL, resp.GetResources(), resp.GetRemovedResources())
	}
	c.markAnswered(typeURL)
	if err != nil {
		c.log.Warn("xds nack", "type_url", typeURL, "nonce", resp.GetNonce(), "error", err)
		ack.ErrorDetail = &adspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return ack
	}
	versions := c.versions[typeURL]
	if versions == nil {
		versions = make(map[string]string, len(resp.GetResources()))
		c.versions[typeURL] = versions
	}
	for _, r := range resp.GetResources() {
		versions[r.GetName()] = r.GetVersion()
	}
	for _, name := range resp.GetRemovedResources() {
		delete(versions, name)
	}
	c.log.Debug("xds ack", "type_url", typeURL, "nonce", resp.GetNonce(),
		"updated", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
	return ack
}

// validate rejects responses the Handler must never see.
func validate(resp *adspb.DeltaDiscoveryResponse) error {
	if resp.GetTypeUrl() == "" {
		return errors.New("response without type url")
	}
	for _, r := range resp.GetResources() {
		if r.GetName() == "" {
			return errors.New("resource without name")
		}
		if got := r.GetResource().GetTypeUrl(); got != resp.GetTypeUrl() {
			return fmt.Errorf("resource %q has type %q, want %q", r.GetName(), got, resp.GetTypeUrl())
		}
	}
	return nil
}

func (c *Client) markAnswered(typeURL string) {
	if c.answered[typeURL] {
		return
	}
	c.answered[typeURL] = true
	for _, t := range c.cfg.TypeURLs {
		if !c.answered[t] {
			return
		}
	}
	c.syncedOnce.Do(func() { close(c.synced) })
	c.log.Info("xds synced", "types", len(c.cfg.TypeURLs))
}
