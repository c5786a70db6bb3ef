package authz

import (
	"errors"
	"net/http"
	"net/netip"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// L7 authorization at a waypoint: the AuthorizationPolicies with targetRefs
// (ambientgo.waypoint.Authorization), evaluated per HTTP request with the
// semantics of Envoy's RBAC filter as Istio configures it for waypoints
// (istio/istio pilot/pkg/security/authz: model, matcher, builder):
//
//   - the order is the package's (dry-run never decides; any matching DENY
//     denies; no ALLOW policy applying allows; a matching ALLOW allows; else
//     deny); AUDIT policies never decide, their matches are reported;
//   - a rule matches when its from (any source), to (any operation) and
//     every when condition hold; a field holds when one of its values
//     matches, a not_ field when none does;
//   - string values use Istio's wildcards: "*" alone (present), "*x"
//     (suffix), "x*" (prefix), else exact; hosts compare case-insensitively
//     (the port is not stripped), methods, paths and headers exactly;
//   - paths are matched without the query, after Envoy's normalize_path
//     (NormalizePath; Istio's default BASE: no slash merging, escaped
//     slashes kept), and may be Istio path templates ({*}, {**});
//   - principals are compared without "spiffe://"; namespaces and service
//     accounts are read from the SPIFFE identity as Istio's regular
//     expressions read them; a client without identity has none;
//   - ports and destination.port are Request.Port (the Service port).

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
	// Header holds the request headers with canonical keys, as net/http
	// gives them (request.headers[...]); a header sent several times is
	// matched as its values joined by ",", as Envoy does.
	Header http.Header
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
	all       []*l7Policy            // all_waypoints targets
	byGateway map[string][]*l7Policy // gateway targets (policies without all_waypoints)
	byService map[string][]*l7Policy // service targets (likewise)
	n         int
}

// InvalidPath is the Reason of a request whose path Envoy's normalization
// rejects (a NUL byte, raw or escaped): such a request is denied; the
// waypoint answers it 400 before evaluating, as Envoy does.
const InvalidPath Reason = 200

// L7Decision is what Evaluate returns.
type L7Decision struct {
	Decision
	// Audit holds the "namespace/name" of the AUDIT policies that matched
	// (dry-run AUDIT policies are not reported, as Envoy's shadow rules of
	// its LOG filter are not).
	Audit []string
}

type l7Policy struct {
	key    string
	action waypoint.Action
	dryRun bool
	// broken policies hold a value or key the evaluator cannot compile:
	// they fail closed (an ALLOW matches nothing; a DENY or AUDIT matches
	// every request).
	broken       bool
	allWaypoints bool
	gateways     []string
	services     []string
	rules        []l7Rule
}

type l7Rule struct {
	from [][]check // OR of ANDs; empty: any
	to   [][]check // likewise
	when []check   // AND
	// http reports whether the rule holds an HTTP-only check (hosts,
	// methods, paths, request headers): EvaluateTCP drops such rules from
	// ALLOW policies.
	http bool
}

// attr is the request attribute a check reads.
type attr uint8

const (
	attrPrincipal attr = iota
	attrNamespace
	attrServiceAccount
	attrTrustDomain
	attrPeerIP
	attrRemoteIP
	attrDestIP
	attrPort
	attrHost
	attrMethod
	attrPath
	attrHeader
)

// httpOnly reports whether an attribute exists only for HTTP requests.
func (a attr) httpOnly() bool { return a >= attrHost }

// check is one field of a source, operation or condition: it holds when one
// of pos matches (or pos is empty) and none of neg does.
type check struct {
	attr     attr
	header   string // attrHeader: the canonical header name, or a pseudo-header
	pos, neg []value
}

// value is one compiled value of a check.
type value struct {
	str    strMatch       // principals, hosts, methods, paths, headers, trust domains
	needle string         // namespaces without wildcard: "/ns/<ns>/"; service accounts: "/ns/<ns>/"
	sa     string         // service accounts: "sa/<sa>"
	re     *regexp.Regexp // namespaces with a wildcard; path templates
	prefix netip.Prefix   // IPs
	port   uint16
}

// CompileL7 compiles the waypoint policies a waypoint holds. Policies whose
// values cannot be compiled match nothing as ALLOW and everything as DENY
// (fail closed). Nil entries are skipped; of two policies with the same
// namespace/name, the later one is kept.
func CompileL7(policies []*waypoint.Authorization) *L7Policies {
	byKey := make(map[string]*l7Policy, len(policies))
	for _, a := range policies {
		if a != nil {
			p := compileL7Policy(a)
			byKey[p.key] = p
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the policy a decision names does not depend on map order
	out := &L7Policies{byGateway: map[string][]*l7Policy{}, byService: map[string][]*l7Policy{}, n: len(keys)}
	for _, k := range keys {
		p := byKey[k]
		if p.allWaypoints {
			out.all = append(out.all, p)
			continue
		}
		for _, g := range p.gateways {
			out.byGateway[g] = append(out.byGateway[g], p)
		}
		for _, s := range p.services {
			out.byService[s] = append(out.byService[s], p)
		}
	}
	return out
}

// L7Key returns the "namespace/name" key of a waypoint policy.
func L7Key(a *waypoint.Authorization) string { return a.GetNamespace() + "/" + a.GetName() }

func compileL7Policy(a *waypoint.Authorization) *l7Policy {
	p := &l7Policy{key: L7Key(a), action: a.GetAction(), dryRun: a.GetDryRun()}
	if _, ok := waypoint.Action_name[int32(p.action)]; !ok {
		p.broken = true // an action of a newer control plane: treat as DENY
		p.action = waypoint.Action_DENY
	}
	for _, t := range a.GetTargets() {
		switch k := t.GetKind().(type) {
		case *waypoint.Target_AllWaypoints:
			p.allWaypoints = p.allWaypoints || k.AllWaypoints
		case *waypoint.Target_Gateway:
			if !slices.Contains(p.gateways, k.Gateway) {
				p.gateways = append(p.gateways, k.Gateway)
			}
		case *waypoint.Target_Service:
			if !slices.Contains(p.services, k.Service) {
				p.services = append(p.services, k.Service)
			}
		}
	}
	c := compiler{ns: a.GetNamespace()}
	for _, r := range a.GetRules() {
		var cr l7Rule
		for _, s := range r.GetFrom() {
			cr.from = append(cr.from, c.source(s))
		}
		for _, o := range r.GetTo() {
			cr.to = append(cr.to, c.operation(o))
		}
		for _, w := range r.GetWhen() {
			cr.when = append(cr.when, c.condition(w))
		}
		for _, cs := range slices.Concat(cr.from, cr.to, [][]check{cr.when}) {
			for _, ch := range cs {
				cr.http = cr.http || ch.attr.httpOnly()
			}
		}
		p.rules = append(p.rules, cr)
	}
	p.broken = p.broken || c.broken
	return p
}

// compiler compiles the values of one policy, noting any it cannot.
type compiler struct {
	ns     string // the policy's namespace: service accounts without one
	broken bool
}

// add appends a check of values and notValues to cs when either is set.
func (c *compiler) add(cs []check, a attr, header string, values, notValues []string) []check {
	if len(values) == 0 && len(notValues) == 0 {
		return cs
	}
	ch := check{attr: a, header: header}
	for _, v := range values {
		ch.pos = append(ch.pos, c.value(a, v))
	}
	for _, v := range notValues {
		ch.neg = append(ch.neg, c.value(a, v))
	}
	return append(cs, ch)
}

func (c *compiler) source(s *waypoint.Source) []check {
	var cs []check
	cs = c.add(cs, attrPrincipal, "", s.GetPrincipals(), s.GetNotPrincipals())
	cs = c.add(cs, attrNamespace, "", s.GetNamespaces(), s.GetNotNamespaces())
	cs = c.add(cs, attrServiceAccount, "", s.GetServiceAccounts(), s.GetNotServiceAccounts())
	cs = c.add(cs, attrPeerIP, "", s.GetIpBlocks(), s.GetNotIpBlocks())
	cs = c.add(cs, attrRemoteIP, "", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks())
	return cs
}

func (c *compiler) operation(o *waypoint.Operation) []check {
	var cs []check
	cs = c.add(cs, attrHost, "", o.GetHosts(), o.GetNotHosts())
	cs = c.add(cs, attrPort, "", o.GetPorts(), o.GetNotPorts())
	cs = c.add(cs, attrMethod, "", o.GetMethods(), o.GetNotMethods())
	cs = c.add(cs, attrPath, "", o.GetPaths(), o.GetNotPaths())
	return cs
}

// Condition keys (Istio's names).
const (
	keyRequestHeaders = "request.headers"
	keySourceIP       = "source.ip"
	keyRemoteIP       = "remote.ip"
	keySourceNS       = "source.namespace"
	keySourcePrinc    = "source.principal"
	keySourceSA       = "source.serviceAccount"
	keySourceTD       = "source.trustDomain"
	keyDestIP         = "destination.ip"
	keyDestPort       = "destination.port"
)

// L7ConditionKeys are the `when` keys Evaluate understands; request.headers
// takes a header name in brackets. A policy with any other key fails
// closed.
var L7ConditionKeys = []string{keyRequestHeaders + "[...]", keySourceIP, keyRemoteIP, keySourceNS, keySourcePrinc,
	keySourceSA, keySourceTD, keyDestIP, keyDestPort}

func (c *compiler) condition(w *waypoint.Condition) check {
	key, pos, neg := w.GetKey(), w.GetValues(), w.GetNotValues()
	var a attr
	header := ""
	switch key {
	case keySourceIP:
		a = attrPeerIP
	case keyRemoteIP:
		a = attrRemoteIP
	case keySourceNS:
		a = attrNamespace
	case keySourcePrinc:
		a = attrPrincipal
	case keySourceSA:
		a = attrServiceAccount
	case keySourceTD:
		a = attrTrustDomain
	case keyDestIP:
		a = attrDestIP
	case keyDestPort:
		a = attrPort
	default:
		name, ok := HeaderConditionName(key)
		if !ok {
			c.broken = true
			return check{attr: attrPrincipal} // never evaluated: the policy is broken
		}
		a, header = attrHeader, name
	}
	cs := c.add(nil, a, header, pos, neg)
	if len(cs) == 0 {
		return check{attr: a, header: header} // no values: holds
	}
	return cs[0]
}

// HeaderConditionName returns the header a request.headers[<name>] key
// names: canonical (textproto) for a regular header, lowercase for a
// pseudo-header (":authority", ":method", ":path"; "host" is ":authority").
func HeaderConditionName(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, keyRequestHeaders+"[")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, "]")
	if !ok || name == "" || strings.ContainsAny(name, "[]") {
		return "", false
	}
	if strings.HasPrefix(name, ":") {
		return strings.ToLower(name), true
	}
	if strings.EqualFold(name, "host") {
		return ":authority", true
	}
	return textproto.CanonicalMIMEHeaderKey(name), true
}

// value compiles one value of attribute a.
func (c *compiler) value(a attr, v string) value {
	switch a {
	case attrPrincipal, attrMethod, attrHeader, attrTrustDomain, attrHost:
		return value{str: istioString(v)}
	case attrPath:
		if strings.Contains(v, "{*}") || strings.Contains(v, "{**}") {
			re, err := pathTemplate(v)
			if err != nil {
				c.broken = true
				return value{str: strMatch{kind: never}}
			}
			return value{re: re}
		}
		return value{str: istioString(v)}
	case attrNamespace:
		if !strings.Contains(v, "*") {
			return value{needle: "/ns/" + v + "/"}
		}
		parts := strings.Split(v, "*")
		for i := range parts {
			parts[i] = regexp.QuoteMeta(parts[i])
		}
		re, err := regexp.Compile(`^.*/ns/` + strings.Join(parts, ".*") + `/.*$`)
		if err != nil {
			c.broken = true
			return value{str: strMatch{kind: never}}
		}
		return value{re: re}
	case attrServiceAccount:
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = c.ns, v
		}
		if ns == "" || sa == "" || strings.Contains(sa, "/") {
			c.broken = true
		}
		return value{needle: "/ns/" + ns + "/", sa: "sa/" + sa}
	case attrPeerIP, attrRemoteIP, attrDestIP:
		p, ok := parseIPBlock(v)
		if !ok {
			c.broken = true
		}
		return value{prefix: p}
	case attrPort:
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			c.broken = true
		}
		return value{port: uint16(p)}
	}
	c.broken = true
	return value{str: strMatch{kind: never}}
}

// istioString reads Istio's wildcard forms: "*" (present), "*x" (suffix),
// "x*" (prefix), else exact.
func istioString(v string) strMatch {
	switch {
	case v == "*":
		return strMatch{kind: presence}
	case strings.HasPrefix(v, "*"):
		return strMatch{suffix, v[1:]}
	case strings.HasSuffix(v, "*"):
		return strMatch{prefix, v[:len(v)-1]}
	}
	return strMatch{exact, v}
}

// parseIPBlock parses an IP (a /32 or /128) or a CIDR, masked; IPv4-mapped
// IPv6 addresses are unmapped.
func parseIPBlock(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}

// pchar is the character class of one path segment in Envoy's URI
// templates (RFC 3986 pchar without '*' and '=').
const pchar = `a-zA-Z0-9\-._~%!$&'()+,;:@`

// pathTemplate compiles an Istio path template: "{*}" matches one path
// segment, "{**}" zero or more (it must be the last operator), as Envoy's
// uri_template matcher does.
func pathTemplate(t string) (*regexp.Regexp, error) {
	if !strings.HasPrefix(t, "/") {
		return nil, errBadTemplate
	}
	var b strings.Builder
	b.WriteString("^/")
	seenAny := false
	for i, seg := range strings.Split(t[1:], "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		switch {
		case seg == "{*}" && !seenAny:
			b.WriteString("[" + pchar + "]+")
		case seg == "{**}" && !seenAny:
			seenAny = true
			b.WriteString("[" + pchar + "/]*")
		case strings.ContainsAny(seg, "{}*"):
			return nil, errBadTemplate
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

var errBadTemplate = errors.New("invalid path template")

// Len is the number of compiled policies.
func (p *L7Policies) Len() int {
	if p == nil {
		return 0
	}
	return p.n
}

// l7Attrs are a request's attributes as checks compare them.
type l7Attrs struct {
	r         *Request
	id        string // Identity when it is a SPIFFE ID, else ""
	principal string // id without "spiffe://"
	path      string // normalized, without the query; "" when the request has none
	peer      netip.Addr
	remote    netip.Addr
	dst       netip.Addr
	tcp       bool // EvaluateTCP: HTTP-only checks are not evaluated
}

// Evaluate decides one request with Istio's order (see the package
// comment): only the policies whose targets match r (its Service, its
// Gateway, or every waypoint) apply. A nil *L7Policies allows everything.
// It allocates only for a path that normalization changes, a header sent
// more than once that a policy reads, and the Audit list.
func (p *L7Policies) Evaluate(r *Request) L7Decision {
	if p == nil || p.n == 0 {
		return L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}
	}
	a := newL7Attrs(r, false)
	if r.Path != "" {
		np, ok := normalizePath(r.Path)
		if !ok {
			return L7Decision{Decision: Decision{Verdict: Verdict{Allow: false, Reason: InvalidPath}}}
		}
		a.path = stripQuery(np)
	}
	return p.evaluate(&a)
}

// EvaluateTCP decides a non-HTTP stream at a waypoint with Istio's rules
// for L7 policies on TCP traffic: in ALLOW policies the rules that hold
// HTTP-only fields (methods, paths, hosts, request headers) are dropped; in
// DENY (and AUDIT) policies they are enforced without those fields. Only
// Peer, Remote, Identity, DestIP, Port, Service and Gateway of r are read.
func (p *L7Policies) EvaluateTCP(r *Request) L7Decision {
	if p == nil || p.n == 0 {
		return L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}
	}
	a := newL7Attrs(r, true)
	return p.evaluate(&a)
}

func newL7Attrs(r *Request, tcp bool) l7Attrs {
	a := l7Attrs{r: r, peer: r.Peer.Unmap(), remote: r.Remote.Unmap(), dst: r.DestIP.Unmap(), tcp: tcp}
	if p, ok := strings.CutPrefix(r.Identity, "spiffe://"); ok && p != "" {
		a.id, a.principal = r.Identity, p
	}
	return a
}

func (p *L7Policies) evaluate(a *l7Attrs) L7Decision {
	var e l7Eval
	for _, pol := range p.all {
		e.add(pol, a)
	}
	if a.r.Gateway != "" {
		for _, pol := range p.byGateway[a.r.Gateway] {
			e.add(pol, a)
		}
	}
	if a.r.Service != "" {
		for _, pol := range p.byService[a.r.Service] {
			if a.r.Gateway != "" && slices.Contains(pol.gateways, a.r.Gateway) {
				continue // applied above
			}
			e.add(pol, a)
		}
	}
	d := L7Decision{Decision: Decision{Verdict: e.real.verdict(), DryRun: e.dryRun}, Audit: e.audit}
	if e.dryRun {
		d.Shadow = e.shadow.verdict()
	}
	return d
}

// l7Eval tallies the enforced policies (real), all ALLOW and DENY policies
// including dry-run ones (shadow), and the AUDIT matches.
type l7Eval struct {
	eval
	audit []string
}

func (e *l7Eval) add(pol *l7Policy, a *l7Attrs) {
	if pol.action == waypoint.Action_AUDIT {
		if !pol.dryRun && pol.matches(a) {
			e.audit = append(e.audit, pol.key)
		}
		return
	}
	deny := pol.action == waypoint.Action_DENY
	if pol.dryRun {
		e.dryRun = true
	}
	e.record(deny, pol.dryRun, e.needs(deny, pol.dryRun) && pol.matches(a), pol.key)
}

func (pol *l7Policy) matches(a *l7Attrs) bool {
	allow := pol.action == waypoint.Action_ALLOW
	if pol.broken {
		return !allow
	}
	for i := range pol.rules {
		r := &pol.rules[i]
		if a.tcp && allow && r.http {
			continue // Istio drops ALLOW rules with HTTP fields on TCP
		}
		if r.matches(a) {
			return true
		}
	}
	return false
}

func (r *l7Rule) matches(a *l7Attrs) bool {
	return anyAll(r.from, a) && anyAll(r.to, a) && all(r.when, a)
}

// anyAll reports whether one of the AND-groups of css holds (or css is
// empty).
func anyAll(css [][]check, a *l7Attrs) bool {
	if len(css) == 0 {
		return true
	}
	for _, cs := range css {
		if all(cs, a) {
			return true
		}
	}
	return false
}

func all(cs []check, a *l7Attrs) bool {
	for i := range cs {
		if !cs[i].holds(a) {
			return false
		}
	}
	return true
}

func (c *check) holds(a *l7Attrs) bool {
	if a.tcp && c.attr.httpOnly() {
		return true // enforced without HTTP fields (DENY, AUDIT)
	}
	if len(c.pos) > 0 && !c.any(c.pos, a) {
		return false
	}
	return !c.any(c.neg, a)
}

func (c *check) any(vs []value, a *l7Attrs) bool {
	if len(vs) == 0 {
		return false
	}
	switch c.attr {
	case attrPeerIP:
		return anyPrefix(vs, a.peer)
	case attrRemoteIP:
		return anyPrefix(vs, a.remote)
	case attrDestIP:
		return anyPrefix(vs, a.dst)
	case attrPort:
		for i := range vs {
			if vs[i].port == a.r.Port {
				return true
			}
		}
		return false
	case attrPrincipal:
		if a.principal == "" {
			return false
		}
		for i := range vs {
			if vs[i].str.matches(a.principal) {
				return true
			}
		}
		return false
	case attrNamespace:
		if a.id == "" {
			return false
		}
		for i := range vs {
			if v := &vs[i]; v.re != nil && v.re.MatchString(a.id) || v.re == nil && v.needle != "" && strings.Contains(a.id, v.needle) {
				return true
			}
		}
		return false
	case attrServiceAccount:
		if a.id == "" {
			return false
		}
		for i := range vs {
			if serviceAccountMatches(a.id, vs[i].needle, vs[i].sa) {
				return true
			}
		}
		return false
	case attrTrustDomain:
		if a.id == "" {
			return false
		}
		for i := range vs {
			if trustDomainMatches(a.principal, vs[i].str) {
				return true
			}
		}
		return false
	case attrHost:
		for i := range vs {
			if foldMatches(vs[i].str, a.r.Host) {
				return true
			}
		}
		return false
	case attrMethod:
		return anyStr(vs, a.r.Method)
	case attrPath:
		if a.path == "" {
			return false // no :path (CONNECT): Envoy's path matcher does not match
		}
		for i := range vs {
			if v := &vs[i]; v.re != nil && v.re.MatchString(a.path) || v.re == nil && v.str.matches(a.path) {
				return true
			}
		}
		return false
	case attrHeader:
		val, ok := a.header(c.header)
		if !ok {
			return false // an absent header matches no value (not even "*")
		}
		for i := range vs {
			if vs[i].str.kind == presence || vs[i].str.matches(val) {
				return true
			}
		}
		return false
	}
	return false
}

func anyPrefix(vs []value, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for i := range vs {
		if vs[i].prefix.Contains(ip) {
			return true
		}
	}
	return false
}

func anyStr(vs []value, s string) bool {
	for i := range vs {
		if vs[i].str.matches(s) {
			return true
		}
	}
	return false
}

// header returns the value of a request header as Envoy's header matcher
// sees it (several values joined by ","), and whether it is present.
func (a *l7Attrs) header(name string) (string, bool) {
	switch name {
	case ":authority":
		return a.r.Host, a.r.Host != ""
	case ":method":
		return a.r.Method, a.r.Method != ""
	case ":path":
		if a.r.Path == "" {
			return "", false
		}
		np, _ := normalizePath(a.r.Path)
		return np, true
	}
	if strings.HasPrefix(name, ":") {
		return "", false
	}
	vs := a.r.Header[name]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// foldMatches is strMatch.matches with ASCII case folding (Envoy's
// ignore_case), as Istio matches hosts.
func foldMatches(m strMatch, s string) bool {
	switch m.kind {
	case exact:
		return strings.EqualFold(s, m.value)
	case prefix:
		return len(s) >= len(m.value) && strings.EqualFold(s[:len(m.value)], m.value)
	case suffix:
		return len(s) >= len(m.value) && strings.EqualFold(s[len(s)-len(m.value):], m.value)
	case presence:
		return s != ""
	}
	return false
}

// serviceAccountMatches reports whether the SPIFFE ID id matches Istio's
// regular expression for a service account,
// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`, with needle "/ns/<ns>/" and
// sa "sa/<sa>".
func serviceAccountMatches(id, needle, sa string) bool {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok || needle == "" {
		return false
	}
	for off := 1; off <= len(rest); {
		j := strings.Index(rest[off:], needle)
		if j < 0 {
			return false
		}
		at := off + j
		if saTail(rest[at+len(needle):], sa) {
			return true
		}
		off = at + 1
	}
	return false
}

// saTail reports whether t matches `(.+/|)<sa>(/.+)?`.
func saTail(t, sa string) bool {
	for off := 0; off <= len(t); {
		j := strings.Index(t[off:], sa)
		if j < 0 {
			return false
		}
		at := off + j
		if at == 0 || at >= 2 && t[at-1] == '/' {
			if tail := t[at+len(sa):]; tail == "" || len(tail) >= 2 && tail[0] == '/' {
				return true
			}
		}
		off = at + 1
	}
	return false
}

// trustDomainMatches matches the trust domain of principal (a SPIFFE ID
// without "spiffe://") as Istio's source.trustDomain does: "*" any, else
// the trust domain (followed by a path) exactly, by prefix or by suffix.
func trustDomainMatches(principal string, m strMatch) bool {
	if m.kind == presence {
		return true
	}
	td, _, ok := strings.Cut(principal, "/")
	if !ok {
		return false
	}
	return m.matches(td)
}
