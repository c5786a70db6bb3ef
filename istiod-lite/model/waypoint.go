package model

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Waypoint binding: which waypoint Gateway handles the traffic of a
// Service (Service.waypoint) or of a pod (Workload.waypoint), the status of
// each waypoint Gateway, and the Service condition istio.io/WaypointBound,
// as Istio's ambient control plane computes them
// (pilot/pkg/serviceregistry/ambient/waypoints.go and its neighbours).
//
// A waypoint is a Gateway of class istio-waypoint. It binds once it is
// accepted and has addresses:
//
//   - Accepted: it has exactly one listener, on port 15008 with protocol
//     HBONE (its name is not checked, as in Istio). Any other listener is
//     Accepted=False, UnsupportedProtocol, and the Gateway is
//     Accepted=False, ListenersNotValid. (Istio keeps such a Gateway
//     accepted and binds it anyway; we refuse it, so that a waypoint whose
//     listener says something else is never put in the path.)
//   - Addresses: the model computes status.addresses itself from the Service
//     named after the Gateway in its namespace (the deployer creates it in
//     cluster mode, the runtime in local mode): its cluster IPs, then the
//     hostname <gw>.<ns>.svc.<domainSuffix> (Istio reports both for
//     waypoints). As Istio, addresses are reported only once the waypoint
//     is ready — the Service has a cluster IP and at least one Ready pod
//     labelled gateway.networking.k8s.io/gateway-name=<gw> that is not being
//     deleted exists in the namespace — and, once reported (the Gateway
//     read back carries status.addresses), stay while the Service does,
//     even if the pods go unready. So traffic is never sent to a waypoint
//     that has not come up once.
//   - Programmed=True with the addresses and a Ready pod; otherwise False
//     with the reason Istio's gateway controller uses: AddressNotUsable when
//     the Service does not exist, AddressNotAssigned when it has no cluster
//     IP or no Ready pod, Invalid when the Gateway is not accepted.
//
// istio.io/waypoint-for (service, the default; workload; all; none) is read
// from the Gateway's labels, else its GatewayClass's. istio.io/use-waypoint
// on a Service or pod, else on its Namespace, names the waypoint (in the
// namespace given by istio.io/use-waypoint-namespace next to it, default
// the object's own namespace); "none" on the object opts it out. Use from
// another namespace needs the HBONE listener's allowedRoutes.namespaces
// (From Same by default, All, or Selector on the object's namespace's
// labels). A waypoint's own pods (gateway-name label naming a Gateway of
// their namespace) and its own Service (named after it, or labelled
// gateway.istio.io/managed=istio.io-mesh-controller) never get a waypoint.
//
// Our extension (Istio had it until 1.21; it is not Istio's API any more):
// the annotation istio.io/for-service-account: <sa> (also accepted as a
// label) on a waypoint Gateway binds every pod of the Gateway's namespace
// running as <sa> (Workload.waypoint) and every Service of that namespace
// whose selected pods — at least one — all run as <sa> (Service.waypoint),
// unless istio.io/use-waypoint on the object or its Namespace (including
// "none") says otherwise. Such a waypoint serves both service- and
// workload-addressed traffic unless the Gateway itself carries
// istio.io/waypoint-for; its class's label does not apply.
//
// Our extension: the label mesh.ambient-go.dev/require-waypoint: "true" on a
// Service or Namespace makes the model emit an L4 DENY policy that the
// destination ztunnel enforces: in-mesh (mTLS) traffic whose peer is not one
// of the bound waypoints' identities is refused, so traffic that bypassed the
// waypoint (pod-addressed, or from a client that ignored Service.waypoint)
// never reaches the workload. The waypoint identities are
// <td>/ns/<gw ns>/sa/<gw name> (the deployer names the waypoint's
// ServiceAccount after the Gateway) and those of its running pods. On a
// Service the policy is RequireWaypointServicePolicyPrefix+<service>,
// WORKLOAD_SELECTOR-scoped and named by the Service's selected pods; on a
// Namespace it is RequireWaypointNamespacePolicy, NAMESPACE-scoped, allowing
// every waypoint bound to that namespace, its Services or its pods. Without
// a bound waypoint no policy is emitted (traffic is not cut off) and the
// Service's WaypointBound condition is False saying so. Plaintext traffic
// is left to PeerAuthentication. The '_' in the names cannot appear in a
// Kubernetes name, so they never collide with a user's policy.

// Waypoint constants, the same as Istio's.
const (
	WaypointGatewayClass = "istio-waypoint"
	// KindService is the PolicyStatus kind of a Service's
	// istio.io/WaypointBound condition; KindGateway names Gateways.
	KindService = "Service"
	KindGateway = "Gateway"
	// ConditionWaypointBound is the Service condition Istio writes.
	ConditionWaypointBound = "istio.io/WaypointBound"
	// ConditionWaypointAccepted is the AuthorizationPolicy condition of a
	// policy with targetRefs.
	ConditionWaypointAccepted = "WaypointAccepted"

	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayManaged       = "gateway.istio.io/managed"
	GatewayManagedMesh        = "istio.io-mesh-controller" // value of LabelGatewayManaged on waypoint resources
	WaypointForService        = "service"
	WaypointForWorkload       = "workload"
	WaypointForAll            = "all"
	WaypointForNone           = "none"
	UseWaypointNone           = "none"
	WaypointListenerPort      = 15008
	WaypointListenerProtocol  = "HBONE"
	waypointListenerMessage   = `Expected a single listener on port 15008 with protocol "HBONE"`

	// Reasons of the WaypointBound condition, as Istio writes them.
	ReasonWaypointAccepted       = "WaypointAccepted"
	ReasonWaypointIsNotReady     = "WaypointIsNotReady"
	ReasonAttachmentDenied       = "AttachmentDenied"
	ReasonUnsupportedTrafficType = "UnsupportedTrafficType"
)

// Our extensions (see above).
const (
	// AnnotationForServiceAccount on a waypoint Gateway restricts it to one
	// ServiceAccount's workloads; accepted as a label too.
	AnnotationForServiceAccount = "istio.io/for-service-account"
	// LabelRequireWaypoint ("true") on a Service or Namespace refuses
	// in-mesh traffic that did not come through its waypoint.
	LabelRequireWaypoint = "mesh.ambient-go.dev/require-waypoint"
	// RequireWaypointServicePolicyPrefix + the Service's name is the
	// policy of a Service labelled LabelRequireWaypoint, in its namespace.
	RequireWaypointServicePolicyPrefix = "ambientgo_require_waypoint_service_"
	// RequireWaypointNamespacePolicy is the policy of a Namespace labelled
	// LabelRequireWaypoint, in that namespace.
	RequireWaypointNamespacePolicy = "ambientgo_require_waypoint_namespace"
	// ReasonWaypointRequired is the WaypointBound=False reason of a Service
	// that requires a waypoint and asks for none.
	ReasonWaypointRequired = "WaypointRequired"
	requireUnmetMessage    = LabelRequireWaypoint + " is set but no waypoint is bound: in-mesh traffic that bypasses a waypoint is not refused"
)

// GatewayStatus is the status the control plane computes for one waypoint
// Gateway: what the status writer writes in cluster mode, what local mode
// logs. Conditions have no LastTransitionTime (the writer sets it).
type GatewayStatus struct {
	Namespace  string
	Name       string
	Generation int64
	Addresses  []gatewayv1.GatewayStatusAddress
	Conditions []metav1.Condition // Accepted, Programmed
	Listeners  []gatewayv1.ListenerStatus
}

// Key is "namespace/name", the key of Output.GatewayStatuses.
func (s *GatewayStatus) Key() string { return s.Namespace + "/" + s.Name }

// Rejected describes the Accepted conditions of the Gateway and its
// listeners that are False — configuration errors, for Server.Errors — each
// with its reason and message. Programmed=False (not ready yet) is not one.
func (s *GatewayStatus) Rejected() []string {
	var out []string
	for _, c := range s.Conditions {
		if c.Status == metav1.ConditionFalse && c.Type == string(gatewayv1.GatewayConditionAccepted) {
			out = append(out, fmt.Sprintf("%s=False: %s: %s", c.Type, c.Reason, c.Message))
		}
	}
	for _, l := range s.Listeners {
		for _, c := range l.Conditions {
			if c.Status == metav1.ConditionFalse && c.Type == string(gatewayv1.ListenerConditionAccepted) {
				out = append(out, fmt.Sprintf("listener %s: %s=False: %s: %s", l.Name, c.Type, c.Reason, c.Message))
			}
		}
	}
	return out
}

// waypointInfo is one waypoint Gateway as the index knows it.
type waypointInfo struct {
	gw      *gatewayv1.Gateway
	key     string // "namespace/name"
	traffic string // WaypointFor*, or anything else (serves nothing)
	forSA   string // our extension; "" when unset
	// from and selector are the HBONE listener's allowedRoutes.namespaces.
	from     gatewayv1.FromNamespaces
	selector labels.Selector // nil: matches nothing
	// address is set when the waypoint binds: accepted and with addresses.
	address *workloadapi.GatewayAddress
	// principals are the identities of the waypoint (without spiffe://).
	principals []string
}

func (w *waypointInfo) serves(traffic string) bool {
	return w.traffic == traffic || w.traffic == WaypointForAll
}

// allows reports whether objects of namespace ns may use the waypoint.
func (w *waypointInfo) allows(ns string, nsObj *corev1.Namespace) bool {
	switch w.from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSelector:
		var l map[string]string
		if nsObj != nil {
			l = nsObj.Labels
		}
		return w.selector != nil && w.selector.Matches(labels.Set(l))
	default: // Same, and anything unknown
		return w.gw.Namespace == ns
	}
}

// bindError is why an object that asks for a waypoint has none.
type bindError struct{ reason, message string }

// serviceBinding is the outcome for one Service.
type serviceBinding struct {
	wp      *waypointInfo // the bound waypoint, or nil
	err     *bindError    // why not, when the Service asked for one
	asked   bool          // the Service asked for a waypoint (status written)
	require bool          // labelled LabelRequireWaypoint (on it or its namespace)
}

// waypointIndex answers, for one Build, which waypoint Gateway binds a
// Service or a pod. indexWaypoints builds it before anything that needs
// it (workloads, services, waypoint policies).
type waypointIndex struct {
	opt        Options
	gateways   map[string]*gatewayv1.Gateway // "namespace/name" → waypoint Gateway (class istio-waypoint)
	waypoints  map[string]*waypointInfo      // "namespace/name" → every waypoint Gateway
	allGWs     map[string]bool               // "namespace/name" of every Gateway, of any class
	namespaces map[string]*corev1.Namespace
	bySA       map[string][]*waypointInfo // "namespace/sa" → waypoints for that ServiceAccount, by name
	services   map[*corev1.Service]*serviceBinding
	statuses   []*GatewayStatus
	// requireSvc maps a Service's key "namespace/hostname" to the key of
	// its require-waypoint policy, for the Services that have one.
	requireSvc map[string]string
	policies   []*security.Authorization // require-waypoint policies
}

// indexWaypoints indexes the waypoint Gateways of in and computes the
// binding of every Service.
func indexWaypoints(in *Inputs, opt Options) *waypointIndex {
	ix := &waypointIndex{
		opt:        opt,
		gateways:   map[string]*gatewayv1.Gateway{},
		waypoints:  map[string]*waypointInfo{},
		allGWs:     map[string]bool{},
		namespaces: namespacesByName(in.Namespaces),
		bySA:       map[string][]*waypointInfo{},
		services:   map[*corev1.Service]*serviceBinding{},
		requireSvc: map[string]string{},
	}
	classes := map[string]*gatewayv1.GatewayClass{}
	for _, c := range in.GatewayClasses {
		if c != nil {
			classes[c.Name] = c
		}
	}
	for _, gw := range in.Gateways {
		if gw == nil {
			continue
		}
		ix.allGWs[gw.Namespace+"/"+gw.Name] = true
		if string(gw.Spec.GatewayClassName) == WaypointGatewayClass {
			ix.gateways[gw.Namespace+"/"+gw.Name] = gw
		}
	}
	if len(ix.gateways) == 0 && !anyWaypointLabel(in) {
		return ix // the common case without waypoints: nothing to do
	}

	// The Services named after waypoints and the waypoints' pods.
	svcByName := map[string]*corev1.Service{}
	for _, s := range in.Services {
		if s != nil && ix.gateways[s.Namespace+"/"+s.Name] != nil {
			svcByName[s.Namespace+"/"+s.Name] = s
		}
	}
	type instances struct {
		ready bool
		sas   map[string]bool
	}
	inst := map[string]*instances{}
	for _, p := range in.Pods {
		if p == nil {
			continue
		}
		name := p.Labels[LabelGatewayName]
		if name == "" || ix.gateways[p.Namespace+"/"+name] == nil || terminal(p) || p.DeletionTimestamp != nil {
			continue
		}
		k := p.Namespace + "/" + name
		if inst[k] == nil {
			inst[k] = &instances{sas: map[string]bool{}}
		}
		inst[k].sas[serviceAccount(p)] = true
		if podReady(p) && len(podAddresses(p)) > 0 {
			inst[k].ready = true
		}
	}

	for _, k := range slices.Sorted(maps.Keys(ix.gateways)) {
		gw := ix.gateways[k]
		var ready bool
		var sas map[string]bool
		if i := inst[k]; i != nil {
			ready, sas = i.ready, i.sas
		}
		w, st := ix.waypoint(gw, classes[string(gw.Spec.GatewayClassName)], svcByName[k], ready, sas)
		ix.waypoints[k] = w
		ix.statuses = append(ix.statuses, st)
		if w.forSA != "" {
			sk := gw.Namespace + "/" + w.forSA
			ix.bySA[sk] = append(ix.bySA[sk], w) // in name order
		}
	}

	ix.bindServices(in)
	ix.buildRequirePolicies(in)
	return ix
}

// anyWaypointLabel reports whether a Namespace or Service asks for a
// waypoint or requires one: their statuses are due even without Gateways.
func anyWaypointLabel(in *Inputs) bool {
	has := func(l map[string]string) bool {
		_, use := l[LabelUseWaypoint]
		return use || l[LabelRequireWaypoint] == "true"
	}
	for _, ns := range in.Namespaces {
		if ns != nil && has(ns.Labels) {
			return true
		}
	}
	for _, s := range in.Services {
		if s != nil && has(s.Labels) {
			return true
		}
	}
	return false
}

// waypoint reads one waypoint Gateway and computes its status. svc is the
// Service named after it (nil when missing); ready whether a Ready pod of
// it runs; sas the ServiceAccounts of its pods.
func (ix *waypointIndex) waypoint(gw *gatewayv1.Gateway, class *gatewayv1.GatewayClass, svc *corev1.Service, ready bool, sas map[string]bool) (*waypointInfo, *GatewayStatus) {
	w := &waypointInfo{gw: gw, key: gw.Namespace + "/" + gw.Name, traffic: WaypointForService, from: gatewayv1.NamespacesFromSame}
	if class != nil {
		if t, ok := class.Labels[LabelWaypointFor]; ok {
			w.traffic = t
		}
	}
	w.forSA = gw.Annotations[AnnotationForServiceAccount]
	if w.forSA == "" {
		w.forSA = gw.Labels[AnnotationForServiceAccount]
	}
	if w.forSA != "" {
		w.traffic = WaypointForAll
	}
	if t, ok := gw.Labels[LabelWaypointFor]; ok {
		w.traffic = t
	}

	st := &GatewayStatus{Namespace: gw.Namespace, Name: gw.Name, Generation: gw.Generation}
	cond := func(typ string, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionTrue
		if !ok {
			s = metav1.ConditionFalse
		}
		return metav1.Condition{Type: typ, Status: s, ObservedGeneration: gw.Generation, Reason: reason, Message: msg}
	}

	// Listeners: the first {15008, HBONE} one is the waypoint's; any other
	// is not supported.
	valid, hbone := 0, -1
	for i, l := range gw.Spec.Listeners {
		ok := l.Port == WaypointListenerPort && l.Protocol == WaypointListenerProtocol && hbone < 0
		ls := gatewayv1.ListenerStatus{Name: l.Name, SupportedKinds: []gatewayv1.RouteGroupKind{}}
		if ok {
			hbone = i
			valid++
			ls.Conditions = []metav1.Condition{
				cond(string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "No errors found"),
				cond(string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "No errors found"),
				cond(string(gatewayv1.ListenerConditionProgrammed), true, string(gatewayv1.ListenerReasonProgrammed), "No errors found"),
				cond(string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "No errors found"),
			}
		} else {
			ls.Conditions = []metav1.Condition{
				cond(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonUnsupportedProtocol), waypointListenerMessage),
				cond(string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "No errors found"),
				cond(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), waypointListenerMessage),
				cond(string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "No errors found"),
			}
		}
		st.Listeners = append(st.Listeners, ls)
	}
	if hbone >= 0 {
		if ar := gw.Spec.Listeners[hbone].AllowedRoutes; ar != nil && ar.Namespaces != nil {
			if ar.Namespaces.From != nil {
				w.from = *ar.Namespaces.From
			}
			if w.from == gatewayv1.NamespacesFromSelector && ar.Namespaces.Selector != nil {
				if sel, err := metav1.LabelSelectorAsSelector(ar.Namespaces.Selector); err == nil {
					w.selector = sel
				}
			}
		}
	}
	accepted := len(gw.Spec.Listeners) == 1 && valid == 1
	switch {
	case accepted:
		st.Conditions = append(st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), true, string(gatewayv1.GatewayReasonAccepted), "Resource accepted"))
	case len(gw.Spec.Listeners) == 0:
		st.Conditions = append(st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), false, string(gatewayv1.GatewayReasonListenersNotValid),
			"The Gateway has no listeners. "+waypointListenerMessage))
	case valid == 0:
		st.Conditions = append(st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), false, string(gatewayv1.GatewayReasonListenersNotValid),
			"None of the Gateway's listeners are valid. "+waypointListenerMessage))
	default:
		st.Conditions = append(st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), false, string(gatewayv1.GatewayReasonListenersNotValid),
			fmt.Sprintf("The Gateway has %d listeners. %s", len(gw.Spec.Listeners), waypointListenerMessage)))
	}

	// Addresses and Programmed.
	host := ServiceHostname(gw.Name, gw.Namespace, ix.opt.DomainSuffix)
	var ips []string
	if svc != nil {
		for _, a := range addressBytes(serviceClusterIPs(svc)) {
			ip, _ := netip.AddrFromSlice(a)
			ips = append(ips, ip.String())
		}
	}
	programmed := cond(string(gatewayv1.GatewayConditionProgrammed), true, string(gatewayv1.GatewayReasonProgrammed),
		fmt.Sprintf("Resource programmed, assigned to service(s) %s:%d", host, WaypointListenerPort))
	switch {
	case !accepted:
		programmed = cond(string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonInvalid), "The Gateway is not accepted")
	case svc == nil:
		programmed = cond(string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonAddressNotUsable),
			fmt.Sprintf("Failed to assign to any requested addresses: hostname %q not found", host))
	case len(ips) == 0:
		programmed = cond(string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonAddressNotAssigned),
			fmt.Sprintf("Failed to assign to any requested addresses: service %s/%s has no cluster IP", gw.Namespace, gw.Name))
	case !ready:
		programmed = cond(string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonAddressNotAssigned),
			fmt.Sprintf("Failed to assign to any requested addresses: no instances found for hostname %q", host))
	}
	st.Conditions = append(st.Conditions, programmed)
	// Reported once ready; kept while the Service has an address.
	if accepted && len(ips) > 0 && (ready || len(gw.Status.Addresses) > 0) {
		ipType, hostType := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
		for _, ip := range ips {
			st.Addresses = append(st.Addresses, gatewayv1.GatewayStatusAddress{Type: &ipType, Value: ip})
		}
		st.Addresses = append(st.Addresses, gatewayv1.GatewayStatusAddress{Type: &hostType, Value: host})
		w.address = &workloadapi.GatewayAddress{
			Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: gw.Namespace, Hostname: host}},
			HboneMtlsPort: WaypointListenerPort,
		}
	}

	ids := map[string]bool{principal(ix.opt.TrustDomain, gw.Namespace, gw.Name): true}
	for sa := range sas {
		ids[principal(ix.opt.TrustDomain, gw.Namespace, sa)] = true
	}
	w.principals = slices.Sorted(maps.Keys(ids))
	return w, st
}

// principal is a SPIFFE identity as policies compare it (no spiffe://).
func principal(td, ns, sa string) string { return td + "/ns/" + ns + "/sa/" + sa }

// serviceClusterIPs returns spec.clusterIPs, else spec.clusterIP.
func serviceClusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

// instance reports whether a pod is one of a Gateway's own pods.
func (ix *waypointIndex) instance(pod *corev1.Pod) bool {
	name := pod.Labels[LabelGatewayName]
	return name != "" && ix.allGWs[pod.Namespace+"/"+name]
}

// ownService reports whether svc is a waypoint's own Service.
func (ix *waypointIndex) ownService(svc *corev1.Service) bool {
	return svc.Labels[LabelGatewayManaged] == GatewayManagedMesh || ix.gateways[svc.Namespace+"/"+svc.Name] != nil
}

// useWaypoint reads istio.io/use-waypoint from labels l of an object of
// namespace ns: the waypoint's key, whether the label opts out ("none"),
// and whether it is present at all.
func useWaypoint(l map[string]string, ns string) (key string, none, present bool) {
	v, ok := l[LabelUseWaypoint]
	if !ok {
		return "", false, false
	}
	if v == UseWaypointNone {
		return "", true, true
	}
	if o, ok := l[LabelUseWaypointNamespace]; ok {
		ns = o
	}
	return ns + "/" + v, false, true
}

// resolve looks up the waypoint key named by an object of namespace ns,
// for traffic of kind traffic. It returns the waypoint, or why there is
// none; a nil error with a nil waypoint means "no waypoint, no complaint".
func (ix *waypointIndex) resolve(key, ns, traffic string, direct bool) (*waypointInfo, *bindError) {
	w := ix.waypoints[key]
	if w == nil || w.address == nil {
		return nil, &bindError{ReasonWaypointIsNotReady, fmt.Sprintf("waypoint %q is not ready", key)}
	}
	if !w.allows(ns, ix.namespaces[ns]) {
		return nil, &bindError{ReasonAttachmentDenied, fmt.Sprintf("we are not permitted to attach to waypoint %q (missing allowedRoutes?)", key)}
	}
	if !w.serves(traffic) {
		if traffic == WaypointForWorkload && !direct {
			return nil, nil // a namespace's service waypoint is not for its pods
		}
		return nil, &bindError{ReasonUnsupportedTrafficType, fmt.Sprintf("attempting to bind to traffic type %q which the waypoint %q does not support", traffic, key)}
	}
	return w, nil
}

// bindServices computes the binding of every Service.
func (ix *waypointIndex) bindServices(in *Inputs) {
	// For the per-ServiceAccount waypoints: the ServiceAccounts of the pods
	// each Service of their namespaces selects.
	var podsByNS map[string][]*corev1.Pod
	if len(ix.bySA) > 0 {
		saNS := map[string]bool{}
		for _, ws := range ix.bySA {
			saNS[ws[0].gw.Namespace] = true
		}
		podsByNS = map[string][]*corev1.Pod{}
		for _, p := range in.Pods {
			if p != nil && saNS[p.Namespace] && !terminal(p) && !ix.instance(p) {
				podsByNS[p.Namespace] = append(podsByNS[p.Namespace], p)
			}
		}
	}
	for _, svc := range in.Services {
		if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName || ix.ownService(svc) {
			continue
		}
		b := &serviceBinding{}
		nsObj := ix.namespaces[svc.Namespace]
		var nsLabels map[string]string
		if nsObj != nil {
			nsLabels = nsObj.Labels
		}
		b.require = svc.Labels[LabelRequireWaypoint] == "true" || nsLabels[LabelRequireWaypoint] == "true"
		if key, none, ok := useWaypoint(svc.Labels, svc.Namespace); ok {
			if !none {
				b.asked = true
				b.wp, b.err = ix.resolve(key, svc.Namespace, WaypointForService, true)
			}
		} else if key, none, ok := useWaypoint(nsLabels, svc.Namespace); ok {
			if !none {
				b.asked = true
				b.wp, b.err = ix.resolve(key, svc.Namespace, WaypointForService, false)
			}
		} else if sa := selectedServiceAccount(svc, podsByNS[svc.Namespace]); sa != "" {
			for _, w := range ix.bySA[svc.Namespace+"/"+sa] {
				if !w.serves(WaypointForService) {
					continue // made for workload traffic only: no complaint
				}
				b.asked = true
				b.wp, b.err = ix.resolve(w.key, svc.Namespace, WaypointForService, true)
				if b.wp != nil {
					break
				}
			}
		}
		if b.asked || b.require {
			ix.services[svc] = b
		}
	}
}

// selectedServiceAccount returns the ServiceAccount every pod svc selects
// runs as, or "" when it selects none or pods of several.
func selectedServiceAccount(svc *corev1.Service, pods []*corev1.Pod) string {
	if len(svc.Spec.Selector) == 0 {
		return ""
	}
	sa := ""
	for _, p := range pods {
		if !selects(svc.Spec.Selector, p.Labels) {
			continue
		}
		switch s := serviceAccount(p); {
		case sa == "":
			sa = s
		case sa != s:
			return ""
		}
	}
	return sa
}

// gateway returns the waypoint Gateway "namespace/name", if there is one.
func (ix *waypointIndex) gateway(namespace, name string) (*gatewayv1.Gateway, bool) {
	gw, ok := ix.gateways[namespace+"/"+name]
	return gw, ok
}

// serviceWaypoint returns the "namespace/name" of the waypoint Gateway
// that binds svc (use-waypoint labels, for-service-account), and whether
// one does; a waypoint that exists but cannot bind yet (no addresses,
// allowedRoutes refuses) does not.
func (ix *waypointIndex) serviceWaypoint(svc *corev1.Service) (string, bool) {
	if b := ix.services[svc]; b != nil && b.wp != nil {
		return b.wp.key, true
	}
	return "", false
}

// serviceAddress is the Service.waypoint of svc, or nil.
func (ix *waypointIndex) serviceAddress(svc *corev1.Service) *workloadapi.GatewayAddress {
	if b := ix.services[svc]; b != nil && b.wp != nil {
		return b.wp.address
	}
	return nil
}

// workloadWaypoint returns the waypoint that binds a pod's
// workload-addressed traffic, or nil. ns is the pod's Namespace (may be nil).
func (ix *waypointIndex) workloadWaypoint(pod *corev1.Pod, ns *corev1.Namespace) *waypointInfo {
	if len(ix.waypoints) == 0 || ix.instance(pod) {
		return nil
	}
	if key, none, ok := useWaypoint(pod.Labels, pod.Namespace); ok {
		if none {
			return nil
		}
		w, _ := ix.resolve(key, pod.Namespace, WaypointForWorkload, true)
		return w
	}
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	if key, none, ok := useWaypoint(nsLabels, pod.Namespace); ok {
		if none {
			return nil
		}
		w, _ := ix.resolve(key, pod.Namespace, WaypointForWorkload, false)
		return w
	}
	for _, w := range ix.bySA[pod.Namespace+"/"+serviceAccount(pod)] {
		if w, _ := ix.resolve(w.key, pod.Namespace, WaypointForWorkload, false); w != nil {
			return w
		}
	}
	return nil
}

// workloadAddress is the Workload.waypoint of a pod, or nil.
func (ix *waypointIndex) workloadAddress(pod *corev1.Pod, ns *corev1.Namespace) *workloadapi.GatewayAddress {
	if w := ix.workloadWaypoint(pod, ns); w != nil {
		return w.address
	}
	return nil
}

// buildRequirePolicies computes the require-waypoint policies.
func (ix *waypointIndex) buildRequirePolicies(in *Inputs) {
	// Per namespace labelled require-waypoint: every waypoint bound to it,
	// its Services or its pods.
	nsIDs := map[string]map[string]bool{}
	for name, ns := range ix.namespaces {
		if ns.Labels[LabelRequireWaypoint] == "true" {
			nsIDs[name] = map[string]bool{}
		}
	}
	add := func(ns string, w *waypointInfo) {
		if ids := nsIDs[ns]; ids != nil && w != nil {
			for _, p := range w.principals {
				ids[p] = true
			}
		}
	}
	if len(nsIDs) > 0 {
		for name, ns := range ix.namespaces {
			if nsIDs[name] == nil {
				continue
			}
			if key, none, ok := useWaypoint(ns.Labels, name); ok && !none {
				w, _ := ix.resolve(key, name, WaypointForService, false)
				if w == nil {
					w, _ = ix.resolve(key, name, WaypointForWorkload, true)
				}
				add(name, w)
			}
		}
		for _, p := range in.Pods {
			if p != nil && nsIDs[p.Namespace] != nil {
				add(p.Namespace, ix.workloadWaypoint(p, ix.namespaces[p.Namespace]))
			}
		}
	}
	for svc, b := range ix.services {
		add(svc.Namespace, b.wp)
		if svc.Labels[LabelRequireWaypoint] != "true" || b.wp == nil {
			continue
		}
		a := requirePolicy(svc.Namespace, RequireWaypointServicePolicyPrefix+svc.Name, security.Scope_WORKLOAD_SELECTOR, b.wp.principals)
		ix.policies = append(ix.policies, a)
		ix.requireSvc[svc.Namespace+"/"+ServiceHostname(svc.Name, svc.Namespace, ix.opt.DomainSuffix)] = a.Namespace + "/" + a.Name
	}
	for ns, ids := range nsIDs {
		if len(ids) > 0 {
			ix.policies = append(ix.policies, requirePolicy(ns, RequireWaypointNamespacePolicy, security.Scope_NAMESPACE, slices.Sorted(maps.Keys(ids))))
		}
	}
}

// requirePolicy denies in-mesh traffic (a peer identity is present) whose
// peer is none of the waypoint principals.
func requirePolicy(ns, name string, scope security.Scope, principals []string) *security.Authorization {
	var not []*security.StringMatch
	for _, p := range principals {
		not = append(not, &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: p}})
	}
	return &security.Authorization{
		Name: name, Namespace: ns, Scope: scope, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{
			{Matches: []*security.Match{{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}}}}},
			{Matches: []*security.Match{{NotPrincipals: not}}},
		}}},
	}
}

// requireKeys returns the sorted keys of the require-waypoint policies a
// workload must name: those of the Services (keys of Workload.services)
// that select it.
func (ix *waypointIndex) requireKeys(services map[string]*workloadapi.PortList) []string {
	if len(ix.requireSvc) == 0 {
		return nil
	}
	var keys []string
	for k := range services {
		if p, ok := ix.requireSvc[k]; ok {
			keys = append(keys, p)
		}
	}
	slices.Sort(keys)
	return keys
}

// output writes the Gateway statuses, the Services' WaypointBound
// conditions and the require-waypoint policies into out.
func (ix *waypointIndex) output(out *Output) {
	for _, st := range ix.statuses {
		out.GatewayStatuses[st.Key()] = st
	}
	for _, a := range ix.policies {
		out.Authorizations[a.Namespace+"/"+a.Name] = a
	}
	for svc, b := range ix.services {
		var c PolicyCondition
		switch {
		case b.wp != nil:
			c = PolicyCondition{Type: ConditionWaypointBound, Status: "True", Reason: ReasonWaypointAccepted,
				Message: "Successfully attached to waypoint " + b.wp.key}
		case b.err != nil:
			c = PolicyCondition{Type: ConditionWaypointBound, Status: "False", Reason: b.err.reason, Message: b.err.message}
			if b.require {
				c.Message += "; " + requireUnmetMessage
			}
		case b.require:
			c = PolicyCondition{Type: ConditionWaypointBound, Status: "False", Reason: ReasonWaypointRequired, Message: requireUnmetMessage}
		default:
			continue // opted out, asks for nothing
		}
		st := &PolicyStatus{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name, Generation: svc.Generation, Conditions: []PolicyCondition{c}}
		out.PolicyStatuses[st.Key()] = st
	}
}
