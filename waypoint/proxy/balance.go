package proxy

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// Load balancing among a Service's endpoints, as Istio's waypoint (Envoy)
// does it by default, and passive outlier ejection of endpoints that fail
// to connect.
//
// The candidates are the store's (state.Store.Endpoints): the HEALTHY
// endpoints with an address. Among them, LeastRequest (Istio's default
// policy, defaultLBAlgorithm in pilot's cluster_traffic_policy.go) takes
// two at random and sends to the one with fewer requests in flight from
// this waypoint (Envoy's LEAST_REQUEST, choice_count 2); RoundRobin takes
// them in turn (the store's cursor).
//
// An endpoint whose connection fails consecutiveConnectFailures times in
// a row (the TCP dial or the HBONE CONNECT: dialError) is ejected for
// baseEjectionTime × the times it was ejected in a row, at most
// maxEjectionTime; each ejectionDecay it then spends in service takes one
// off that count. At most maxEjectionPercent of a Service's endpoints are
// ejected at once, but always at least one. These are Envoy's defaults for
// outlier detection (consecutive_5xx, which counts TCP connection
// failures; base_ejection_time, max_ejection_time, interval,
// max_ejection_percent). Istio enables outlier detection only when a
// DestinationRule asks for it; the waypoint always does, and counts only
// connection failures, never the endpoint's own 5xx answers. When every
// candidate is ejected, the balancer picks among all of them (Envoy's
// panic mode).
//
// Per-endpoint state (host) is kept by endpoint address (pod IP and target
// port, Envoy's host) in a copy-on-write map: a pick allocates nothing
// once its endpoints are known, and entries of addresses no workload holds
// any more are dropped after the store changes.

// LBPolicy is how the waypoint picks among a Service's endpoints.
type LBPolicy string

// Load balancing policies.
const (
	// LeastRequest: the fewer active requests of two random endpoints
	// (Istio's default).
	LeastRequest LBPolicy = "least-request"
	// RoundRobin: each endpoint in turn.
	RoundRobin LBPolicy = "round-robin"
)

// Outlier detection: Envoy's defaults.
const (
	consecutiveConnectFailures = 5
	baseEjectionTime           = 30 * time.Second
	maxEjectionTime            = 300 * time.Second
	ejectionDecay              = 10 * time.Second // Envoy's interval
	maxEjectionPercent         = 10
	choiceCount                = 2 // Envoy's least_request choice_count
)

// outcome is what a request learnt of its endpoint's health.
type outcome uint8

const (
	outcomeUnknown       outcome = iota // nothing (the client went away, no try)
	outcomeConnected                    // the connection opened
	outcomeConnectFailed                // the connection failed: dialError
)

// balancer picks endpoints and tracks their requests in flight and their
// ejection.
type balancer struct {
	store   *state.Store
	policy  LBPolicy
	now     func() time.Time // injectable clock (tests)
	log     *slog.Logger
	metrics *LBMetrics

	hosts  atomic.Pointer[map[netip.AddrPort]*host] // replaced, never changed
	mu     sync.Mutex                               // serializes replacing hosts
	pruned atomic.Uint64                            // store version hosts was last pruned at
}

// host is an endpoint's state at this waypoint.
type host struct {
	active       atomic.Int64 // requests (and TCP streams) in flight
	failures     atomic.Int32 // consecutive connection failures
	ejectedUntil atomic.Int64 // unix nanoseconds; 0: in service

	mu        sync.Mutex // ejection bookkeeping below
	ejections int        // ejections in a row: the ejection time's multiplier
	lastEnd   int64      // when the last ejection ended (unix nanoseconds)
}

// lease is a picked endpoint's hold on its host: done releases it with the
// request's outcome. The zero lease (an endpoint not balanced) does
// nothing.
type lease struct {
	h    *host
	svc  *state.Service
	port uint16 // the service port, to find the ejection's peers
}

func newBalancer(store *state.Store, policy LBPolicy, m *LBMetrics, log *slog.Logger) *balancer {
	b := &balancer{store: store, policy: policy, now: time.Now, log: log, metrics: m}
	if b.metrics == nil {
		b.metrics = NewLBMetrics(nil)
	}
	empty := map[netip.AddrPort]*host{}
	b.hosts.Store(&empty)
	return b
}

// pick chooses an endpoint of svc for servicePort and counts a request in
// flight to it; the caller calls done with the lease when the request is
// over.
func (b *balancer) pick(svc *state.Service, servicePort uint16) (*state.Workload, uint16, lease, error) {
	if v := b.store.Version(); v != b.pruned.Load() {
		b.prune(v)
	}
	var (
		ep  state.Endpoint
		h   *host
		err error
	)
	if b.policy == RoundRobin {
		ep, h, err = b.roundRobin(svc, servicePort)
	} else {
		ep, h, err = b.leastRequest(svc, servicePort)
	}
	if err != nil {
		return nil, 0, lease{}, err
	}
	h.active.Add(1)
	return ep.Workload, ep.Port, lease{h: h, svc: svc, port: servicePort}, nil
}

// hostSelectionAttempts is how many picks a retry makes to find an
// endpoint it has not tried (Istio's HostSelectionRetryMaxAttempts).
const hostSelectionAttempts = 5

// pickAvoiding is pick for a retry: an endpoint whose host is not in
// tried if one comes within hostSelectionAttempts picks, else the last
// picked (Istio's default retry_host_predicate, previous_hosts).
func (b *balancer) pickAvoiding(svc *state.Service, servicePort uint16, tried []*host) (*state.Workload, uint16, lease, error) {
	for k := 1; ; k++ {
		w, port, l, err := b.pick(svc, servicePort)
		if err != nil || k >= hostSelectionAttempts || !slices.Contains(tried, l.h) {
			return w, port, l, err
		}
		b.done(l, outcomeUnknown)
	}
}

// leastRequest is Envoy's LEAST_REQUEST with equal weights: the less busy
// of choiceCount endpoints drawn at random among those in service, or
// among all when none is (panic).
func (b *balancer) leastRequest(svc *state.Service, servicePort uint16) (state.Endpoint, *host, error) {
	eps, err := b.store.Endpoints(svc, servicePort)
	if err != nil {
		return state.Endpoint{}, nil, err
	}
	if len(eps) == 1 {
		return eps[0], b.host(eps[0]), nil
	}
	var now int64 // read once, and only when some candidate was ejected
	best, bestHost := -1, (*host)(nil)
	for range choiceCount {
		i, h := b.draw(eps, &now)
		if i < 0 {
			break
		}
		if bestHost == nil || h.active.Load() < bestHost.active.Load() {
			best, bestHost = i, h
		}
	}
	if best < 0 { // panic: every candidate is ejected
		for range choiceCount {
			i := rand.IntN(len(eps))
			h := b.host(eps[i])
			if bestHost == nil || h.active.Load() < bestHost.active.Load() {
				best, bestHost = i, h
			}
		}
	}
	return eps[best], bestHost, nil
}

// draw returns a random endpoint of eps in service, or -1 when all are
// ejected: a few draws, then the first in service from a random start.
func (b *balancer) draw(eps []state.Endpoint, now *int64) (int, *host) {
	n := len(eps)
	for range 4 {
		i := rand.IntN(n)
		if h := b.host(eps[i]); !b.ejected(h, now) {
			return i, h
		}
	}
	start := rand.IntN(n)
	for k := range n {
		i := (start + k) % n
		if h := b.host(eps[i]); !b.ejected(h, now) {
			return i, h
		}
	}
	return -1, nil
}

// roundRobin takes the store's next endpoint, skipping ejected ones; when
// all are ejected, the first it took (panic).
func (b *balancer) roundRobin(svc *state.Service, servicePort uint16) (state.Endpoint, *host, error) {
	eps, err := b.store.Endpoints(svc, servicePort)
	if err != nil {
		return state.Endpoint{}, nil, err
	}
	var (
		now       int64
		first     state.Endpoint
		firstHost *host
	)
	for k := range len(eps) {
		w, port, err := b.store.PickEndpoint(svc, servicePort)
		if err != nil {
			return state.Endpoint{}, nil, err
		}
		ep := state.Endpoint{Workload: w, Port: port}
		h := b.host(ep)
		if !b.ejected(h, &now) {
			return ep, h, nil
		}
		if k == 0 {
			first, firstHost = ep, h
		}
	}
	return first, firstHost, nil
}

// done releases l: one request fewer in flight, and its outcome counted
// for outlier detection.
func (b *balancer) done(l lease, o outcome) {
	h := l.h
	if h == nil {
		return
	}
	h.active.Add(-1)
	switch o {
	case outcomeConnected:
		if h.failures.Load() != 0 {
			h.failures.Store(0)
		}
	case outcomeConnectFailed:
		if h.failures.Add(1) >= consecutiveConnectFailures {
			b.eject(l)
		}
	}
}

// eject takes l's endpoint out of service, unless it is already out or
// too many of its Service's endpoints are.
func (b *balancer) eject(l lease) {
	h := l.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failures.Load() < consecutiveConnectFailures {
		return // ejected meanwhile by another request
	}
	nowT := b.now()
	now := nowT.UnixNano()
	if h.ejectedUntil.Load() > now {
		h.failures.Store(0) // requests sent before the ejection: its return starts a new streak
		return
	}
	if eps, err := b.store.Endpoints(l.svc, l.port); err == nil {
		ejected := 0
		for _, ep := range eps {
			if p := b.lookup(ep); p != nil && p != h && p.ejectedUntil.Load() > now {
				ejected++
			}
		}
		// Envoy: never more than maxEjectionPercent, but always one.
		if ejected > 0 && (ejected+1)*100 > maxEjectionPercent*len(eps) {
			return
		}
	}
	mult := h.ejections
	if h.lastEnd != 0 && now > h.lastEnd {
		mult -= int((now - h.lastEnd) / int64(ejectionDecay))
	}
	mult = max(mult, 0) + 1
	d := min(baseEjectionTime*time.Duration(mult), max(maxEjectionTime, baseEjectionTime))
	h.ejections = mult
	h.lastEnd = now + int64(d)
	h.ejectedUntil.Store(h.lastEnd)
	h.failures.Store(0)
	b.metrics.ejections.Inc()
	b.log.Info("endpoint ejected", "service", l.svc.Key, "port", l.port, "ejection", d, "ejections", mult)
}

// ejected reports whether h is out of service; *now is the clock, read
// the first time it is needed.
func (b *balancer) ejected(h *host, now *int64) bool {
	until := h.ejectedUntil.Load()
	if until == 0 {
		return false
	}
	if *now == 0 {
		*now = b.now().UnixNano()
	}
	if *now < until {
		return true
	}
	h.ejectedUntil.CompareAndSwap(until, 0) // back in service
	return false
}

// lookup returns ep's host, or nil when it has none yet.
func (b *balancer) lookup(ep state.Endpoint) *host {
	return (*b.hosts.Load())[hostKey(ep)]
}

// host returns ep's host, created on first use.
func (b *balancer) host(ep state.Endpoint) *host {
	k := hostKey(ep)
	if h := (*b.hosts.Load())[k]; h != nil {
		return h
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.hosts.Load()
	if h := old[k]; h != nil {
		return h
	}
	m := make(map[netip.AddrPort]*host, len(old)+1)
	for k, h := range old {
		m[k] = h
	}
	h := new(host)
	m[k] = h
	b.hosts.Store(&m)
	return h
}

func hostKey(ep state.Endpoint) netip.AddrPort {
	return netip.AddrPortFrom(ep.Workload.Addrs[0], ep.Port)
}

// prune drops the hosts of addresses that no workload holds any more and
// that have nothing in flight, once per store version. A request still
// holding a dropped host releases it harmlessly.
func (b *balancer) prune(version uint64) {
	if !b.mu.TryLock() {
		return // another pick prunes or adds; the next one will see the version
	}
	defer b.mu.Unlock()
	if b.pruned.Load() == version {
		return
	}
	old := *b.hosts.Load()
	var gone []netip.AddrPort
	for k, h := range old {
		if h.active.Load() == 0 && b.store.WorkloadByAddr(k.Addr()) == nil {
			gone = append(gone, k)
		}
	}
	if len(gone) > 0 {
		m := make(map[netip.AddrPort]*host, len(old)-len(gone))
		for k, h := range old {
			m[k] = h
		}
		for _, k := range gone {
			delete(m, k)
		}
		b.hosts.Store(&m)
	}
	b.pruned.Store(version)
}

// tryOutcome is the outcome of one try sent with ctx that ended with err:
// an answer means the connection opened; a dialError while ctx was still
// live, that it failed. Anything else tells nothing (the client or a
// timeout ended the try, or the connection broke after it opened).
func tryOutcome(ctx context.Context, err error) outcome {
	switch {
	case err == nil:
		return outcomeConnected
	case ctx.Err() != nil:
		return outcomeUnknown
	}
	var de *dialError
	if errors.As(err, &de) {
		return outcomeConnectFailed
	}
	return outcomeUnknown
}

// outcome is the outcome of rq's last try, from its response flags: no
// flag, an answer; UF, a failure to connect (upstreamError gives it only
// to a dialError while the request was live).
func (rq *request) outcome() outcome {
	switch rq.flags {
	case "":
		return outcomeConnected
	case telemetry.FlagUpstreamFailure:
		return outcomeConnectFailed
	}
	return outcomeUnknown
}

// release releases rq's lease with the outcome of its last try; a second
// call does nothing.
func (b *balancer) release(rq *request) {
	b.done(rq.lease, rq.outcome())
	rq.lease = lease{}
}
