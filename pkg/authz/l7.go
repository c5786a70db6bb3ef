package authz

import (
	"net/http"
	"net/netip"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Request holds the attributes of one HTTP request at a waypoint that L7
// policies (ambientgo.waypoint.Authorization) look at.
type Request struct {
	// Peer is the client address at L4 (source.ip, ipBlocks): the original
	// client's, as the source ztunnel forwarded it, not the ztunnel's.
	Peer netip.Addr
	// Remote is the original client (remote.ip, remoteIpBlocks): the first
	// x-forwarded-for address when there is one, else Peer.
	Remote netip.Addr
	// Identity is the client's SPIFFE ID ("spiffe://td/ns/n/sa/s"), empty
	// for a client without one.
	Identity string
	// Method, Host (the :authority / Host header) and Path (as received,
	// query included: the evaluator strips the query and normalizes).
	Method, Host, Path string
	Header             http.Header
	// DestIP and Port are the address the client addressed: the service VIP
	// and service port, or the pod IP and port for workload-addressed
	// traffic (destination.ip, destination.port, ports).
	DestIP netip.Addr
	Port   uint16
	// Service is the destination service's "namespace/hostname" (the
	// Workload API key); empty for workload-addressed traffic.
	Service string
	// Gateway is the waypoint's own Gateway, "namespace/name".
	Gateway string
}

// L7Policies is a compiled, immutable set of waypoint policies. The zero
// value and nil hold no policy (everything is allowed).
type L7Policies struct {
	n int
}

// CompileL7 compiles the waypoint policies a waypoint holds. Policies whose
// values cannot be compiled match nothing as ALLOW and everything as DENY
// (fail closed).
//
// TODO(issue 10): being written.
func CompileL7(policies []*waypoint.Authorization) *L7Policies {
	return &L7Policies{n: len(policies)}
}

// Len is the number of compiled policies.
func (p *L7Policies) Len() int {
	if p == nil {
		return 0
	}
	return p.n
}

// L7Decision is what EvaluateL7 returns.
type L7Decision struct {
	Decision
	// Audit holds the "namespace/name" of the AUDIT policies that matched.
	Audit []string
}

// Evaluate decides one request with Istio's order (see the package
// comment): only the policies whose targets match r (its Service, its
// Gateway, or every waypoint) apply.
//
// TODO(issue 10): being written.
func (p *L7Policies) Evaluate(r *Request) L7Decision {
	return L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}
}

// EvaluateTCP decides a non-HTTP stream at a waypoint with Istio's rules
// for L7 policies on TCP traffic: in ALLOW (and AUDIT) policies the rules
// that hold HTTP-only fields (methods, paths, hosts, request headers) are
// dropped; in DENY policies they are enforced without those fields. Only
// Peer, Remote, Identity, DestIP, Port, Service and Gateway of r are read.
//
// TODO(issue 10): being written.
func (p *L7Policies) EvaluateTCP(r *Request) L7Decision {
	return L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}
}
