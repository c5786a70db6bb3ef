package model

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Authorization translation: AuthorizationPolicy and PeerAuthentication
// (security.istio.io/v1) into the istio.security.Authorization resources
// ztunnel enforces, as Istio's ambient control plane translates them.

// Kinds of policy objects, as in PolicyStatus.Kind.
const (
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPeerAuthentication  = "PeerAuthentication"
)

// AnnotationDryRun marks an AuthorizationPolicy as dry-run: evaluated and
// logged, never enforced.
const AnnotationDryRun = "istio.io/dry-run"

// Names of the policies derived from PeerAuthentications, as Istio names
// them (the '_' cannot appear in a Kubernetes name, so they never collide).
const (
	StaticStrictPolicyName      = "istio_converted_static_strict"
	convertedPeerAuthnPrefix    = "istio_converted_peer_authentication_"
	ConditionZtunnelAccepted    = "ZtunnelAccepted"
	ReasonAccepted              = "Accepted"
	ReasonUnsupportedValue      = "UnsupportedValue"
	ReasonInvalid               = "Invalid"
	messageAttached             = "attached to ztunnel"
	httpRuleFmt                 = "ztunnel does not support HTTP attributes (found: %s). In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s"
	httpDenyRuleBoilerplate     = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested."
	httpAllowRuleBoilerplate    = "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested."
	auditMessage                = "AUDIT policies are logged by ztunnel and never decide (sent as a dry-run policy)"
	customMessage               = "ztunnel does not support the CUSTOM action"
	peerAuthnAcceptedMessage    = "applied by ztunnel to plaintext traffic"
	peerAuthnIgnoredRootMessage = "a PeerAuthentication with a selector in the root namespace is ignored"
)

// PolicyStatus is the status the control plane reports for one policy
// object: local mode logs it and returns it from Server.Errors; the
// Kubernetes status writer writes it onto the object.
type PolicyStatus struct {
	Kind       string // KindAuthorizationPolicy, KindPeerAuthentication or KindPod
	Namespace  string
	Name       string
	Generation int64 // the object's metadata.generation the conditions describe
	Conditions []PolicyCondition
}

// Key is "<kind>/<namespace>/<name>", the key of Output.PolicyStatuses.
func (s *PolicyStatus) Key() string { return s.Kind + "/" + s.Namespace + "/" + s.Name }

// PolicyCondition is one condition of a policy's status, as Istio writes
// them (type ZtunnelAccepted).
type PolicyCondition struct {
	Type    string // ConditionZtunnelAccepted
	Status  string // "True" or "False"
	Reason  string // ReasonAccepted, ReasonUnsupportedValue or ReasonInvalid
	Message string
}

// Rejected reports whether the condition says the policy is not applied.
func (c PolicyCondition) Rejected() bool { return c.Status == "False" }

// ValidateAuthorizationPolicy checks what Istio's validation webhook checks
// and ztunnel relies on: addresses are IPs or CIDRs, ports are numbers,
// sources, operations and conditions are not empty, selector and targetRefs
// are not both set, and the dry-run annotation is a boolean. An unknown
// action cannot be represented and is rejected when decoding.
func ValidateAuthorizationPolicy(p *securityv1.AuthorizationPolicy) error {
	var errs []error
	spec := &p.Spec
	if spec.GetSelector() != nil && (spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0) {
		errs = append(errs, errors.New("only one of selector or targetRefs can be set"))
	}
	if v, ok := p.Annotations[AnnotationDryRun]; ok {
		if _, err := strconv.ParseBool(v); err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %q is not a boolean", AnnotationDryRun, v))
		}
	}
	if _, ok := securityapi.AuthorizationPolicy_Action_name[int32(spec.GetAction())]; !ok {
		errs = append(errs, fmt.Errorf("unknown action %d", spec.GetAction()))
	}
	for i, r := range spec.GetRules() {
		if r == nil {
			errs = append(errs, fmt.Errorf("rules[%d]: empty", i))
			continue
		}
		for j, f := range r.GetFrom() {
			at := fmt.Sprintf("rules[%d].from[%d].source", i, j)
			s := f.GetSource()
			if s == nil || sourceEmpty(s) {
				errs = append(errs, fmt.Errorf("%s: must not be empty", at))
				continue
			}
			errs = append(errs, validateIPs(at+".ipBlocks", s.GetIpBlocks()), validateIPs(at+".notIpBlocks", s.GetNotIpBlocks()),
				validateIPs(at+".remoteIpBlocks", s.GetRemoteIpBlocks()), validateIPs(at+".notRemoteIpBlocks", s.GetNotRemoteIpBlocks()))
		}
		for j, t := range r.GetTo() {
			at := fmt.Sprintf("rules[%d].to[%d].operation", i, j)
			op := t.GetOperation()
			if op == nil || operationEmpty(op) {
				errs = append(errs, fmt.Errorf("%s: must not be empty", at))
				continue
			}
			errs = append(errs, validatePorts(at+".ports", op.GetPorts()), validatePorts(at+".notPorts", op.GetNotPorts()))
		}
		for j, w := range r.GetWhen() {
			at := fmt.Sprintf("rules[%d].when[%d]", i, j)
			if w.GetKey() == "" {
				errs = append(errs, fmt.Errorf("%s: key must not be empty", at))
				continue
			}
			if len(w.GetValues()) == 0 && len(w.GetNotValues()) == 0 {
				errs = append(errs, fmt.Errorf("%s (%s): at least one of values or notValues must be set", at, w.GetKey()))
			}
			switch w.GetKey() {
			case "source.ip", "destination.ip", "remote.ip":
				errs = append(errs, validateIPs(at+".values", w.GetValues()), validateIPs(at+".notValues", w.GetNotValues()))
			case "destination.port":
				errs = append(errs, validatePorts(at+".values", w.GetValues()), validatePorts(at+".notValues", w.GetNotValues()))
			}
		}
	}
	return errors.Join(errs...)
}

func sourceEmpty(s *securityapi.Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+
		len(s.Namespaces)+len(s.NotNamespaces)+len(s.ServiceAccounts)+len(s.NotServiceAccounts)+
		len(s.IpBlocks)+len(s.NotIpBlocks)+len(s.RemoteIpBlocks)+len(s.NotRemoteIpBlocks)+
		len(s.TrustDomains)+len(s.NotTrustDomains) == 0
}

func operationEmpty(o *securityapi.Operation) bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Ports)+len(o.NotPorts)+len(o.Methods)+len(o.NotMethods)+
		len(o.Paths)+len(o.NotPaths) == 0
}

func validateIPs(at string, vs []string) error {
	var errs []error
	for _, v := range vs {
		if _, ok := parseCIDR(v); !ok {
			errs = append(errs, fmt.Errorf("%s: %q is not an IP address or CIDR", at, v))
		}
	}
	return errors.Join(errs...)
}

func validatePorts(at string, vs []string) error {
	var errs []error
	for _, v := range vs {
		if _, err := strconv.ParseUint(v, 10, 16); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a port number", at, v))
		}
	}
	return errors.Join(errs...)
}

// parseCIDR parses an IP ("10.0.0.1", a /32 or /128) or a CIDR.
func parseCIDR(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p, err == nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

// ValidatePeerAuthentication checks that port-level modes come with a
// selector and name valid ports.
func ValidatePeerAuthentication(p *securityv1.PeerAuthentication) error {
	var errs []error
	if len(p.Spec.GetPortLevelMtls()) > 0 && len(p.Spec.GetSelector().GetMatchLabels()) == 0 {
		errs = append(errs, errors.New("portLevelMtls requires a workload selector"))
	}
	for _, port := range slices.Sorted(maps.Keys(p.Spec.GetPortLevelMtls())) { // sorted: the message is part of a deterministic status
		if port == 0 || port > 65535 {
			errs = append(errs, fmt.Errorf("portLevelMtls: port %d is out of range", port))
		}
	}
	return errors.Join(errs...)
}

// ConvertAuthorizationPolicy translates one AuthorizationPolicy for ztunnel.
// It returns a nil Authorization when ztunnel does not enforce the policy:
// with targetRefs (left to waypoints, whose translation in l7authz.go
// gives them a WaypointAccepted condition; no condition here), CUSTOM, or
// invalid (with a False condition). rootNamespace is the mesh's root
// namespace, where selector-less policies are GLOBAL.
//
// Translation follows Istio: each rule becomes a rule whose clauses are its
// `to` operations (one match each, OR'd), its `from` sources (likewise) and
// one clause per `when` condition. AUDIT becomes a dry-run DENY (logged on
// every connection it matches, never enforced); the annotation
// istio.io/dry-run sets dry_run. HTTP-only attributes are dropped: in an
// ALLOW policy a rule holding any is dropped whole; in a DENY policy only
// the HTTP parts go (a from/to clause with an entry left empty is dropped
// whole, since that entry would have matched anything), so the policy
// denies more than requested; the condition says so.
func ConvertAuthorizationPolicy(p *securityv1.AuthorizationPolicy, rootNamespace string) (*security.Authorization, *PolicyCondition) {
	if rootNamespace == "" {
		rootNamespace = DefaultRootNamespace
	}
	spec := &p.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		if spec.GetSelector() == nil {
			return nil, nil
		}
	}
	if err := ValidateAuthorizationPolicy(p); err != nil {
		return nil, &PolicyCondition{Type: ConditionZtunnelAccepted, Status: "False", Reason: ReasonInvalid, Message: err.Error()}
	}
	out := &security.Authorization{Name: p.Name, Namespace: p.Namespace, Scope: security.Scope_WORKLOAD_SELECTOR}
	if spec.GetSelector() == nil {
		out.Scope = security.Scope_NAMESPACE
		if p.Namespace == rootNamespace {
			out.Scope = security.Scope_GLOBAL
		}
	}
	if v, ok := p.Annotations[AnnotationDryRun]; ok {
		out.DryRun, _ = strconv.ParseBool(v)
	}
	boilerplate := httpAllowRuleBoilerplate
	switch spec.GetAction() {
	case securityapi.AuthorizationPolicy_ALLOW:
		out.Action = security.Action_ALLOW
	case securityapi.AuthorizationPolicy_DENY:
		out.Action = security.Action_DENY
		boilerplate = httpDenyRuleBoilerplate
	case securityapi.AuthorizationPolicy_AUDIT:
		out.Action, out.DryRun = security.Action_DENY, true
	default:
		return nil, &PolicyCondition{Type: ConditionZtunnelAccepted, Status: "False", Reason: ReasonUnsupportedValue, Message: customMessage}
	}
	l7 := map[string]bool{}
	for _, r := range spec.GetRules() {
		if rule := convertRule(r, p.Namespace, out.Action == security.Action_ALLOW, l7); rule != nil {
			out.Rules = append(out.Rules, rule)
		}
	}
	cond := &PolicyCondition{Type: ConditionZtunnelAccepted, Status: "True", Reason: ReasonAccepted, Message: messageAttached}
	switch {
	case len(l7) > 0:
		cond.Reason = ReasonUnsupportedValue
		cond.Message = fmt.Sprintf(httpRuleFmt, strings.Join(slices.Sorted(maps.Keys(l7)), ", "), boilerplate)
	case spec.GetAction() == securityapi.AuthorizationPolicy_AUDIT:
		cond.Message = auditMessage
	}
	return out, cond
}

// l4WhenKeys are the `when` keys ztunnel can check.
var l4WhenKeys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// convertRule translates one rule, recording the HTTP attributes it holds in
// l7; it returns nil when the rule is dropped (allow and HTTP attributes).
func convertRule(r *securityapi.Rule, ns string, allow bool, l7 map[string]bool) *security.Rule {
	found := false
	note := func(name string, n int) {
		if n > 0 {
			l7[name], found = true, true
		}
	}
	out := &security.Rule{}
	var to []*security.Match
	toOpen := false
	for _, t := range r.GetTo() {
		op := t.GetOperation()
		note("hosts", len(op.GetHosts()))
		note("notHosts", len(op.GetNotHosts()))
		note("methods", len(op.GetMethods()))
		note("notMethods", len(op.GetNotMethods()))
		note("paths", len(op.GetPaths()))
		note("notPaths", len(op.GetNotPaths()))
		m := &security.Match{DestinationPorts: toPorts(op.GetPorts()), NotDestinationPorts: toPorts(op.GetNotPorts())}
		if matchEmpty(m) {
			toOpen = true
		}
		to = append(to, m)
	}
	if len(to) > 0 && !toOpen {
		out.Clauses = append(out.Clauses, &security.Clause{Matches: to})
	}
	var from []*security.Match
	fromOpen := false
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		note("requestPrincipals", len(s.GetRequestPrincipals()))
		note("notRequestPrincipals", len(s.GetNotRequestPrincipals()))
		note("remoteIpBlocks", len(s.GetRemoteIpBlocks()))
		note("notRemoteIpBlocks", len(s.GetNotRemoteIpBlocks()))
		note("trustDomains", len(s.GetTrustDomains()))
		note("notTrustDomains", len(s.GetNotTrustDomains()))
		m := &security.Match{
			Namespaces:         toStringMatches(s.GetNamespaces()),
			NotNamespaces:      toStringMatches(s.GetNotNamespaces()),
			ServiceAccounts:    toServiceAccounts(s.GetServiceAccounts(), ns),
			NotServiceAccounts: toServiceAccounts(s.GetNotServiceAccounts(), ns),
			Principals:         toStringMatches(s.GetPrincipals()),
			NotPrincipals:      toStringMatches(s.GetNotPrincipals()),
			SourceIps:          toAddresses(s.GetIpBlocks()),
			NotSourceIps:       toAddresses(s.GetNotIpBlocks()),
		}
		if matchEmpty(m) {
			fromOpen = true
		}
		from = append(from, m)
	}
	if len(from) > 0 && !fromOpen {
		out.Clauses = append(out.Clauses, &security.Clause{Matches: from})
	}
	for _, w := range r.GetWhen() {
		k := w.GetKey()
		if !l4WhenKeys[k] {
			note(k, 1)
			continue
		}
		m := &security.Match{}
		pos, neg := w.GetValues(), w.GetNotValues()
		switch k {
		case "source.ip":
			m.SourceIps, m.NotSourceIps = toAddresses(pos), toAddresses(neg)
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = toStringMatches(pos), toStringMatches(neg)
		case "source.principal":
			m.Principals, m.NotPrincipals = toStringMatches(pos), toStringMatches(neg)
		case "destination.ip":
			m.DestinationIps, m.NotDestinationIps = toAddresses(pos), toAddresses(neg)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = toPorts(pos), toPorts(neg)
		}
		out.Clauses = append(out.Clauses, &security.Clause{Matches: []*security.Match{m}})
	}
	if allow && found {
		return nil
	}
	return out
}

func matchEmpty(m *security.Match) bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+
		len(m.Principals)+len(m.NotPrincipals)+len(m.SourceIps)+len(m.NotSourceIps)+
		len(m.DestinationIps)+len(m.NotDestinationIps)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// toStringMatches applies Istio's wildcards: "*" is presence, "*x" a suffix,
// "x*" a prefix, anything else exact.
func toStringMatches(vs []string) []*security.StringMatch {
	var out []*security.StringMatch
	for _, v := range vs {
		var m *security.StringMatch
		switch {
		case v == "*":
			m = &security.StringMatch{MatchType: &security.StringMatch_Presence{}}
		case strings.HasPrefix(v, "*"):
			m = &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}}
		case strings.HasSuffix(v, "*"):
			m = &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}}
		default:
			m = &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
		}
		out = append(out, m)
	}
	return out
}

// toServiceAccounts reads "ns/sa", or "sa" in the policy's namespace.
func toServiceAccounts(vs []string, ns string) []*security.ServiceAccountMatch {
	var out []*security.ServiceAccountMatch
	for _, v := range vs {
		if n, sa, ok := strings.Cut(v, "/"); ok {
			out = append(out, &security.ServiceAccountMatch{Namespace: n, ServiceAccount: sa})
		} else {
			out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: v})
		}
	}
	return out
}

func toPorts(vs []string) []uint32 {
	var out []uint32
	for _, v := range vs {
		if p, err := strconv.ParseUint(v, 10, 16); err == nil {
			out = append(out, uint32(p))
		}
	}
	return out
}

func toAddresses(vs []string) []*security.Address {
	var out []*security.Address
	for _, v := range vs {
		if p, ok := parseCIDR(v); ok {
			out = append(out, &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
		}
	}
	return out
}

// staticStrictPolicy denies connections without a peer identity
// (plaintext) to the workloads that name it: Istio's translation of an
// effective STRICT PeerAuthentication.
func staticStrictPolicy(rootNamespace string) *security.Authorization {
	return &security.Authorization{
		Name:      StaticStrictPolicyName,
		Namespace: rootNamespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules:     []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{notPrincipalsPresence(0)}}}}},
	}
}

func notPrincipalsPresence(port uint32) *security.Match {
	m := &security.Match{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}}}
	if port != 0 {
		m.DestinationPorts = []uint32{port}
	}
	return m
}

func mtlsMode(m *securityapi.PeerAuthentication_MutualTLS) securityapi.PeerAuthentication_MutualTLS_Mode {
	return m.GetMode()
}

func strictMode(m *securityapi.PeerAuthentication_MutualTLS) bool {
	return mtlsMode(m) == securityapi.PeerAuthentication_MutualTLS_STRICT
}

func unsetMode(m *securityapi.PeerAuthentication_MutualTLS) bool {
	return mtlsMode(m) == securityapi.PeerAuthentication_MutualTLS_UNSET
}

// notStrictMode is PERMISSIVE or DISABLE (ztunnel treats both as
// permissive: plaintext is accepted).
func notStrictMode(m *securityapi.PeerAuthentication_MutualTLS) bool {
	mode := mtlsMode(m)
	return mode == securityapi.PeerAuthentication_MutualTLS_PERMISSIVE || mode == securityapi.PeerAuthentication_MutualTLS_DISABLE
}

// peerAuthns indexes PeerAuthentications for per-workload resolution.
type peerAuthns struct {
	root      string
	mesh      *securityv1.PeerAuthentication              // oldest selector-less in the root namespace
	namespace map[string]*securityv1.PeerAuthentication   // oldest selector-less per namespace
	workload  map[string][]*securityv1.PeerAuthentication // with a selector, per namespace, oldest first
	any       bool
}

// oldestFirst orders policies as Istio picks among conflicting ones: the
// oldest wins, then (local mode has no creation times) the name.
func oldestFirst(a, b *securityv1.PeerAuthentication) int {
	if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func indexPeerAuthns(pas []*securityv1.PeerAuthentication, root string) *peerAuthns {
	ix := &peerAuthns{root: root, namespace: map[string]*securityv1.PeerAuthentication{}, workload: map[string][]*securityv1.PeerAuthentication{}}
	sorted := slices.Clone(pas)
	sorted = slices.DeleteFunc(sorted, func(p *securityv1.PeerAuthentication) bool { return p == nil || ValidatePeerAuthentication(p) != nil })
	slices.SortFunc(sorted, oldestFirst)
	for _, p := range sorted {
		ix.any = true
		if len(p.Spec.GetSelector().GetMatchLabels()) == 0 {
			if p.Namespace == root {
				if ix.mesh == nil {
					ix.mesh = p
				}
			} else if ix.namespace[p.Namespace] == nil {
				ix.namespace[p.Namespace] = p
			}
			continue
		}
		if p.Namespace != root {
			ix.workload[p.Namespace] = append(ix.workload[p.Namespace], p)
		}
	}
	return ix
}

// workloadPolicy is the oldest selector PeerAuthentication of ns selecting l.
func (ix *peerAuthns) workloadPolicy(ns string, l map[string]string) *securityv1.PeerAuthentication {
	for _, p := range ix.workload[ns] {
		if selects(p.Spec.GetSelector().GetMatchLabels(), l) {
			return p
		}
	}
	return nil
}

// keysFor returns the derived policies a workload in ns with labels l must
// name: the static STRICT policy when its effective mode is STRICT, and its
// workload policy's converted form when that has port-level exceptions.
func (ix *peerAuthns) keysFor(ns string, l map[string]string) []string {
	strict := ix.mesh != nil && strictMode(ix.mesh.Spec.GetMtls())
	if nsp := ix.namespace[ns]; nsp != nil && !unsetMode(nsp.Spec.GetMtls()) {
		strict = strictMode(nsp.Spec.GetMtls())
	}
	wp := ix.workloadPolicy(ns, l)
	portKey := ""
	if wp != nil {
		mode := wp.Spec.GetMtls()
		switch {
		case strictMode(mode):
			strict = true
		case notStrictMode(mode):
			strict = false
		}
		if len(wp.Spec.GetPortLevelMtls()) > 0 {
			if ix.convert(wp) != nil {
				portKey = wp.Namespace + "/" + convertedPeerAuthnPrefix + wp.Name
				// The converted policy carries the workload's STRICT
				// default itself; the static one would override its
				// port exceptions (any matching DENY denies).
				strict = false
			}
		}
	}
	var keys []string
	if strict {
		keys = append(keys, ix.root+"/"+StaticStrictPolicyName)
	}
	if portKey != "" {
		keys = append(keys, portKey)
	}
	return keys
}

// convert translates a selector PeerAuthentication with port-level modes
// into a DENY policy for plaintext, merged with the inherited mode; nil
// when the ports change nothing (the static STRICT policy, or none, then
// applies).
func (ix *peerAuthns) convert(p *securityv1.PeerAuthentication) *security.Authorization {
	if p.Namespace == ix.root || len(p.Spec.GetSelector().GetMatchLabels()) == 0 || len(p.Spec.GetPortLevelMtls()) == 0 {
		return nil
	}
	// The mode inherited from the namespace, else the mesh.
	inheritedStrict := ix.mesh != nil && strictMode(ix.mesh.Spec.GetMtls())
	if nsp := ix.namespace[p.Namespace]; nsp != nil && !unsetMode(nsp.Spec.GetMtls()) {
		inheritedStrict = strictMode(nsp.Spec.GetMtls())
	}
	mode := p.Spec.GetMtls()
	strict := strictMode(mode) || (unsetMode(mode) && inheritedStrict)

	var rules []*security.Rule
	var exceptions []*security.Match // ports exempted from the workload's STRICT default
	for _, port := range slices.Sorted(maps.Keys(p.Spec.GetPortLevelMtls())) {
		pm := p.Spec.GetPortLevelMtls()[port]
		switch {
		case strictMode(pm) && !strict:
			// A STRICT port of a permissive workload: deny plaintext there.
			rules = append(rules, &security.Rule{Clauses: []*security.Clause{{Matches: []*security.Match{notPrincipalsPresence(port)}}}})
		case notStrictMode(pm) && strict:
			exceptions = append(exceptions, &security.Match{NotDestinationPorts: []uint32{port}})
		}
	}
	if len(exceptions) > 0 {
		clauses := []*security.Clause{{Matches: []*security.Match{notPrincipalsPresence(0)}}}
		for _, e := range exceptions {
			clauses = append(clauses, &security.Clause{Matches: []*security.Match{e}})
		}
		rules = append(rules, &security.Rule{Clauses: clauses})
	}
	if len(rules) == 0 {
		return nil
	}
	return &security.Authorization{
		Name:      convertedPeerAuthnPrefix + p.Name,
		Namespace: p.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules:     rules,
	}
}

// authzIndex is what Build needs to translate policies and fill each
// workload's authorization_policies.
type authzIndex struct {
	root     string
	selector map[string][]*securityv1.AuthorizationPolicy // enforced selector policies by namespace
	peer     *peerAuthns
}

// buildAuthorizations translates the policies of in into out and returns
// the index Build uses for workloads.
func buildAuthorizations(in *Inputs, opt Options, out *Output) *authzIndex {
	ix := &authzIndex{root: opt.RootNamespace, selector: map[string][]*securityv1.AuthorizationPolicy{}}
	for _, p := range in.AuthorizationPolicies {
		if p == nil {
			continue
		}
		a, cond := ConvertAuthorizationPolicy(p, opt.RootNamespace)
		if cond != nil {
			out.PolicyStatuses[KindAuthorizationPolicy+"/"+p.Namespace+"/"+p.Name] = &PolicyStatus{
				Kind: KindAuthorizationPolicy, Namespace: p.Namespace, Name: p.Name, Generation: p.Generation,
				Conditions: []PolicyCondition{*cond},
			}
		}
		if a == nil {
			continue
		}
		out.Authorizations[p.Namespace+"/"+p.Name] = a
		if a.Scope == security.Scope_WORKLOAD_SELECTOR {
			ix.selector[p.Namespace] = append(ix.selector[p.Namespace], p)
		}
	}

	ix.peer = indexPeerAuthns(in.PeerAuthentications, opt.RootNamespace)
	if ix.peer.any {
		s := staticStrictPolicy(opt.RootNamespace)
		out.Authorizations[s.Namespace+"/"+s.Name] = s
	}
	for _, p := range in.PeerAuthentications {
		if p == nil {
			continue
		}
		st := &PolicyStatus{Kind: KindPeerAuthentication, Namespace: p.Namespace, Name: p.Name, Generation: p.Generation}
		cond := PolicyCondition{Type: ConditionZtunnelAccepted, Status: "True", Reason: ReasonAccepted, Message: peerAuthnAcceptedMessage}
		switch err := ValidatePeerAuthentication(p); {
		case err != nil:
			cond = PolicyCondition{Type: ConditionZtunnelAccepted, Status: "False", Reason: ReasonInvalid, Message: err.Error()}
		case p.Namespace == opt.RootNamespace && len(p.Spec.GetSelector().GetMatchLabels()) > 0:
			cond = PolicyCondition{Type: ConditionZtunnelAccepted, Status: "False", Reason: ReasonUnsupportedValue, Message: peerAuthnIgnoredRootMessage}
		default:
			if a := ix.peer.convert(p); a != nil {
				out.Authorizations[a.Namespace+"/"+a.Name] = a
			}
		}
		st.Conditions = []PolicyCondition{cond}
		out.PolicyStatuses[st.Key()] = st
	}
	return ix
}

// policiesFor returns the sorted keys of the WORKLOAD_SELECTOR policies
// that select a pod of namespace ns with labels l: AuthorizationPolicies
// of its namespace or the root namespace whose selector matches, and the
// policies derived from PeerAuthentications.
func (ix *authzIndex) policiesFor(ns string, l map[string]string) []string {
	var keys []string
	namespaces := []string{ns}
	if ns != ix.root {
		namespaces = append(namespaces, ix.root)
	}
	for _, n := range namespaces {
		for _, p := range ix.selector[n] {
			if selects(p.Spec.GetSelector().GetMatchLabels(), l) {
				keys = append(keys, p.Namespace+"/"+p.Name)
			}
		}
	}
	keys = append(keys, ix.peer.keysFor(ns, l)...)
	slices.Sort(keys)
	return slices.Compact(keys)
}
