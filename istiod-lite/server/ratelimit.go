package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/ambient-go/mesh/istiod-lite/ca"
	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// This file bounds what one authenticated caller (a node agent, or a
// workload identity) may ask of the CA and of the xDS server: a token
// bucket per caller and service (golang.org/x/time/rate). A request past
// it is refused with codes.ResourceExhausted and counted in
// istiod_limit_hits_total{limit}. Only authenticated callers get a bucket,
// so the buckets are bounded by the mesh's nodes and identities; a bucket
// idle for limiterIdle is forgotten. Istio's istiod has no equivalent.

// RateLimits bound the CA and xDS requests of each authenticated caller.
// The zero value of each field is its default.
type RateLimits struct {
	// CARate is the CreateCertificate requests per second one caller may
	// sustain; default 20; negative: no limit.
	CARate float64
	// CABurst is how many CreateCertificate requests one caller may send
	// at once; default 200 (a starting ztunnel asks for every identity of
	// its node together).
	CABurst int
	// XDSRate is the xDS requests per second one caller may sustain:
	// stream opens and the DiscoveryRequests that are not an ACK or NACK
	// (those are never limited: charged); default 50; negative: no limit.
	XDSRate float64
	// XDSBurst is how many xDS requests one caller may send at once;
	// default 500.
	XDSBurst int
}

// Limit names, the label of LimitHitsName.
const (
	LimitCARequests  = "ca_requests"
	LimitXDSRequests = "xds_requests"
)

// LimitHitsName counts requests refused by a rate limit, by limit.
const LimitHitsName = "istiod_limit_hits_total"

// limiterIdle is how long a caller's bucket is kept without requests. It
// is far above the time a bucket takes to refill (burst / rate), so
// forgetting one gives nobody a fresh burst early.
const limiterIdle = 10 * time.Minute

// callerLimiter is one token bucket per caller.
type callerLimiter struct {
	limit rate.Limit
	burst int
	name  string // LimitCARequests or LimitXDSRequests
	hits  prometheus.Counter

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// newCallerLimiter returns a limiter of r per second and burst per caller
// (defaults defRate, defBurst for zero values); nil when r is negative
// (no limit). hits counts refusals.
func newCallerLimiter(name string, r float64, burst int, defRate float64, defBurst int, hits *prometheus.CounterVec) *callerLimiter {
	if r < 0 {
		return nil
	}
	if r == 0 {
		r = defRate
	}
	if burst <= 0 {
		burst = defBurst
	}
	return &callerLimiter{limit: rate.Limit(r), burst: burst, name: name, hits: hits.WithLabelValues(name), buckets: map[string]*bucket{}}
}

// allow takes a token from key's bucket; false (and counted) if it is
// empty. A nil limiter allows everything.
func (l *callerLimiter) allow(key string) bool {
	if l == nil {
		return true
	}
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.lastSweep) >= limiterIdle {
		for k, b := range l.buckets {
			if now.Sub(b.last) >= limiterIdle {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.last = now
	ok := b.lim.AllowN(now, 1)
	l.mu.Unlock()
	if !ok {
		l.hits.Inc()
	}
	return ok
}

// refusal is the error of a request past the limit.
func (l *callerLimiter) refusal(key string) error {
	return status.Errorf(codes.ResourceExhausted, "rate limit: %s of %s over %v per second (burst %d)", l.name, key, float64(l.limit), l.burst)
}

// callerKey names a caller: its node, or its identity.
func callerKey(node, identity string) string {
	if node != "" {
		return "node " + node
	}
	return "identity " + identity
}

// limitedAuthenticator is a CA Authenticator that also takes a token from
// the authenticated caller's bucket.
type limitedAuthenticator struct {
	ca.Authenticator
	lim *callerLimiter
}

func (a limitedAuthenticator) Authenticate(ctx context.Context) (*ca.Caller, error) {
	c, err := a.Authenticator.Authenticate(ctx)
	if err != nil || c == nil {
		return c, err
	}
	id := ""
	if !c.Identity.IsZero() {
		id = c.Identity.String()
	}
	if key := callerKey(c.Node, id); !a.lim.allow(key) {
		return nil, a.lim.refusal(key)
	}
	return c, nil
}

// limitCA wraps authn with l (nothing to wrap when l is nil).
func limitCA(authn ca.Authenticator, l *callerLimiter) ca.Authenticator {
	if l == nil {
		return authn
	}
	return limitedAuthenticator{authn, l}
}

// callerSlot carries the key of a stream's caller from the xDS
// authenticator (limitXDS) to the stream's RecvMsg (limitedStream).
type callerSlot struct{ key atomic.Pointer[string] }

type callerSlotKey struct{}

// limitXDS wraps an xDS authenticator: a stream open takes a token from
// the caller's bucket, and the stream's later requests are charged to the
// same bucket (streamInterceptor).
func limitXDS(auth func(context.Context) (xds.Caller, error), l *callerLimiter) func(context.Context) (xds.Caller, error) {
	if l == nil {
		return auth
	}
	return func(ctx context.Context) (xds.Caller, error) {
		c, err := auth(ctx)
		if err != nil {
			return c, err
		}
		key := callerKey(c.Node, c.Identity)
		if slot, ok := ctx.Value(callerSlotKey{}).(*callerSlot); ok {
			slot.key.Store(&key)
		}
		if !l.allow(key) {
			return xds.Caller{}, l.refusal(key)
		}
		return c, nil
	}
}

// xdsMethods are the streams whose requests streamInterceptor charges.
var xdsMethods = map[string]bool{
	"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources":  true,
	"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": true,
}

// streamInterceptor charges every request of an xDS stream, once its
// caller is authenticated, to the caller's bucket; past it the stream ends
// with ResourceExhausted.
func (l *callerLimiter) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if l == nil || !xdsMethods[info.FullMethod] {
		return handler(srv, ss)
	}
	slot := &callerSlot{}
	return handler(srv, &limitedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerSlotKey{}, slot), slot: slot, lim: l})
}

// limitedStream is an xDS stream whose requests are charged to its
// caller's bucket.
type limitedStream struct {
	grpc.ServerStream
	ctx  context.Context
	slot *callerSlot
	lim  *callerLimiter
}

func (s *limitedStream) Context() context.Context { return s.ctx }

func (s *limitedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if key := s.slot.key.Load(); key != nil && charged(m) && !s.lim.allow(*key) {
		return s.lim.refusal(*key)
	}
	return nil
}

// charged reports whether an xDS request takes a token: every request
// except an ACK or NACK of a response (its nonce, and no change of
// subscriptions). Those answer pushes: refusing one would end the stream
// of a client that only kept up with istiod-lite, and the pushes it then
// misses grow with the mesh's rate of change, not with the client's.
func charged(m any) bool {
	switch r := m.(type) {
	case *discoveryv3.DeltaDiscoveryRequest:
		return r.GetResponseNonce() == "" || len(r.GetResourceNamesSubscribe()) > 0 || len(r.GetResourceNamesUnsubscribe()) > 0
	case *discoveryv3.DiscoveryRequest:
		return r.GetResponseNonce() == ""
	}
	return true
}
