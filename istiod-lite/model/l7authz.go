package model

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Waypoint authorization: AuthorizationPolicies with targetRefs become the
// waypoint's own ambientgo.waypoint.Authorization resources, and get a
// WaypointAccepted condition, as Istio attaches them to waypoints
// (pilot/pkg/model/policyattachment.go) and reports their binding
// (pilot/pkg/serviceregistry/ambient/policies.go):
//
//   - only policies with targetRefs (or the deprecated targetRef) and no
//     selector; selector, namespace-wide and mesh-wide policies never apply
//     at waypoints (they keep their L4 meaning at ztunnel);
//   - kind Service (core): requests to that Service of the policy's
//     namespace; kind Gateway (gateway.networking.k8s.io): every request of
//     that waypoint of the policy's namespace; kind GatewayClass
//     istio-waypoint, only in the root namespace: every waypoint;
//   - condition per targetRef as Istio writes it (Accepted "bound to
//     <ns>/<waypoint>"; TargetNotFound; AncestorNotBound for a Service
//     without waypoint; Invalid), flattened as Istio flattens several
//     (Accepted, PartiallyInvalid or Invalid, "Invalid targetRefs: ...").
//
// Beyond Istio, whose waypoint (Envoy) enforces everything:
//
//   - CUSTOM has no extension provider here: the policy is served as a
//     DENY of its rules — what Istio's waypoint does with a CUSTOM policy
//     whose provider is undefined — and the condition is False,
//     UnsupportedValue;
//   - fields we cannot enforce (requestPrincipals, trustDomains, and the
//     when keys request.auth.*, connection.sni, experimental.*) are handled
//     as Istio handles HTTP fields at ztunnel: in an ALLOW policy the rules
//     holding them are dropped, in a DENY (or AUDIT) policy they are
//     enforced without them — both more restrictive than requested — and
//     the condition's reason is UnsupportedValue;
//   - an invalid policy (what Istio's admission webhook refuses) is not
//     served, with a False, Invalid condition, as at ztunnel.

// WaypointAccepted reasons, as Istio's (pilot/pkg/model/service.go).
const (
	WaypointPolicyReasonTargetNotFound   = "TargetNotFound"
	WaypointPolicyReasonAncestorNotBound = "AncestorNotBound"
	WaypointPolicyReasonPartiallyInvalid = "PartiallyInvalid"
	// MeshControllerName is the controllerName of a waypoint GatewayClass.
	MeshControllerName = "istio.io/mesh-controller"
)

const (
	groupCore         = "core"
	groupGateway      = "gateway.networking.k8s.io"
	groupNetworking   = "networking.istio.io"
	kindGatewayClass  = "GatewayClass"
	kindServiceEntry  = "ServiceEntry"
	waypointCustomMsg = "waypoint does not support the CUSTOM action (no extension provider): requests matching its rules are denied, " +
		"as Istio does for an undefined provider"
	waypointUnsupportedFmt = "waypoint does not support %s. %s"
	waypointAllowDropped   = "Within an ALLOW policy, rules holding them are omitted. This will be more restrictive than requested."
	waypointDenyWidened    = "The policy is enforced without them. This will be more restrictive than requested."
)

// buildWaypointAuthorizations translates the AuthorizationPolicies with
// targetRefs into Output.WaypointAuthorizations and their
// WaypointAccepted status conditions into Output.PolicyStatuses.
func buildWaypointAuthorizations(in *Inputs, opt Options, out *Output, waypoints *waypointIndex) {
	if len(in.AuthorizationPolicies) == 0 {
		return
	}
	services := map[string]*corev1.Service{}
	for _, s := range in.Services {
		if s != nil {
			services[s.Namespace+"/"+s.Name] = s
		}
	}
	classes := map[string]string{} // name → controllerName
	for _, c := range in.GatewayClasses {
		if c != nil {
			classes[c.Name] = string(c.Spec.ControllerName)
		}
	}
	if _, ok := classes[WaypointGatewayClass]; !ok {
		// istiod-lite creates it in cluster mode; local mode has it implied.
		classes[WaypointGatewayClass] = MeshControllerName
	}
	r := &targetResolver{opt: opt, services: services, classes: classes, waypoints: waypoints}
	for _, p := range in.AuthorizationPolicies {
		if p == nil || p.Spec.GetSelector() != nil || len(targetRefs(p)) == 0 {
			continue // ztunnel's (authz.go)
		}
		a, cond := convertWaypointPolicy(p, r)
		out.PolicyStatuses[KindAuthorizationPolicy+"/"+p.Namespace+"/"+p.Name] = &PolicyStatus{
			Kind: KindAuthorizationPolicy, Namespace: p.Namespace, Name: p.Name, Generation: p.Generation,
			Conditions: []PolicyCondition{cond},
		}
		if a != nil {
			out.WaypointAuthorizations[p.Namespace+"/"+p.Name] = a
		}
	}
}

// targetRefs returns the policy's targetRefs, else its targetRef.
func targetRefs(p *securityv1.AuthorizationPolicy) []*typeapi.PolicyTargetReference {
	if refs := p.Spec.GetTargetRefs(); len(refs) > 0 {
		return refs
	}
	if ref := p.Spec.GetTargetRef(); ref != nil {
		return []*typeapi.PolicyTargetReference{ref}
	}
	return nil
}

// targetResolver resolves targetRefs against one snapshot.
type targetResolver struct {
	opt       Options
	services  map[string]*corev1.Service // "namespace/name"
	classes   map[string]string          // GatewayClass name → controllerName
	waypoints *waypointIndex
}

// binding is what one targetRef resolved to.
type binding struct {
	target   *waypoint.Target // nil: nothing to serve
	bound    bool
	reason   string
	message  string
	ancestor string // Istio's "<Kind>.<group>:<ns>/<name>"
}

func canonicalGroup(g string) string {
	if g == "" {
		return groupCore
	}
	return g
}

func (r *targetResolver) resolve(p *securityv1.AuthorizationPolicy, ref *typeapi.PolicyTargetReference) binding {
	ns := p.Namespace
	key := ns + "/" + ref.GetName()
	b := binding{reason: "unknown", message: "not bound", ancestor: ref.GetKind() + "." + canonicalGroup(ref.GetGroup()) + ":" + key}
	switch ref.GetKind() {
	case kindGatewayClass:
		if ns != r.opt.RootNamespace {
			b.reason = ReasonInvalid
			b.message = fmt.Sprintf("AuthorizationPolicy must be in the root namespace `%s` when referencing a GatewayClass", r.opt.RootNamespace)
			break
		}
		controller, ok := r.classes[ref.GetName()]
		switch {
		case !ok:
			b.reason = WaypointPolicyReasonTargetNotFound
		case controller != MeshControllerName:
			b.reason = ReasonInvalid
			b.message = fmt.Sprintf("GatewayClass must use controller name `%s` for waypoints", MeshControllerName)
		default:
			b.bound, b.reason, b.message = true, ReasonAccepted, "bound to "+ref.GetName()
			if ref.GetName() == WaypointGatewayClass { // Istio attaches only to its own class
				b.target = &waypoint.Target{Kind: &waypoint.Target_AllWaypoints{AllWaypoints: true}}
			}
		}
	case KindGateway:
		if _, ok := r.waypoints.gateway(ns, ref.GetName()); ok {
			b.target = &waypoint.Target{Kind: &waypoint.Target_Gateway{Gateway: key}}
			if waypointBinds(r.waypoints, key) {
				b.bound, b.reason, b.message = true, ReasonAccepted, "bound to "+key
				break
			}
		}
		b.reason = WaypointPolicyReasonTargetNotFound
	case KindService:
		svc := r.services[key]
		if svc == nil {
			b.reason, b.message = WaypointPolicyReasonTargetNotFound, fmt.Sprintf("Service %s was not found", key)
			break
		}
		b.target = &waypoint.Target{Kind: &waypoint.Target_Service{Service: ns + "/" + ServiceHostname(svc.Name, svc.Namespace, r.opt.DomainSuffix)}}
		if wp, ok := r.waypoints.serviceWaypoint(svc); ok {
			b.bound, b.reason, b.message = true, ReasonAccepted, "bound to "+wp
		} else {
			b.reason, b.message = WaypointPolicyReasonAncestorNotBound, fmt.Sprintf("Service %s is not bound to a waypoint", key)
		}
	case kindServiceEntry:
		b.reason, b.message = WaypointPolicyReasonTargetNotFound, fmt.Sprintf("ServiceEntry %s was not found", key)
	}
	return b
}

// waypointBinds reports whether the waypoint Gateway key ("namespace/name")
// can take traffic: accepted, with addresses (Istio's Waypoint exists).
func waypointBinds(ix *waypointIndex, key string) bool {
	w := ix.waypoints[key]
	return w != nil && w.address != nil
}

// flatten merges the bindings of several targetRefs into one condition as
// Istio's flattenConditions does.
func flatten(bs []binding) PolicyCondition {
	status := func(b bool) string {
		if b {
			return "True"
		}
		return "False"
	}
	if len(bs) == 1 {
		return PolicyCondition{Type: ConditionWaypointAccepted, Status: status(bs[0].bound), Reason: bs[0].reason, Message: bs[0].message}
	}
	bound := false
	var unbound []string
	for _, b := range bs {
		if b.bound {
			bound = true
		} else {
			unbound = append(unbound, b.ancestor)
		}
	}
	c := PolicyCondition{Type: ConditionWaypointAccepted, Status: status(bound), Reason: ReasonInvalid}
	if bound {
		c.Reason = ReasonAccepted
		if len(unbound) > 0 {
			c.Reason = WaypointPolicyReasonPartiallyInvalid
		}
	}
	if len(unbound) > 0 {
		c.Message = "Invalid targetRefs: " + strings.Join(unbound, ", ")
	}
	return c
}

// convertWaypointPolicy translates one AuthorizationPolicy
// with targetRefs for waypoints, resolving its targets with r. It returns
// the resource (nil when none is served: invalid, or no target exists)
// and the WaypointAccepted condition.
func convertWaypointPolicy(p *securityv1.AuthorizationPolicy, r *targetResolver) (*waypoint.Authorization, PolicyCondition) {
	if err := ValidateWaypointAuthorizationPolicy(p); err != nil {
		return nil, PolicyCondition{Type: ConditionWaypointAccepted, Status: "False", Reason: ReasonInvalid, Message: err.Error()}
	}
	var bs []binding
	out := &waypoint.Authorization{Name: p.Name, Namespace: p.Namespace}
	for _, ref := range targetRefs(p) {
		b := r.resolve(p, ref)
		bs = append(bs, b)
		if b.target != nil && !slices.ContainsFunc(out.Targets, func(t *waypoint.Target) bool { return sameTarget(t, b.target) }) {
			out.Targets = append(out.Targets, b.target)
		}
	}
	cond := flatten(bs)
	if v, ok := p.Annotations[AnnotationDryRun]; ok {
		out.DryRun, _ = strconv.ParseBool(v)
	}
	spec := &p.Spec
	switch spec.GetAction() {
	case securityapi.AuthorizationPolicy_ALLOW:
		out.Action = waypoint.Action_ALLOW
	case securityapi.AuthorizationPolicy_DENY, securityapi.AuthorizationPolicy_CUSTOM:
		out.Action = waypoint.Action_DENY
	case securityapi.AuthorizationPolicy_AUDIT:
		out.Action = waypoint.Action_AUDIT
	}
	unsupported := map[string]bool{}
	for _, rule := range spec.GetRules() {
		if wr := convertWaypointRule(rule, p.Namespace, out.Action == waypoint.Action_ALLOW, unsupported); wr != nil {
			out.Rules = append(out.Rules, wr)
		}
	}
	switch {
	case spec.GetAction() == securityapi.AuthorizationPolicy_CUSTOM:
		cond.Status, cond.Reason, cond.Message = "False", ReasonUnsupportedValue, waypointCustomMsg
	case len(unsupported) > 0:
		boilerplate := waypointDenyWidened
		if out.Action == waypoint.Action_ALLOW {
			boilerplate = waypointAllowDropped
		}
		msg := fmt.Sprintf(waypointUnsupportedFmt, strings.Join(slices.Sorted(maps.Keys(unsupported)), ", "), boilerplate)
		switch cond.Reason {
		case ReasonAccepted:
			cond.Reason, cond.Message = ReasonUnsupportedValue, msg
		case WaypointPolicyReasonPartiallyInvalid:
			cond.Message += "; " + msg
		}
	}
	if len(out.Targets) == 0 {
		return nil, cond
	}
	return out, cond
}

func sameTarget(a, b *waypoint.Target) bool {
	return a.GetService() == b.GetService() && a.GetGateway() == b.GetGateway() && a.GetAllWaypoints() == b.GetAllWaypoints()
}

// waypointWhenKeys are the `when` keys a waypoint enforces (see
// authz.L7ConditionKeys); request.headers[...] is checked apart.
var waypointWhenKeys = map[string]bool{
	"source.ip": true, "remote.ip": true, "source.namespace": true, "source.principal": true,
	"source.serviceAccount": true, "source.trustDomain": true, "destination.ip": true, "destination.port": true,
}

// unsupportedWhenKey reports whether a valid key is one a waypoint cannot
// enforce.
func unsupportedWhenKey(k string) bool {
	return strings.HasPrefix(k, "request.auth.") || k == "connection.sni" || strings.HasPrefix(k, "experimental.envoy.filters.")
}

// convertWaypointRule translates one rule, recording the fields it holds
// that a waypoint cannot enforce in unsupported; it returns nil when the
// rule is dropped (an ALLOW rule holding any).
func convertWaypointRule(r *securityapi.Rule, ns string, allow bool, unsupported map[string]bool) *waypoint.Rule {
	found := false
	note := func(name string, n int) {
		if n > 0 {
			unsupported[name], found = true, true
		}
	}
	out := &waypoint.Rule{}
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		note("requestPrincipals", len(s.GetRequestPrincipals()))
		note("notRequestPrincipals", len(s.GetNotRequestPrincipals()))
		note("trustDomains", len(s.GetTrustDomains()))
		note("notTrustDomains", len(s.GetNotTrustDomains()))
		out.From = append(out.From, &waypoint.Source{
			Principals:         s.GetPrincipals(),
			NotPrincipals:      s.GetNotPrincipals(),
			Namespaces:         s.GetNamespaces(),
			NotNamespaces:      s.GetNotNamespaces(),
			ServiceAccounts:    qualifyServiceAccounts(s.GetServiceAccounts(), ns),
			NotServiceAccounts: qualifyServiceAccounts(s.GetNotServiceAccounts(), ns),
			IpBlocks:           s.GetIpBlocks(),
			NotIpBlocks:        s.GetNotIpBlocks(),
			RemoteIpBlocks:     s.GetRemoteIpBlocks(),
			NotRemoteIpBlocks:  s.GetNotRemoteIpBlocks(),
		})
	}
	for _, t := range r.GetTo() {
		o := t.GetOperation()
		out.To = append(out.To, &waypoint.Operation{
			Hosts: o.GetHosts(), NotHosts: o.GetNotHosts(),
			Ports: o.GetPorts(), NotPorts: o.GetNotPorts(),
			Methods: o.GetMethods(), NotMethods: o.GetNotMethods(),
			Paths: o.GetPaths(), NotPaths: o.GetNotPaths(),
		})
	}
	for _, w := range r.GetWhen() {
		k := w.GetKey()
		if unsupportedWhenKey(k) {
			note(k, 1)
			continue
		}
		values, notValues := w.GetValues(), w.GetNotValues()
		if k == "source.serviceAccount" {
			values, notValues = qualifyServiceAccounts(values, ns), qualifyServiceAccounts(notValues, ns)
		}
		out.When = append(out.When, &waypoint.Condition{Key: k, Values: values, NotValues: notValues})
	}
	if allow && found {
		return nil
	}
	return out
}

// qualifyServiceAccounts writes "sa" as "<ns>/sa".
func qualifyServiceAccounts(vs []string, ns string) []string {
	if len(vs) == 0 {
		return nil
	}
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		if !strings.Contains(v, "/") {
			v = ns + "/" + v
		}
		out = append(out, v)
	}
	return out
}

// ValidateWaypointAuthorizationPolicy checks a policy with targetRefs as
// Istio's validation webhook does, beyond ValidateAuthorizationPolicy:
// targetRefs name a Service, ServiceEntry, Gateway or GatewayClass of the
// policy's own namespace; values are not empty; service accounts are "sa"
// or "ns/sa"; path templates are well formed; `when` keys are Istio's; a
// DENY or CUSTOM policy has rules, and only CUSTOM has a provider.
func ValidateWaypointAuthorizationPolicy(p *securityv1.AuthorizationPolicy) error {
	errs := []error{ValidateAuthorizationPolicy(p)}
	for i, ref := range targetRefs(p) {
		errs = append(errs, validateTargetRef(fmt.Sprintf("targetRefs[%d]", i), ref))
	}
	spec := &p.Spec
	switch spec.GetAction() {
	case securityapi.AuthorizationPolicy_DENY:
		if spec.GetRules() == nil {
			errs = append(errs, errors.New("DENY action without `rules` is meaningless as it will never be triggered, "+
				"add an empty rule `{}` if you want it be triggered for every request"))
		}
	case securityapi.AuthorizationPolicy_CUSTOM:
		if len(spec.GetRules()) == 0 {
			errs = append(errs, errors.New("CUSTOM action without `rules` is meaningless as it will never be triggered"))
		}
	}
	if spec.GetProvider() != nil && spec.GetAction() != securityapi.AuthorizationPolicy_CUSTOM {
		errs = append(errs, fmt.Errorf("`provider` must not be with non CUSTOM action, found %s", spec.GetAction()))
	}
	for i, r := range spec.GetRules() {
		for j, f := range r.GetFrom() {
			s := f.GetSource()
			if s == nil {
				continue // reported by ValidateAuthorizationPolicy
			}
			at := fmt.Sprintf("rules[%d].from[%d].source", i, j)
			if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 && len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 {
				errs = append(errs, fmt.Errorf("%s: cannot set serviceAccounts with namespaces or principals", at))
			}
			errs = append(errs,
				nonEmpty(at+".principals", s.Principals), nonEmpty(at+".notPrincipals", s.NotPrincipals),
				nonEmpty(at+".requestPrincipals", s.RequestPrincipals), nonEmpty(at+".notRequestPrincipals", s.NotRequestPrincipals),
				nonEmpty(at+".namespaces", s.Namespaces), nonEmpty(at+".notNamespaces", s.NotNamespaces),
				nonEmpty(at+".ipBlocks", s.IpBlocks), nonEmpty(at+".notIpBlocks", s.NotIpBlocks),
				nonEmpty(at+".remoteIpBlocks", s.RemoteIpBlocks), nonEmpty(at+".notRemoteIpBlocks", s.NotRemoteIpBlocks),
				nonEmpty(at+".trustDomains", s.TrustDomains), nonEmpty(at+".notTrustDomains", s.NotTrustDomains),
				validateServiceAccounts(at+".serviceAccounts", s.ServiceAccounts),
				validateServiceAccounts(at+".notServiceAccounts", s.NotServiceAccounts))
		}
		for j, t := range r.GetTo() {
			o := t.GetOperation()
			if o == nil {
				continue
			}
			at := fmt.Sprintf("rules[%d].to[%d].operation", i, j)
			errs = append(errs,
				nonEmpty(at+".hosts", o.Hosts), nonEmpty(at+".notHosts", o.NotHosts),
				nonEmpty(at+".methods", o.Methods), nonEmpty(at+".notMethods", o.NotMethods),
				nonEmpty(at+".paths", o.Paths), nonEmpty(at+".notPaths", o.NotPaths),
				validatePathTemplates(at+".paths", o.Paths), validatePathTemplates(at+".notPaths", o.NotPaths))
		}
		for j, w := range r.GetWhen() {
			k := w.GetKey()
			if k == "" {
				continue // reported by ValidateAuthorizationPolicy
			}
			at := fmt.Sprintf("rules[%d].when[%d] (%s)", i, j, k)
			errs = append(errs, nonEmpty(at+".values", w.GetValues()), nonEmpty(at+".notValues", w.GetNotValues()))
			switch {
			case strings.HasPrefix(k, "request.headers"):
				if _, ok := authz.HeaderConditionName(k); !ok {
					errs = append(errs, fmt.Errorf("%s: bad key, should have format request.headers[<name>]", at))
				}
			case k == "source.serviceAccount":
				errs = append(errs, validateServiceAccounts(at+".values", w.GetValues()), validateServiceAccounts(at+".notValues", w.GetNotValues()))
			case waypointWhenKeys[k], unsupportedWhenKey(k):
			default:
				errs = append(errs, fmt.Errorf("%s: unknown attribute", at))
			}
		}
	}
	return errors.Join(errs...)
}

// validateTargetRef checks one targetRef as Istio's webhook does.
func validateTargetRef(at string, ref *typeapi.PolicyTargetReference) error {
	var errs []error
	if ref.GetName() == "" {
		errs = append(errs, fmt.Errorf("%s: name must be set", at))
	}
	if ref.GetNamespace() != "" {
		errs = append(errs, fmt.Errorf("%s: namespace must not be set; cross namespace referencing is not supported", at))
	}
	switch g := canonicalGroup(ref.GetGroup()); {
	case ref.GetKind() == KindService && g == groupCore,
		ref.GetKind() == kindServiceEntry && g == groupNetworking,
		ref.GetKind() == KindGateway && g == groupGateway,
		ref.GetKind() == kindGatewayClass && g == groupGateway:
	default:
		errs = append(errs, fmt.Errorf("%s: must be to a core Service, a %s ServiceEntry, or a %s Gateway or GatewayClass, but was %s/%s",
			at, groupNetworking, groupGateway, ref.GetGroup(), ref.GetKind()))
	}
	return errors.Join(errs...)
}

func nonEmpty(at string, vs []string) error {
	if slices.Contains(vs, "") {
		return fmt.Errorf("%s: empty value not allowed", at)
	}
	return nil
}

func validateServiceAccounts(at string, vs []string) error {
	if len(vs) > 16 {
		return fmt.Errorf("%s: may not have more than 16 values", at)
	}
	for _, v := range vs {
		ns, sa, cut := strings.Cut(v, "/")
		if !cut {
			ns, sa = "x", v
		}
		if ns == "" || sa == "" || strings.Contains(sa, "/") || strings.Contains(v, "*") || len(v) > 320 {
			return fmt.Errorf("%s: %q: expected format 'serviceAccount' or 'namespace/serviceAccount', without wildcard", at, v)
		}
	}
	return nil
}

// validPathLiteral is a path segment's literal in a template (RFC 3986
// pchar, as Istio checks it).
var validPathLiteral = regexp.MustCompile(`^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$`)

// validatePathTemplates checks Istio's path templates ({*} one segment,
// {**} any, last).
func validatePathTemplates(at string, paths []string) error {
	for _, p := range paths {
		template := strings.Contains(p, "{*}") || strings.Contains(p, "{**}")
		seenAny := false
		for _, seg := range strings.Split(strings.Trim(p, "/"), "/") {
			switch {
			case seg == "{*}" || seg == "{**}":
				if seenAny {
					return fmt.Errorf("%s: invalid path %q: {**} is not the last operator", at, p)
				}
				seenAny = seg == "{**}"
			case strings.ContainsAny(seg, "{}"):
				return fmt.Errorf("%s: invalid path %q: '{' or '}' beyond a supported path template", at, p)
			case template && !validPathLiteral.MatchString(seg):
				return fmt.Errorf("%s: invalid path %q: segment %q is not a valid literal", at, p, seg)
			}
		}
		if template && !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%s: invalid path template %q: must start with '/'", at, p)
		}
	}
	return nil
}
