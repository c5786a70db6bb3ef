// Package authz evaluates L4 authorization policies (istio.security.Authorization)
// at the destination of a connection, with the semantics of Istio's ztunnel.
//
// Compile turns the policies ztunnel holds into an immutable, indexed Policies
// value once per configuration update; Evaluate then decides one connection
// without allocating. The order of evaluation is Istio's:
//
//  1. dry-run policies never decide (their would-be effect is reported in
//     Decision.Shadow, for logging);
//  2. any matching DENY policy denies;
//  3. when no ALLOW policy applies, the connection is allowed;
//  4. a matching ALLOW policy allows;
//  5. otherwise the connection is denied.
//
// The policies that apply to a destination workload are the GLOBAL ones
// (istiod's root namespace), the NAMESPACE ones of the workload's namespace,
// and those the workload names in its authorization_policies list
// ("namespace/name", the WORKLOAD_SELECTOR policies that select it).
//
// A policy's rules are OR'd, a rule's clauses AND'd, a clause's matches OR'd;
// inside a match every non-empty field must hold, a field holds when any of
// its values matches, and a not_ field holds when none does. A policy without
// rules matches nothing; a rule without clauses, or a clause without matches,
// matches everything; a match with no field set matches nothing. Principals
// are compared without the "spiffe://" prefix. A connection without a peer
// identity (plaintext) has no principal, namespace or service account: it
// matches no principals/namespaces value and every not_ one.
package authz

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Conn holds the attributes of one connection that policies look at.
type Conn struct {
	// Src is the client's address (the HBONE peer's, or the Forwarded one).
	Src netip.Addr
	// Dst is the destination workload's address and target port (not 15008).
	Dst netip.AddrPort
	// Identity is the peer's SPIFFE ID, "spiffe://<td>/ns/<ns>/sa/<sa>"; empty
	// for plaintext connections.
	Identity string
}

// Target is the destination workload whose policies apply.
type Target struct {
	// Namespace of the workload: NAMESPACE-scoped policies of this namespace
	// apply.
	Namespace string
	// Policies are the "namespace/name" keys of the WORKLOAD_SELECTOR
	// policies that select the workload (Workload.authorization_policies).
	Policies []string
}

// Reason tells why a Decision was made.
type Reason uint8

// Reasons.
const (
	NoPolicy       Reason = iota // no ALLOW or DENY policy applies: allowed
	DenyMatched                  // a DENY policy matched: denied
	AllowMatched                 // an ALLOW policy matched: allowed
	NoAllowMatched               // ALLOW policies apply and none matched: denied
)

func (r Reason) String() string {
	switch r {
	case NoPolicy:
		return "no policy"
	case DenyMatched:
		return "denied by policy"
	case AllowMatched:
		return "allowed by policy"
	case NoAllowMatched:
		return "no allow policy matched"
	case InvalidPath:
		return "invalid path"
	}
	return "unknown"
}

// Verdict is the outcome of one evaluation.
type Verdict struct {
	Allow  bool
	Reason Reason
	// Policy is the "namespace/name" of the policy that decided: the DENY or
	// ALLOW that matched; empty for NoPolicy and NoAllowMatched.
	Policy string
}

// Decision is what Evaluate returns.
type Decision struct {
	Verdict
	// DryRun reports whether any dry-run policy applied; Shadow is then the
	// verdict the connection would get if dry-run policies were enforced.
	DryRun bool
	Shadow Verdict
}

// Policies is a compiled, immutable set of policies. The zero value and nil
// hold no policy (everything is allowed).
type Policies struct {
	global []*policy
	byNS   map[string][]*policy
	byKey  map[string]*policy
	n      int
}

// Len is the number of compiled policies.
func (p *Policies) Len() int {
	if p == nil {
		return 0
	}
	return p.n
}

type policy struct {
	key       string
	namespace string
	scope     security.Scope
	deny      bool
	dryRun    bool
	rules     []rule
}

type rule []clause  // AND
type clause []match // OR; empty matches everything

type match struct {
	empty                                bool
	namespaces, notNamespaces            []strMatch
	serviceAccounts, notServiceAccounts  []saMatch
	principals, notPrincipals            []strMatch
	srcIPs, notSrcIPs, dstIPs, notDstIPs []netip.Prefix
	dstPorts, notDstPorts                []uint16
}

type strKind uint8

const (
	exact strKind = iota
	prefix
	suffix
	presence
	never // a StringMatch without a match type: matches nothing
)

type strMatch struct {
	kind  strKind
	value string
}

func (m strMatch) matches(s string) bool {
	switch m.kind {
	case exact:
		return s == m.value
	case prefix:
		return strings.HasPrefix(s, m.value)
	case suffix:
		return strings.HasSuffix(s, m.value)
	case presence:
		return s != ""
	}
	return false
}

type saMatch struct{ namespace, serviceAccount string }

// Compile indexes policies for Evaluate. Nil entries are skipped; of two
// policies with the same namespace/name, the later one is kept. Addresses
// that are not 4 or 16 bytes long, or whose length exceeds the address
// size, match no connection.
func Compile(policies []*security.Authorization) *Policies {
	p := &Policies{byNS: map[string][]*policy{}, byKey: make(map[string]*policy, len(policies))}
	for _, a := range policies {
		if a != nil {
			pol := compilePolicy(a)
			p.byKey[pol.key] = pol
		}
	}
	// Index in key order, so that the policy a Decision names does not
	// depend on map iteration.
	keys := make([]string, 0, len(p.byKey))
	for k := range p.byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		pol := p.byKey[k]
		switch pol.scope {
		case security.Scope_GLOBAL:
			p.global = append(p.global, pol)
		case security.Scope_NAMESPACE:
			p.byNS[pol.namespace] = append(p.byNS[pol.namespace], pol)
		}
	}
	p.n = len(keys)
	return p
}

// Key returns the "namespace/name" key of a policy.
func Key(a *security.Authorization) string { return a.GetNamespace() + "/" + a.GetName() }

func compilePolicy(a *security.Authorization) *policy {
	p := &policy{
		key:       Key(a),
		namespace: a.GetNamespace(),
		scope:     a.GetScope(),
		deny:      a.GetAction() == security.Action_DENY,
		dryRun:    a.GetDryRun(),
	}
	for _, r := range a.GetRules() {
		cr := make(rule, 0, len(r.GetClauses()))
		for _, c := range r.GetClauses() {
			cc := make(clause, 0, len(c.GetMatches()))
			for _, m := range c.GetMatches() {
				cc = append(cc, compileMatch(m))
			}
			cr = append(cr, cc)
		}
		p.rules = append(p.rules, cr)
	}
	return p
}

func compileMatch(m *security.Match) match {
	out := match{
		namespaces:         strMatches(m.GetNamespaces()),
		notNamespaces:      strMatches(m.GetNotNamespaces()),
		serviceAccounts:    saMatches(m.GetServiceAccounts()),
		notServiceAccounts: saMatches(m.GetNotServiceAccounts()),
		principals:         strMatches(m.GetPrincipals()),
		notPrincipals:      strMatches(m.GetNotPrincipals()),
		srcIPs:             prefixes(m.GetSourceIps()),
		notSrcIPs:          prefixes(m.GetNotSourceIps()),
		dstIPs:             prefixes(m.GetDestinationIps()),
		notDstIPs:          prefixes(m.GetNotDestinationIps()),
		dstPorts:           ports(m.GetDestinationPorts()),
		notDstPorts:        ports(m.GetNotDestinationPorts()),
	}
	out.empty = len(out.namespaces)+len(out.notNamespaces)+len(out.serviceAccounts)+len(out.notServiceAccounts)+
		len(out.principals)+len(out.notPrincipals)+len(out.srcIPs)+len(out.notSrcIPs)+len(out.dstIPs)+
		len(out.notDstIPs)+len(out.dstPorts)+len(out.notDstPorts) == 0
	return out
}

func strMatches(ms []*security.StringMatch) []strMatch {
	if len(ms) == 0 {
		return nil
	}
	out := make([]strMatch, 0, len(ms))
	for _, m := range ms {
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, strMatch{exact, t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, strMatch{prefix, t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, strMatch{suffix, t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, strMatch{kind: presence})
		default:
			out = append(out, strMatch{kind: never})
		}
	}
	return out
}

func saMatches(ms []*security.ServiceAccountMatch) []saMatch {
	if len(ms) == 0 {
		return nil
	}
	out := make([]saMatch, 0, len(ms))
	for _, m := range ms {
		out = append(out, saMatch{m.GetNamespace(), m.GetServiceAccount()})
	}
	return out
}

func prefixes(as []*security.Address) []netip.Prefix {
	if len(as) == 0 {
		return nil
	}
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok || int(a.GetLength()) > ip.BitLen() {
			out = append(out, netip.Prefix{}) // invalid: contains nothing
			continue
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), int(a.GetLength())).Masked())
	}
	return out
}

func ports(ps []uint32) []uint16 {
	if len(ps) == 0 {
		return nil
	}
	out := make([]uint16, 0, len(ps))
	for _, p := range ps {
		if p <= 0xffff {
			out = append(out, uint16(p))
		}
	}
	return out
}

// attrs are a connection's attributes as policies compare them.
type attrs struct {
	src, dst      netip.Addr
	port          uint16
	principal     string // identity without "spiffe://"; empty if none
	namespace, sa string
}

func newAttrs(c *Conn) attrs {
	a := attrs{src: c.Src.Unmap(), dst: c.Dst.Addr().Unmap(), port: c.Dst.Port()}
	if p, ok := strings.CutPrefix(c.Identity, "spiffe://"); ok && p != "" {
		a.principal = p
		// <td>/ns/<ns>/sa/<sa>
		if _, rest, ok := strings.Cut(p, "/ns/"); ok {
			if ns, sa, ok := strings.Cut(rest, "/sa/"); ok && !strings.Contains(sa, "/") {
				a.namespace, a.sa = ns, sa
			}
		}
	}
	return a
}

// Evaluate decides whether the connection c to the workload t is allowed.
// It does not allocate. A nil *Policies allows everything.
func (p *Policies) Evaluate(t Target, c *Conn) Decision {
	if p == nil || p.n == 0 {
		return Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}
	}
	a := newAttrs(c)
	var e eval
	for _, pol := range p.global {
		e.add(pol, &a)
	}
	for _, pol := range p.byNS[t.Namespace] {
		e.add(pol, &a)
	}
	for _, k := range t.Policies {
		if pol := p.byKey[k]; pol != nil {
			e.add(pol, &a)
		}
	}
	d := Decision{Verdict: e.real.verdict(), DryRun: e.dryRun}
	if e.dryRun {
		d.Shadow = e.shadow.verdict()
	}
	return d
}

// tally accumulates what the policies applied so far say.
type tally struct {
	deny     string // first matching DENY
	denied   bool
	hasAllow bool
	allow    string // first matching ALLOW
	allowed  bool
}

func (t *tally) verdict() Verdict {
	switch {
	case t.denied:
		return Verdict{Allow: false, Reason: DenyMatched, Policy: t.deny}
	case !t.hasAllow:
		return Verdict{Allow: true, Reason: NoPolicy}
	case t.allowed:
		return Verdict{Allow: true, Reason: AllowMatched, Policy: t.allow}
	}
	return Verdict{Allow: false, Reason: NoAllowMatched}
}

// eval tallies the enforced policies (real) and all of them, dry-run
// included (shadow).
type eval struct {
	real, shadow tally
	dryRun       bool
}

func (e *eval) add(pol *policy, a *attrs) {
	if pol.dryRun {
		e.dryRun = true
	}
	// Skip matching when it cannot change either tally.
	e.record(pol.deny, pol.dryRun, e.needs(pol.deny, pol.dryRun) && pol.matches(a), pol.key)
}

// needs reports whether a policy — DENY or ALLOW, dry-run or not — can
// still change the real or the shadow verdict, so whether it must be
// matched at all.
func (e *eval) needs(deny, dryRun bool) bool {
	return e.shadow.needs(deny) || (!dryRun && e.real.needs(deny))
}

func (t *tally) needs(deny bool) bool {
	if deny {
		return !t.denied
	}
	return !t.allowed
}

// record counts one policy — DENY or ALLOW, dry-run or not, matched or
// not — into the real verdict (unless dry-run) and the shadow one.
func (e *eval) record(deny, dryRun, matched bool, key string) {
	if !dryRun {
		e.real.record(deny, matched, key)
	}
	e.shadow.record(deny, matched, key)
}

func (t *tally) record(deny, matched bool, key string) {
	if deny {
		if matched && !t.denied {
			t.denied, t.deny = true, key
		}
		return
	}
	t.hasAllow = true
	if matched && !t.allowed {
		t.allowed, t.allow = true, key
	}
}

func (pol *policy) matches(a *attrs) bool {
	for i := range pol.rules {
		if pol.rules[i].matches(a) {
			return true
		}
	}
	return false
}

func (r rule) matches(a *attrs) bool {
	for _, c := range r {
		if !c.matches(a) {
			return false
		}
	}
	return true
}

func (c clause) matches(a *attrs) bool {
	if len(c) == 0 {
		return true
	}
	for i := range c {
		if c[i].matches(a) {
			return true
		}
	}
	return false
}

func (m *match) matches(a *attrs) bool {
	if m.empty {
		return false
	}
	return anyNone(m.dstIPs, m.notDstIPs, func(p netip.Prefix) bool { return p.Contains(a.dst) }) &&
		anyNone(m.srcIPs, m.notSrcIPs, func(p netip.Prefix) bool { return p.Contains(a.src) }) &&
		anyNone(m.dstPorts, m.notDstPorts, func(p uint16) bool { return p == a.port }) &&
		anyNone(m.serviceAccounts, m.notServiceAccounts, func(s saMatch) bool {
			return a.sa != "" && s.namespace == a.namespace && s.serviceAccount == a.sa
		}) &&
		anyNone(m.principals, m.notPrincipals, func(s strMatch) bool { return a.principal != "" && s.matches(a.principal) }) &&
		anyNone(m.namespaces, m.notNamespaces, func(s strMatch) bool { return s.matches(a.namespace) })
}

// anyNone reports whether some value of pos matches (or pos is empty) and no
// value of neg matches.
func anyNone[T any](pos, neg []T, f func(T) bool) bool {
	if len(pos) > 0 && !slices.ContainsFunc(pos, f) {
		return false
	}
	return !slices.ContainsFunc(neg, f)
}
