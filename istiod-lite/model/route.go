package model

import (
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Mesh routing (GAMMA): HTTPRoutes, GRPCRoutes and TCPRoutes
// (gateway.networking.k8s.io/v1) whose parentRef is a Service become one
// ambientgo.waypoint.Routes resource per Service, served to the waypoints,
// and a status per route parent, as Istio's gateway controller writes it
// (pilot/pkg/config/kube/gateway/conversion.go, conditions.go):
//
//   - a parentRef of kind Service (group "" or "core") in the route's own
//     namespace attaches the route to that Service, on the port its port or
//     sectionName (a port's name) names, or every port. The Service must
//     exist and have the port (else Accepted=False, NoMatchingParent) and
//     must be bound to a waypoint (else Accepted=False with the binding's
//     reason — WaypointIsNotReady, AttachmentDenied, ... — or Istio's
//     MissingUseWaypointLabel when it asks for none: such a route would
//     not be respected, since only waypoints apply routes). Only Services
//     bound to a waypoint get a Routes resource. A parentRef to a waypoint
//     Gateway is Accepted=False, UnsupportedValue (attach to the Service);
//     parentRefs to anything else are another controller's and get no
//     status from us.
//   - a parentRef to a Service of another namespace makes a consumer route
//     (GEP-1294, "Namespace boundaries"): attached and reported as above,
//     with no ReferenceGrant needed, its entries carry the route's
//     namespace as consumer_namespace and apply only to clients of that
//     namespace, instead of the Service's producer routes (the waypoint
//     reads the client's namespace from its HBONE identity).
//   - every match of every rule becomes one entry; the producer entries
//     come first, then each consumer namespace's, in name order; within
//     such a group, entries are ordered as the spec orders them across all
//     the routes of a Service, the way Istio sorts
//     them (sortHTTPRoutes): path Exact, then PathPrefix (longest first),
//     then RegularExpression (longest first), then no path; then a method
//     match; then more header matches; then more query param matches; then
//     the oldest route, then "namespace/name"; then rule and match order.
//   - backendRefs resolve to Service keys. A backendRef of another kind
//     (InvalidKind), to a Service that does not exist or lacks the port
//     (BackendNotFound), or to another namespace without a ReferenceGrant
//     allowing it (RefNotPermitted) is kept with its weight and marked
//     invalid — the waypoint answers 500 for its share — and the route's
//     ResolvedRefs is False with that reason. A rule without backendRefs,
//     or whose weights are all 0, is answered 500 unless it redirects.
//   - an unsupported filter (ExtensionRef, ExternalAuth) or an invalid
//     regular expression makes its rule answer 500; the route is
//     PartiallyInvalid=True (reason UnsupportedValue), or Accepted=False
//     with that reason when no rule is left valid. The invalid entries are
//     still served, so that a broken rule fails closed rather than falling
//     through to another route.
//   - a rule without retry gets Istio's default retry policy: 2 attempts
//     on connect-failure, refused-stream, unavailable, cancelled and 503
//     (pilot/pkg/networking/core/route/retry/retry.go, defaultPolicy). A
//     rule's retry without attempts gets 2, as Istio's conversion does.
//   - GRPCRoute entries rank as HTTPRoute ones by their path's type, and
//     within a type by the characters of their service, then of their
//     method (the GRPCRoute spec's order), then by header matches.
//   - GRPCRoute matches become paths as Istio converts them
//     (createGRPCURIMatch): service and method → exact "/svc/method",
//     service only → prefix "/svc/", method only → regex "/[^/]+/method";
//     RegularExpression types become regexes of the same shapes.
//   - TCPRoute rules become TCP entries with their weighted backends,
//     grouped as HTTP entries, then ordered by route age, then
//     "namespace/name", then rule.
//   - a backendRef to another namespace needs a ReferenceGrant there
//     (RefNotPermitted), unless it is a Service the route is attached to
//     (a consumer route sending its clients to the Service they called).
//     GEP-1294 lets mesh routes skip ReferenceGrants unless the mesh would
//     reach further than the client could; ours does: the waypoint calls
//     backends with its own identity, not the client's.
//
// hostnames are ignored: a mesh route applies to the Service it is
// attached to, whatever name the client used.

// Route status constants.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
	KindTCPRoute  = "TCPRoute"
	// RouteControllerName is the controllerName of the route parent
	// statuses we write, Istio's.
	RouteControllerName = "istio.io/gateway-controller"
	// ReasonMissingUseWaypointLabel is Istio's reason for a route whose
	// parent Service (and its namespace) asks for no waypoint.
	ReasonMissingUseWaypointLabel = "MissingUseWaypointLabel"
	missingUseWaypointMessage     = "istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected"
	routeValidMessage             = "Route was valid"
	refsResolvedMessage           = "All references resolved"
)

// Istio's default retry policy (see above).
const (
	defaultRetryAttempts = 2
	defaultRetryCode     = http.StatusServiceUnavailable
)

// RouteStatus is the status the control plane computes for one route: one
// RouteParentStatus per parentRef we own, with Accepted, ResolvedRefs
// (and PartiallyInvalid when some rules are not served). Conditions carry
// ObservedGeneration and no LastTransitionTime (the writer sets it).
type RouteStatus struct {
	Kind       string // KindHTTPRoute, KindGRPCRoute or KindTCPRoute
	Namespace  string
	Name       string
	Generation int64
	Parents    []gatewayv1.RouteParentStatus
}

// Key is "<kind>/<namespace>/<name>", the key of Output.RouteStatuses.
func (s *RouteStatus) Key() string { return s.Kind + "/" + s.Namespace + "/" + s.Name }

// Rejected describes the conditions of the route that are not as wanted
// (Accepted or ResolvedRefs False, PartiallyInvalid True), each with its
// parent, reason and message: configuration errors, for Server.Errors.
func (s *RouteStatus) Rejected() []string {
	var out []string
	for _, p := range s.Parents {
		for _, c := range p.Conditions {
			bad := c.Status == metav1.ConditionFalse
			if c.Type == string(gatewayv1.RouteConditionPartiallyInvalid) {
				bad = c.Status == metav1.ConditionTrue
			}
			if bad {
				out = append(out, fmt.Sprintf("parent %s: %s=%s: %s: %s", p.ParentRef.Name, c.Type, c.Status, c.Reason, c.Message))
			}
		}
	}
	return out
}

// routeObject is what the translation needs of any route kind.
type routeObject struct {
	kind    string
	meta    *metav1.ObjectMeta
	parents []gatewayv1.ParentReference
	// http holds the rules of HTTPRoutes and GRPCRoutes; tcp those of
	// TCPRoutes.
	http []httpRule
	tcp  [][]*waypoint.Backend
	// refErr is the first unresolved reference (ResolvedRefs=False).
	refErr *routeError
	// invalid counts rules that are not served as written, with the
	// first one's reason.
	invalid    int
	invalidErr *routeError
}

func (r *routeObject) key() string { return r.meta.Namespace + "/" + r.meta.Name }

func (r *routeObject) rules() int { return len(r.http) + len(r.tcp) }

func (r *routeObject) refError(reason gatewayv1.RouteConditionReason, msg string) string {
	if r.refErr == nil {
		r.refErr = &routeError{string(reason), msg}
	}
	return msg
}

type routeError struct{ reason, message string }

// httpRule is one rule: its matches and the action they share.
type httpRule struct {
	matches []*waypoint.HTTPMatch
	action  *waypoint.HTTPRouteEntry // every field but route, kind, rule, port, match
	// lengths, for GRPCRoutes, rank matches of one path type by the
	// characters of their service, then of their method (the GRPCRoute
	// spec's order); nil for HTTPRoutes: the path's length.
	lengths []int
}

// routeContext resolves references against one snapshot.
type routeContext struct {
	opt       Options
	services  map[string]*corev1.Service // "namespace/name"
	grants    []*gatewayv1.ReferenceGrant
	waypoints *waypointIndex
}

// buildRoutes translates the routes of in into Output.WaypointRoutes and
// Output.RouteStatuses.
func buildRoutes(in *Inputs, opt Options, out *Output, waypoints *waypointIndex) {
	if len(in.HTTPRoutes) == 0 && len(in.GRPCRoutes) == 0 && len(in.TCPRoutes) == 0 {
		return
	}
	ctx := &routeContext{opt: opt, services: map[string]*corev1.Service{}, waypoints: waypoints}
	for _, s := range in.Services {
		if s != nil {
			ctx.services[s.Namespace+"/"+s.Name] = s
		}
	}
	for _, g := range in.ReferenceGrants {
		if g != nil {
			ctx.grants = append(ctx.grants, g)
		}
	}
	var routes []*routeObject
	for _, r := range in.HTTPRoutes {
		if r != nil {
			routes = append(routes, ctx.httpRoute(r))
		}
	}
	for _, r := range in.GRPCRoutes {
		if r != nil {
			routes = append(routes, ctx.grpcRoute(r))
		}
	}
	for _, r := range in.TCPRoutes {
		if r != nil {
			routes = append(routes, ctx.tcpRoute(r))
		}
	}
	// Oldest first, then by "namespace/name" (then kind, for determinism).
	slices.SortStableFunc(routes, func(a, b *routeObject) int {
		return cmp.Or(a.meta.CreationTimestamp.Time.Compare(b.meta.CreationTimestamp.Time),
			cmp.Compare(a.key(), b.key()), cmp.Compare(a.kind, b.kind))
	})

	type placed struct {
		e           *waypoint.HTTPRouteEntry
		consumer    string // the entry's consumer namespace; "" (producer) first
		length      int    // of the match, for precedence
		route       int    // index in routes: age and name order
		rule, match int
	}
	httpBy := map[string][]placed{}
	tcpBy := map[string][]*waypoint.TCPRouteEntry{}
	for ri, r := range routes {
		st := &RouteStatus{Kind: r.kind, Namespace: r.meta.Namespace, Name: r.meta.Name, Generation: r.meta.Generation}
		for _, ref := range r.parents {
			svcKey, port, accepted, own := ctx.parent(r, ref)
			if !own {
				continue
			}
			st.Parents = append(st.Parents, r.parentStatus(ref, accepted))
			if accepted != nil {
				continue
			}
			consumer := "" // a producer route: for every client
			if ns, _, _ := strings.Cut(svcKey, "/"); ns != r.meta.Namespace {
				consumer = r.meta.Namespace
			}
			for rule, hr := range r.http {
				for mi, m := range hr.matches {
					e := entryAction(hr.action)
					e.Route, e.Kind, e.Rule, e.Port, e.Match, e.ConsumerNamespace = r.key(), r.kind, uint32(rule), port, m, consumer
					if e.Invalid == "" {
						e.Invalid = prefixRewriteProblem(e)
					}
					length := len(m.GetPath().GetValue())
					if hr.lengths != nil {
						length = hr.lengths[mi]
					}
					httpBy[svcKey] = append(httpBy[svcKey], placed{e, consumer, length, ri, rule, mi})
				}
			}
			for rule, backends := range r.tcp {
				tcpBy[svcKey] = append(tcpBy[svcKey], &waypoint.TCPRouteEntry{Route: r.key(), Rule: uint32(rule), Port: port, Backends: backends, ConsumerNamespace: consumer})
			}
		}
		if len(st.Parents) > 0 {
			out.RouteStatuses[st.Key()] = st
		}
	}
	for _, k := range slices.Sorted(maps.Keys(httpBy)) {
		es := httpBy[k]
		slices.SortStableFunc(es, func(a, b placed) int {
			return cmp.Or(cmp.Compare(a.consumer, b.consumer), compareMatches(a.e.Match, b.e.Match, a.length, b.length), cmp.Compare(a.route, b.route),
				cmp.Compare(a.rule, b.rule), cmp.Compare(a.match, b.match))
		})
		rs := routesFor(out, k)
		for _, p := range es {
			rs.Http = append(rs.Http, p.e)
		}
	}
	for k, es := range tcpBy {
		// Already in route order; producer entries first, then by consumer.
		slices.SortStableFunc(es, func(a, b *waypoint.TCPRouteEntry) int { return cmp.Compare(a.ConsumerNamespace, b.ConsumerNamespace) })
		routesFor(out, k).Tcp = es
	}
}

// entryAction returns a copy of the shared action of a rule, so that each entry
// is its own message.
func entryAction(a *waypoint.HTTPRouteEntry) *waypoint.HTTPRouteEntry {
	return &waypoint.HTTPRouteEntry{
		Filters: a.Filters, Backends: a.Backends, RequestTimeoutMs: a.RequestTimeoutMs,
		BackendRequestTimeoutMs: a.BackendRequestTimeoutMs, Retry: a.Retry, Invalid: a.Invalid,
	}
}

func routesFor(out *Output, key string) *waypoint.Routes {
	rs := out.WaypointRoutes[key]
	if rs == nil {
		rs = &waypoint.Routes{Service: key}
		out.WaypointRoutes[key] = rs
	}
	return rs
}

// compareMatches orders two matches of lengths la and lb by the spec's
// precedence (see above): negative when a comes first.
func compareMatches(a, b *waypoint.HTTPMatch, la, lb int) int {
	rank := func(m *waypoint.HTTPMatch) int {
		p := m.GetPath()
		if p == nil {
			return -1
		}
		switch p.Type {
		case waypoint.StringMatch_EXACT:
			return 3
		case waypoint.StringMatch_PREFIX:
			return 2
		default:
			return 1
		}
	}
	ra, rb := rank(a), rank(b)
	hasMethod := func(m *waypoint.HTTPMatch) int {
		if m.GetMethod() != "" {
			return 1
		}
		return 0
	}
	return cmp.Or(cmp.Compare(rb, ra), cmp.Compare(lb, la), cmp.Compare(hasMethod(b), hasMethod(a)),
		cmp.Compare(len(b.GetHeaders()), len(a.GetHeaders())), cmp.Compare(len(b.GetQueryParams()), len(a.GetQueryParams())))
}

// prefixRewriteProblem: ReplacePrefixMatch needs a PathPrefix match.
func prefixRewriteProblem(e *waypoint.HTTPRouteEntry) string {
	for _, f := range e.Filters {
		var pm *waypoint.PathModifier
		switch k := f.Kind.(type) {
		case *waypoint.HTTPFilter_UrlRewrite:
			pm = k.UrlRewrite.GetPath()
		case *waypoint.HTTPFilter_RequestRedirect:
			pm = k.RequestRedirect.GetPath()
		}
		if pm != nil && pm.Type == waypoint.PathModifier_PREFIX && e.Match.GetPath().GetType() != waypoint.StringMatch_PREFIX {
			return "ReplacePrefixMatch is only valid with a PathPrefix match"
		}
	}
	return ""
}

// parent resolves one parentRef of r: the Service key and port it
// attaches to, or why not (accepted non-nil: Accepted=False). own is false
// for parents that are not ours to report on.
func (ctx *routeContext) parent(r *routeObject, ref gatewayv1.ParentReference) (svcKey string, port uint32, accepted *routeError, own bool) {
	group, kind, ns := refOf(groupGateway, KindGateway, ref.Group, ref.Kind, ref.Namespace, r.meta.Namespace)
	switch {
	case kind == KindGateway && group == groupGateway:
		if _, ok := ctx.waypoints.gateway(ns, string(ref.Name)); !ok {
			return "", 0, nil, false // another controller's
		}
		return "", 0, &routeError{string(gatewayv1.RouteReasonUnsupportedValue),
			"routes attached to a waypoint Gateway are not supported; attach the route to the Service (parentRef kind Service)"}, true
	case kind != KindService || (group != "" && group != groupCore):
		return "", 0, nil, false
	}
	svc := ctx.services[ns+"/"+string(ref.Name)]
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return "", 0, &routeError{string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("parent not found: Service %s/%s", ns, ref.Name)}, true
	}
	if ref.Port != nil || ref.SectionName != nil {
		for _, p := range svc.Spec.Ports {
			if (ref.Port == nil || p.Port == *ref.Port) && (ref.SectionName == nil || p.Name == string(*ref.SectionName)) {
				port = uint32(p.Port)
				break
			}
		}
		if port == 0 {
			return "", 0, &routeError{string(gatewayv1.RouteReasonNoMatchingParent),
				fmt.Sprintf("Service %s/%s has no port matching the parentRef's port or sectionName", ns, ref.Name)}, true
		}
	}
	b := ctx.waypoints.services[svc]
	switch {
	case b == nil || (b.wp == nil && b.err == nil):
		return "", 0, &routeError{ReasonMissingUseWaypointLabel, missingUseWaypointMessage}, true
	case b.wp == nil:
		return "", 0, &routeError{b.err.reason, "Service is not bound to a waypoint: " + b.err.message + "; the route is not applied"}, true
	}
	return ns + "/" + ServiceHostname(svc.Name, svc.Namespace, ctx.opt.DomainSuffix), port, nil, true
}

// parentStatus is the status of r for one parentRef.
func (r *routeObject) parentStatus(ref gatewayv1.ParentReference, notAccepted *routeError) gatewayv1.RouteParentStatus {
	c := func(typ gatewayv1.RouteConditionType, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionTrue
		if !ok {
			s = metav1.ConditionFalse
		}
		return metav1.Condition{Type: string(typ), Status: s, ObservedGeneration: r.meta.Generation, Reason: reason, Message: msg}
	}
	accepted := c(gatewayv1.RouteConditionAccepted, true, string(gatewayv1.RouteReasonAccepted), routeValidMessage)
	switch {
	case notAccepted != nil:
		accepted = c(gatewayv1.RouteConditionAccepted, false, notAccepted.reason, notAccepted.message)
	case r.invalid > 0 && r.invalid == r.rules():
		accepted = c(gatewayv1.RouteConditionAccepted, false, r.invalidErr.reason, "no rule is valid: "+r.invalidErr.message)
	}
	resolved := c(gatewayv1.RouteConditionResolvedRefs, true, string(gatewayv1.RouteReasonResolvedRefs), refsResolvedMessage)
	if r.refErr != nil {
		resolved = c(gatewayv1.RouteConditionResolvedRefs, false, r.refErr.reason, r.refErr.message)
	}
	conds := []metav1.Condition{accepted, resolved}
	if r.invalid > 0 && r.invalid < r.rules() && notAccepted == nil {
		conds = append(conds, c(gatewayv1.RouteConditionPartiallyInvalid, true, r.invalidErr.reason,
			fmt.Sprintf("%d of %d rules are not valid and answer 500: %s", r.invalid, r.rules(), r.invalidErr.message)))
	}
	return gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: RouteControllerName, Conditions: conds}
}

// markInvalid records that a rule is not served as written.
func (r *routeObject) markInvalid(reason gatewayv1.RouteConditionReason, msg string) string {
	r.invalid++
	if r.invalidErr == nil {
		r.invalidErr = &routeError{string(reason), msg}
	}
	return msg
}

// httpRoute translates an HTTPRoute's rules.
func (ctx *routeContext) httpRoute(hr *gatewayv1.HTTPRoute) *routeObject {
	r := &routeObject{kind: KindHTTPRoute, meta: &hr.ObjectMeta, parents: hr.Spec.ParentRefs}
	for _, rule := range hr.Spec.Rules {
		act := &waypoint.HTTPRouteEntry{}
		var problem string
		redirect := false
		for _, f := range rule.Filters {
			wf, p := ctx.httpFilter(r, f)
			if p != "" && problem == "" {
				problem = p
			}
			if wf != nil {
				act.Filters = append(act.Filters, wf)
				if f.Type == gatewayv1.HTTPRouteFilterRequestRedirect {
					redirect = true
				}
			}
		}
		for _, b := range rule.BackendRefs {
			be := ctx.backend(r, b.BackendObjectReference, b.Weight)
			for _, f := range b.Filters {
				wf, p := ctx.httpFilter(r, f)
				if p != "" && be.Invalid == "" {
					be.Invalid = p
					if problem == "" {
						problem = p // counted as an invalid rule too
					}
				}
				if wf != nil {
					be.Filters = append(be.Filters, wf)
				}
			}
			act.Backends = append(act.Backends, be)
		}
		if t := rule.Timeouts; t != nil {
			act.RequestTimeoutMs = durationMs(t.Request)
			act.BackendRequestTimeoutMs = durationMs(t.BackendRequest)
		}
		act.Retry = retry(rule.Retry)
		var matches []*waypoint.HTTPMatch
		for _, m := range rule.Matches {
			wm, p := httpMatch(m)
			if p != "" && problem == "" {
				problem = p
			}
			matches = append(matches, wm)
		}
		if len(matches) == 0 {
			matches = []*waypoint.HTTPMatch{{Path: &waypoint.StringMatch{Type: waypoint.StringMatch_PREFIX, Value: "/"}}}
		}
		r.finishRule(act, problem, redirect)
		r.http = append(r.http, httpRule{matches, act, nil})
	}
	return r
}

// finishRule sets the rule's invalid message: an unsupported part, or no
// backend to send to.
func (r *routeObject) finishRule(act *waypoint.HTTPRouteEntry, problem string, redirect bool) {
	switch {
	case problem != "":
		act.Invalid = r.markInvalid(gatewayv1.RouteReasonUnsupportedValue, problem)
	case redirect:
	case len(act.Backends) == 0:
		act.Invalid = "no backends"
	case !slices.ContainsFunc(act.Backends, func(b *waypoint.Backend) bool { return b.Weight > 0 }):
		act.Invalid = "every backend has weight 0"
	}
}

// grpcRoute translates a GRPCRoute's rules into HTTP entries.
func (ctx *routeContext) grpcRoute(gr *gatewayv1.GRPCRoute) *routeObject {
	r := &routeObject{kind: KindGRPCRoute, meta: &gr.ObjectMeta, parents: gr.Spec.ParentRefs}
	for _, rule := range gr.Spec.Rules {
		act := &waypoint.HTTPRouteEntry{Retry: retry(nil)}
		var problem string
		for _, f := range rule.Filters {
			wf, p := ctx.grpcFilter(r, f)
			if p != "" && problem == "" {
				problem = p
			}
			if wf != nil {
				act.Filters = append(act.Filters, wf)
			}
		}
		for _, b := range rule.BackendRefs {
			be := ctx.backend(r, b.BackendObjectReference, b.Weight)
			for _, f := range b.Filters {
				wf, p := ctx.grpcFilter(r, f)
				if p != "" && be.Invalid == "" {
					be.Invalid = p
					if problem == "" {
						problem = p
					}
				}
				if wf != nil {
					be.Filters = append(be.Filters, wf)
				}
			}
			act.Backends = append(act.Backends, be)
		}
		var matches []*waypoint.HTTPMatch
		var lengths []int
		for _, m := range rule.Matches {
			wm, p := grpcMatch(m)
			if p != "" && problem == "" {
				problem = p
			}
			matches = append(matches, wm)
			length := 0
			if mm := m.Method; mm != nil {
				length = len(deref(mm.Service))<<16 | min(len(deref(mm.Method)), 1<<16-1)
			}
			lengths = append(lengths, length)
		}
		if len(matches) == 0 {
			matches, lengths = []*waypoint.HTTPMatch{{}}, []int{0}
		}
		r.finishRule(act, problem, false)
		r.http = append(r.http, httpRule{matches, act, lengths})
	}
	return r
}

// tcpRoute translates a TCPRoute's rules.
func (ctx *routeContext) tcpRoute(tr *gatewayv1.TCPRoute) *routeObject {
	r := &routeObject{kind: KindTCPRoute, meta: &tr.ObjectMeta, parents: tr.Spec.ParentRefs}
	for _, rule := range tr.Spec.Rules {
		var backends []*waypoint.Backend
		for _, b := range rule.BackendRefs {
			backends = append(backends, ctx.backend(r, b.BackendObjectReference, b.Weight))
		}
		r.tcp = append(r.tcp, backends)
	}
	return r
}

// backend resolves one backendRef (or a mirror's, weight nil).
func (ctx *routeContext) backend(r *routeObject, ref gatewayv1.BackendObjectReference, weight *int32) *waypoint.Backend {
	b := &waypoint.Backend{Weight: 1}
	if weight != nil {
		b.Weight = uint32(max(*weight, 0))
	}
	group, kind, ns := refOf("", KindService, ref.Group, ref.Kind, ref.Namespace, r.meta.Namespace)
	switch {
	case kind != KindService || (group != "" && group != groupCore):
		b.Invalid = r.refError(gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s: kind %s of group %q is not supported (only Service)", ref.Name, kind, group))
		return b
	case ns != r.meta.Namespace && !r.attachedTo(ns, string(ref.Name)) && !ctx.granted(r, ns, string(ref.Name)):
		b.Invalid = r.refError(gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef to Service %s/%s not permitted by any ReferenceGrant", ns, ref.Name))
		return b
	}
	svc := ctx.services[ns+"/"+string(ref.Name)]
	if svc == nil {
		b.Invalid = r.refError(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend Service %s/%s not found", ns, ref.Name))
		return b
	}
	if ref.Port == nil {
		b.Invalid = r.refError(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef to Service %s/%s has no port", ns, ref.Name))
		return b
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == *ref.Port }) {
		b.Invalid = r.refError(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend Service %s/%s has no port %d", ns, ref.Name, *ref.Port))
		return b
	}
	b.Service = ns + "/" + ServiceHostname(svc.Name, svc.Namespace, ctx.opt.DomainSuffix)
	b.Port = uint32(*ref.Port)
	return b
}

// attachedTo reports whether r has a parentRef to Service ns/name.
func (r *routeObject) attachedTo(ns, name string) bool {
	return slices.ContainsFunc(r.parents, func(ref gatewayv1.ParentReference) bool {
		pns := r.meta.Namespace
		if ref.Namespace != nil && *ref.Namespace != "" {
			pns = string(*ref.Namespace)
		}
		return ref.Kind != nil && string(*ref.Kind) == KindService && ref.Group != nil && (*ref.Group == "" || *ref.Group == groupCore) &&
			pns == ns && string(ref.Name) == name
	})
}

// granted reports whether a ReferenceGrant in namespace ns lets routes of
// r's kind and namespace refer to Service name.
func (ctx *routeContext) granted(r *routeObject, ns, name string) bool {
	for _, g := range ctx.grants {
		if g.Namespace != ns {
			continue
		}
		from := slices.ContainsFunc(g.Spec.From, func(f gatewayv1.ReferenceGrantFrom) bool {
			return string(f.Group) == groupGateway && string(f.Kind) == r.kind && string(f.Namespace) == r.meta.Namespace
		})
		to := slices.ContainsFunc(g.Spec.To, func(t gatewayv1.ReferenceGrantTo) bool {
			return (t.Group == "" || t.Group == groupCore) && t.Kind == KindService && (t.Name == nil || *t.Name == "" || string(*t.Name) == name)
		})
		if from && to {
			return true
		}
	}
	return false
}

// httpFilter translates one filter; an unsupported one returns a problem.
func (ctx *routeContext) httpFilter(r *routeObject, f gatewayv1.HTTPRouteFilter) (*waypoint.HTTPFilter, string) {
	switch f.Type {
	case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
		if f.RequestHeaderModifier != nil {
			return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: headerModifier(f.RequestHeaderModifier)}}, ""
		}
	case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
		if f.ResponseHeaderModifier != nil {
			return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: headerModifier(f.ResponseHeaderModifier)}}, ""
		}
	case gatewayv1.HTTPRouteFilterRequestRedirect:
		if rr := f.RequestRedirect; rr != nil {
			out := &waypoint.RequestRedirect{StatusCode: http.StatusFound, Path: pathModifier(rr.Path)}
			if rr.Scheme != nil {
				out.Scheme = *rr.Scheme
			}
			if rr.Hostname != nil {
				out.Hostname = string(*rr.Hostname)
			}
			if rr.Port != nil {
				out.Port = uint32(*rr.Port)
			}
			if rr.StatusCode != nil {
				out.StatusCode = uint32(*rr.StatusCode)
			}
			return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestRedirect{RequestRedirect: out}}, ""
		}
	case gatewayv1.HTTPRouteFilterURLRewrite:
		if u := f.URLRewrite; u != nil {
			out := &waypoint.URLRewrite{Path: pathModifier(u.Path)}
			if u.Hostname != nil {
				out.Hostname = string(*u.Hostname)
			}
			return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_UrlRewrite{UrlRewrite: out}}, ""
		}
	case gatewayv1.HTTPRouteFilterRequestMirror:
		if m := f.RequestMirror; m != nil {
			return ctx.mirror(r, m), ""
		}
	case gatewayv1.HTTPRouteFilterCORS:
		if c := f.CORS; c != nil {
			out := &waypoint.CORS{AllowCredentials: c.AllowCredentials != nil && *c.AllowCredentials, MaxAgeSeconds: uint32(max(c.MaxAge, 0))}
			for _, o := range c.AllowOrigins {
				out.AllowOrigins = append(out.AllowOrigins, string(o))
			}
			for _, m := range c.AllowMethods {
				out.AllowMethods = append(out.AllowMethods, string(m))
			}
			for _, h := range c.AllowHeaders {
				out.AllowHeaders = append(out.AllowHeaders, string(h))
			}
			for _, h := range c.ExposeHeaders {
				out.ExposeHeaders = append(out.ExposeHeaders, string(h))
			}
			return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_Cors{Cors: out}}, ""
		}
	}
	return nil, fmt.Sprintf("filter type %q is not supported", f.Type)
}

// grpcFilter translates one GRPCRoute filter.
func (ctx *routeContext) grpcFilter(r *routeObject, f gatewayv1.GRPCRouteFilter) (*waypoint.HTTPFilter, string) {
	switch f.Type {
	case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
		return ctx.httpFilter(r, gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: f.RequestHeaderModifier})
	case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
		return ctx.httpFilter(r, gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: f.ResponseHeaderModifier})
	case gatewayv1.GRPCRouteFilterRequestMirror:
		return ctx.httpFilter(r, gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: f.RequestMirror})
	}
	return nil, fmt.Sprintf("filter type %q is not supported", f.Type)
}

// mirror translates a RequestMirror: its backend and share.
func (ctx *routeContext) mirror(r *routeObject, m *gatewayv1.HTTPRequestMirrorFilter) *waypoint.HTTPFilter {
	b := ctx.backend(r, m.BackendRef, nil)
	b.Weight = 0
	share := uint64(1_000_000)
	switch {
	case m.Percent != nil:
		share = uint64(min(max(*m.Percent, 0), 100)) * 10_000
	case m.Fraction != nil:
		den := int64(100)
		if m.Fraction.Denominator != nil && *m.Fraction.Denominator > 0 {
			den = int64(*m.Fraction.Denominator)
		}
		num := min(max(int64(m.Fraction.Numerator), 0), den)
		share = uint64(num * 1_000_000 / den)
	}
	return &waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestMirror{RequestMirror: &waypoint.RequestMirror{Backend: b, PerMillion: uint32(share)}}}
}

func headerModifier(h *gatewayv1.HTTPHeaderFilter) *waypoint.HeaderModifier {
	out := &waypoint.HeaderModifier{Remove: slices.Clone(h.Remove)}
	for _, s := range h.Set {
		out.Set = append(out.Set, &waypoint.Header{Name: string(s.Name), Value: s.Value})
	}
	for _, a := range h.Add {
		out.Add = append(out.Add, &waypoint.Header{Name: string(a.Name), Value: a.Value})
	}
	return out
}

func pathModifier(p *gatewayv1.HTTPPathModifier) *waypoint.PathModifier {
	switch {
	case p == nil:
		return nil
	case p.Type == gatewayv1.FullPathHTTPPathModifier && p.ReplaceFullPath != nil:
		return &waypoint.PathModifier{Type: waypoint.PathModifier_FULL, Value: *p.ReplaceFullPath}
	case p.Type == gatewayv1.PrefixMatchHTTPPathModifier && p.ReplacePrefixMatch != nil:
		return &waypoint.PathModifier{Type: waypoint.PathModifier_PREFIX, Value: *p.ReplacePrefixMatch}
	}
	return nil
}

// httpMatch translates one HTTPRouteMatch; an invalid regular expression
// returns a problem.
func httpMatch(m gatewayv1.HTTPRouteMatch) (*waypoint.HTTPMatch, string) {
	out := &waypoint.HTTPMatch{Path: &waypoint.StringMatch{Type: waypoint.StringMatch_PREFIX, Value: "/"}}
	var problem string
	check := func(sm *waypoint.StringMatch) *waypoint.StringMatch {
		if sm.Type == waypoint.StringMatch_REGEX && problem == "" {
			if _, err := regexp.Compile(sm.Value); err != nil {
				problem = fmt.Sprintf("invalid regular expression %q: %v", sm.Value, err)
			}
		}
		return sm
	}
	if p := m.Path; p != nil {
		t := gatewayv1.PathMatchPathPrefix
		if p.Type != nil {
			t = *p.Type
		}
		v := "/"
		if p.Value != nil {
			v = *p.Value
		}
		switch t {
		case gatewayv1.PathMatchExact:
			out.Path = &waypoint.StringMatch{Type: waypoint.StringMatch_EXACT, Value: v}
		case gatewayv1.PathMatchRegularExpression:
			out.Path = check(&waypoint.StringMatch{Type: waypoint.StringMatch_REGEX, Value: v})
		default:
			out.Path = &waypoint.StringMatch{Type: waypoint.StringMatch_PREFIX, Value: v}
		}
	}
	seen := map[string]bool{}
	for _, h := range m.Headers {
		// The spec: of several matches of one name, the first counts.
		if n := strings.ToLower(string(h.Name)); !seen[n] {
			seen[n] = true
			regex := h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression
			out.Headers = append(out.Headers, &waypoint.HeaderMatch{Name: string(h.Name), Value: check(stringMatch(regex, h.Value))})
		}
	}
	seenQ := map[string]bool{}
	for _, q := range m.QueryParams {
		if !seenQ[string(q.Name)] {
			seenQ[string(q.Name)] = true
			regex := q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression
			out.QueryParams = append(out.QueryParams, &waypoint.HeaderMatch{Name: string(q.Name), Value: check(stringMatch(regex, q.Value))})
		}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	return out, problem
}

func stringMatch(regex bool, v string) *waypoint.StringMatch {
	if regex {
		return &waypoint.StringMatch{Type: waypoint.StringMatch_REGEX, Value: v}
	}
	return &waypoint.StringMatch{Type: waypoint.StringMatch_EXACT, Value: v}
}

// grpcMatch translates one GRPCRouteMatch into a path (see above) and
// header matches.
func grpcMatch(m gatewayv1.GRPCRouteMatch) (*waypoint.HTTPMatch, string) {
	out := &waypoint.HTTPMatch{}
	var problem string
	check := func(sm *waypoint.StringMatch) *waypoint.StringMatch {
		if sm.Type == waypoint.StringMatch_REGEX && problem == "" {
			if _, err := regexp.Compile(sm.Value); err != nil {
				problem = fmt.Sprintf("invalid regular expression %q: %v", sm.Value, err)
			}
		}
		return sm
	}
	if mm := m.Method; mm != nil {
		regex := mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression
		svc, method := deref(mm.Service), deref(mm.Method)
		switch {
		case svc == "" && method == "":
			problem = "a gRPC method match needs a service or a method"
		case method == "":
			if regex {
				out.Path = check(&waypoint.StringMatch{Type: waypoint.StringMatch_REGEX, Value: "/" + svc + "/.+"})
			} else {
				out.Path = &waypoint.StringMatch{Type: waypoint.StringMatch_PREFIX, Value: "/" + svc + "/"}
			}
		case svc == "":
			if !regex {
				method = regexp.QuoteMeta(method)
			}
			out.Path = check(&waypoint.StringMatch{Type: waypoint.StringMatch_REGEX, Value: "/[^/]+/" + method})
		case regex:
			out.Path = check(&waypoint.StringMatch{Type: waypoint.StringMatch_REGEX, Value: "/" + svc + "/" + method})
		default:
			out.Path = &waypoint.StringMatch{Type: waypoint.StringMatch_EXACT, Value: "/" + svc + "/" + method}
		}
	}
	seen := map[string]bool{}
	for _, h := range m.Headers {
		if n := strings.ToLower(string(h.Name)); !seen[n] {
			seen[n] = true
			regex := h.Type != nil && *h.Type == gatewayv1.GRPCHeaderMatchRegularExpression
			out.Headers = append(out.Headers, &waypoint.HeaderMatch{Name: string(h.Name), Value: check(stringMatch(regex, h.Value))})
		}
	}
	return out, problem
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// durationMs parses a Gateway API Duration (GEP-2257: e.g. "1h", "10s",
// "500ms", "1m30s"; a subset of Go's syntax) into milliseconds; unset,
// zero or unparsable: 0 (none). CRD validation refuses bad values.
func durationMs(d *gatewayv1.Duration) uint32 {
	if d == nil {
		return 0
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v <= 0 {
		return 0
	}
	return uint32(min(v.Milliseconds(), int64(^uint32(0))))
}

// retry translates a rule's retry, or returns Istio's default (see above).
func retry(r *gatewayv1.HTTPRouteRetry) *waypoint.Retry {
	if r == nil {
		return &waypoint.Retry{Attempts: defaultRetryAttempts, Codes: []uint32{defaultRetryCode}}
	}
	out := &waypoint.Retry{Attempts: defaultRetryAttempts, BackoffMs: durationMs(r.Backoff)}
	if r.Attempts != nil {
		out.Attempts = uint32(max(*r.Attempts, 0))
	}
	for _, c := range r.Codes {
		out.Codes = append(out.Codes, uint32(c))
	}
	return out
}

// refOf returns the group, kind and namespace a parentRef or backendRef
// names, with the defaults of its kind of reference for the unset ones
// (the namespace defaults to the route's).
func refOf(defGroup, defKind string, g *gatewayv1.Group, k *gatewayv1.Kind, n *gatewayv1.Namespace, routeNS string) (group, kind, ns string) {
	group, kind, ns = defGroup, defKind, routeNS
	if g != nil {
		group = string(*g)
	}
	if k != nil {
		kind = string(*k)
	}
	if n != nil && *n != "" {
		ns = string(*n)
	}
	return group, kind, ns
}
