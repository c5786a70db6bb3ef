package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

func exactM(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func presenceM() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

// pol builds a policy with one rule of one clause holding the matches.
func pol(ns, name string, scope security.Scope, action security.Action, dryRun bool, ms ...*security.Match) *security.Authorization {
	a := &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action, DryRun: dryRun}
	if ms != nil {
		a.Rules = []*security.Rule{{Clauses: []*security.Clause{{Matches: ms}}}}
	}
	return a
}

var (
	fooConn = &Conn{
		Src:      netip.MustParseAddr("10.0.1.5"),
		Dst:      netip.MustParseAddrPort("10.0.2.7:8080"),
		Identity: "spiffe://cluster.local/ns/foo/sa/client",
	}
	plainConn = &Conn{Src: netip.MustParseAddr("10.0.1.5"), Dst: netip.MustParseAddrPort("10.0.2.7:8080")}
	target    = Target{Namespace: "demo", Policies: []string{"demo/selected"}}
)

func TestEvaluate(t *testing.T) {
	fromFoo := &security.Match{Namespaces: []*security.StringMatch{exactM("foo")}}
	fromBar := &security.Match{Namespaces: []*security.StringMatch{exactM("bar")}}
	strict := &security.Match{NotPrincipals: []*security.StringMatch{presenceM()}}
	const (
		G = security.Scope_GLOBAL
		N = security.Scope_NAMESPACE
		W = security.Scope_WORKLOAD_SELECTOR
		A = security.Action_ALLOW
		D = security.Action_DENY
	)
	tests := []struct {
		name     string
		policies []*security.Authorization
		conn     *Conn
		want     Decision
	}{
		{"no policy allows", nil, fooConn, Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"namespace deny matches", []*security.Authorization{pol("demo", "d", N, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}},
		{"deny of another namespace does not apply", []*security.Authorization{pol("other", "d", N, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"global deny applies everywhere", []*security.Authorization{pol("istio-system", "d", G, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "istio-system/d"}}},
		{"selector policy applies when the workload names it", []*security.Authorization{pol("demo", "selected", W, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/selected"}}},
		{"selector policy not named does not apply", []*security.Authorization{pol("demo", "other", W, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"deny wins over allow", []*security.Authorization{pol("demo", "a", N, A, false, fromFoo), pol("demo", "d", N, D, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}},
		{"matching allow allows", []*security.Authorization{pol("demo", "a", N, A, false, fromBar), pol("demo", "b", N, A, false, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: AllowMatched, Policy: "demo/b"}}},
		{"allow not matching denies", []*security.Authorization{pol("demo", "a", N, A, false, fromBar)}, fooConn,
			Decision{Verdict: Verdict{Reason: NoAllowMatched}}},
		{"allow without rules denies all", []*security.Authorization{pol("demo", "a", N, A, false)}, fooConn,
			Decision{Verdict: Verdict{Reason: NoAllowMatched}}},
		{"deny with an empty rule denies all", []*security.Authorization{{Name: "d", Namespace: "demo", Scope: N, Action: D, Rules: []*security.Rule{{}}}}, fooConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}},
		{"empty match matches nothing", []*security.Authorization{pol("demo", "d", N, D, false, &security.Match{})}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"dry-run deny only shadows", []*security.Authorization{pol("demo", "d", N, D, true, fromFoo)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}, DryRun: true, Shadow: Verdict{Reason: DenyMatched, Policy: "demo/d"}}},
		{"dry-run allow does not make others deny", []*security.Authorization{pol("demo", "a", N, A, true, fromBar)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}, DryRun: true, Shadow: Verdict{Reason: NoAllowMatched}}},
		{"strict denies plaintext", []*security.Authorization{pol("istio-system", "strict", G, D, false, strict)}, plainConn,
			Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "istio-system/strict"}}},
		{"strict allows mTLS", []*security.Authorization{pol("istio-system", "strict", G, D, false, strict)}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"plaintext has no namespace", []*security.Authorization{pol("demo", "d", N, D, false, &security.Match{Namespaces: []*security.StringMatch{presenceM()}})}, plainConn,
			Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}},
		{"invalid address matches nothing", []*security.Authorization{pol("demo", "a", N, A, false, &security.Match{SourceIps: []*security.Address{{Address: []byte{1, 2, 3}, Length: 8}}})}, fooConn,
			Decision{Verdict: Verdict{Reason: NoAllowMatched}}},
		{"source CIDR", []*security.Authorization{pol("demo", "a", N, A, false, &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/16")}})}, fooConn,
			Decision{Verdict: Verdict{Allow: true, Reason: AllowMatched, Policy: "demo/a"}}},
		{"rule needs every clause", []*security.Authorization{{Name: "a", Namespace: "demo", Scope: N, Action: A, Rules: []*security.Rule{{Clauses: []*security.Clause{
			{Matches: []*security.Match{fromFoo}},
			{Matches: []*security.Match{{DestinationPorts: []uint32{9090}}}},
		}}}}}, fooConn, Decision{Verdict: Verdict{Reason: NoAllowMatched}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Compile(tc.policies).Evaluate(target, tc.conn)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNilPoliciesAllow(t *testing.T) {
	var p *Policies
	if d := p.Evaluate(target, fooConn); !d.Allow || p.Len() != 0 {
		t.Errorf("nil Policies: Evaluate() = %+v, Len() = %d; want allowed, 0", d, p.Len())
	}
}

// manyPolicies returns n policies spread over n/10 namespaces, a mix of
// ALLOW and DENY, NAMESPACE and WORKLOAD_SELECTOR, plus a few GLOBAL ones.
func manyPolicies(n int) []*security.Authorization {
	out := make([]*security.Authorization, 0, n)
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i/10)
		scope := security.Scope_NAMESPACE
		if i%2 == 0 {
			scope = security.Scope_WORKLOAD_SELECTOR
		}
		action := security.Action_ALLOW
		if i%3 == 0 {
			action = security.Action_DENY
		}
		if i < 5 {
			ns, scope = "istio-system", security.Scope_GLOBAL
		}
		out = append(out, pol(ns, fmt.Sprintf("p-%d", i), scope, action, false,
			&security.Match{
				Principals: []*security.StringMatch{exactM(fmt.Sprintf("cluster.local/ns/%s/sa/sa-%d", ns, i))},
				SourceIps:  []*security.Address{cidr("10.0.0.0/8")},
			},
			&security.Match{NotNamespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Prefix{Prefix: "ns-"}}}, DestinationPorts: []uint32{8080, 9090}},
		))
	}
	return out
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	p := Compile(manyPolicies(1000))
	tgt := Target{Namespace: "ns-42", Policies: []string{"ns-42/p-420", "ns-42/p-422"}}
	allocs := testing.AllocsPerRun(100, func() { p.Evaluate(tgt, fooConn) })
	if allocs != 0 {
		t.Errorf("Evaluate allocates %v times per call, want 0", allocs)
	}
}

// BenchmarkEvaluate decides one connection against 10,000 compiled
// policies: the destination's namespace has 10 of them (5 named by the
// workload), plus 5 global ones.
func BenchmarkEvaluate(b *testing.B) {
	p := Compile(manyPolicies(10000))
	tgt := Target{Namespace: "ns-500", Policies: []string{"ns-500/p-5000", "ns-500/p-5002", "ns-500/p-5004", "ns-500/p-5006", "ns-500/p-5008"}}
	c := &Conn{Src: netip.MustParseAddr("10.1.2.3"), Dst: netip.MustParseAddrPort("10.2.0.1:8080"), Identity: "spiffe://cluster.local/ns/ns-500/sa/sa-5003"}
	b.ReportAllocs()
	for b.Loop() {
		p.Evaluate(tgt, c)
	}
}

// BenchmarkCompile compiles 10,000 policies, as ztunnel does after an
// update that changed them.
func BenchmarkCompile(b *testing.B) {
	pols := manyPolicies(10000)
	b.ReportAllocs()
	for b.Loop() {
		Compile(pols)
	}
}
