// Package model is istiod-lite's translation of Kubernetes objects into the
// Workload API resources served to ztunnel (istio.workload.Address and
// istio.security.Authorization).
//
// It is pure: Build takes one consistent snapshot of typed Kubernetes objects
// (k8s.io/api) and returns every resource, with no I/O, no clock and no
// shared state. Both sources of objects — controller-runtime informers in
// cluster mode and a watched directory of YAML in local mode — feed the same
// functions, and the xDS server computes deltas between successive Outputs.
package model

import (
	"cmp"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Options are the mesh-wide settings the translation depends on. The zero
// value is valid: each field's default is given in its comment.
type Options struct {
	TrustDomain   string // SPIFFE trust domain; default "cluster.local"
	DomainSuffix  string // service hostnames are <name>.<ns>.svc.<suffix>; default "cluster.local"
	ClusterID     string // cluster name used in workload UIDs; default "Kubernetes"
	Network       string // network of every address; default "" (the default network)
	RootNamespace string // mesh config namespace (mesh-wide policies); default "istio-system"
}

// Defaults used for the zero fields of Options.
const (
	DefaultTrustDomain   = "cluster.local"
	DefaultDomainSuffix  = "cluster.local"
	DefaultClusterID     = "Kubernetes"
	DefaultRootNamespace = "istio-system"
)

// withDefaults returns opt with its zero fields set to their defaults.
func (opt Options) withDefaults() Options {
	if opt.TrustDomain == "" {
		opt.TrustDomain = DefaultTrustDomain
	}
	if opt.DomainSuffix == "" {
		opt.DomainSuffix = DefaultDomainSuffix
	}
	if opt.ClusterID == "" {
		opt.ClusterID = DefaultClusterID
	}
	if opt.RootNamespace == "" {
		opt.RootNamespace = DefaultRootNamespace
	}
	return opt
}

// Inputs is one consistent snapshot of the objects the model reads. Nil
// entries in the slices are ignored.
type Inputs struct {
	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	Services        []*corev1.Service
	ServiceAccounts []*corev1.ServiceAccount
	// AuthorizationPolicies and PeerAuthentications (security.istio.io/v1)
	// become istio.security.Authorization resources (see authz.go).
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication
	// Gateways of class istio-waypoint are waypoints (waypoint.go); their
	// GatewayClasses may carry istio.io/waypoint-for. Others are ignored.
	Gateways       []*gatewayv1.Gateway
	GatewayClasses []*gatewayv1.GatewayClass
	// EndpointSlices give Services without a selector their endpoints
	// (endpointslice.go).
	EndpointSlices []*discoveryv1.EndpointSlice
	// HTTPRoutes, GRPCRoutes and TCPRoutes attached to Services (GAMMA)
	// become Output.WaypointRoutes; ReferenceGrants permit their
	// backendRefs to other namespaces (route.go).
	HTTPRoutes      []*gatewayv1.HTTPRoute
	GRPCRoutes      []*gatewayv1.GRPCRoute
	TCPRoutes       []*gatewayv1.TCPRoute
	ReferenceGrants []*gatewayv1.ReferenceGrant
}

// Output is every resource the control plane serves, keyed by xDS resource name.
type Output struct {
	// Addresses holds workloads keyed by uid and services keyed by
	// "namespace/hostname".
	Addresses map[string]*workloadapi.Address
	// Authorizations holds policies keyed by "namespace/name".
	Authorizations map[string]*security.Authorization
	// PolicyStatuses holds the status of each AuthorizationPolicy and
	// PeerAuthentication read, keyed by PolicyStatus.Key(): condition
	// ZtunnelAccepted, or WaypointAccepted for a policy with targetRefs
	// (l7authz.go). A pod not served because another pod claims one of its
	// IPs has one too (KindPod, reason ReasonAddressConflict; see
	// resolveConflicts), and so has a Service that asks for a waypoint
	// (KindService, condition istio.io/WaypointBound; waypoint.go).
	PolicyStatuses map[string]*PolicyStatus
	// WaypointAuthorizations holds the AuthorizationPolicies with
	// targetRefs, as waypoints apply them, keyed by "namespace/name"
	// (l7authz.go).
	WaypointAuthorizations map[string]*waypoint.Authorization
	// GatewayStatuses holds the status of each waypoint Gateway, keyed by
	// "namespace/name" (waypoint.go).
	GatewayStatuses map[string]*GatewayStatus
	// WaypointRoutes holds the routing of each Service bound to a
	// waypoint that has routes attached, keyed by "namespace/hostname"
	// (route.go).
	WaypointRoutes map[string]*waypoint.Routes
	// RouteStatuses holds the status of each route with a parentRef we
	// own, keyed by RouteStatus.Key() (route.go).
	RouteStatuses map[string]*RouteStatus
}

// Build translates a snapshot of Kubernetes objects into Workload API
// resources. The result is deterministic: equal inputs give equal outputs,
// with every repeated field in a stable order. in may be nil.
func Build(in *Inputs, opt Options) *Output {
	out, _ := build(in, opt.withDefaults(), nil)
	return out
}

// build is Build; with prev, the memo of the previous build, it reuses the
// resources of objects that did not change and depend on nothing that
// changed. It returns the memo of this build.
func build(in *Inputs, opt Options, prev *memo) (*Output, *memo) {
	out := &Output{
		Addresses:      map[string]*workloadapi.Address{},
		Authorizations: map[string]*security.Authorization{},
		PolicyStatuses: map[string]*PolicyStatus{},

		WaypointAuthorizations: map[string]*waypoint.Authorization{},
		GatewayStatuses:        map[string]*GatewayStatus{},
		WaypointRoutes:         map[string]*waypoint.Routes{},
		RouteStatuses:          map[string]*RouteStatus{},
	}
	if in == nil {
		return out, nil
	}
	authz := buildAuthorizations(in, opt, out)
	waypoints := indexWaypoints(in, opt)
	waypoints.output(out)
	buildWaypointAuthorizations(in, opt, out, waypoints)
	buildRoutes(in, opt, out, waypoints)
	namespaces := namespacesByName(in.Namespaces)
	var services map[string]*serviceIndex
	if prev != nil && slices.Equal(prev.serviceObjs, in.Services) {
		services = prev.index // the same Service objects: the same index
	} else {
		services = indexServices(in.Services, opt)
	}
	sliceIx, sliceWorkloads := indexEndpointSlices(in, opt)
	next := &memo{
		// Copies: a caller may reuse its slices for the next Inputs.
		serviceObjs: slices.Clone(in.Services),
		pods:        make(map[*corev1.Pod]*workloadapi.Address, len(in.Pods)),
		services:    make(map[*corev1.Service]*workloadapi.Address, len(in.Services)),
		namespaces:  namespaces,
		index:       services,
		policies:    slices.Clone(in.AuthorizationPolicies),
		peers:       slices.Clone(in.PeerAuthentications),
		require:     map[*corev1.Pod][]string{},
		sliceSvcs:   map[*corev1.Pod][]*corev1.Service{},
	}
	// Whether workloads may be reused: the policies (which every workload
	// names) are the same objects, and per namespace, whether its
	// Namespace object and selecting services are.
	authzSame := prev != nil && slices.Equal(prev.policies, in.AuthorizationPolicies) && slices.Equal(prev.peers, in.PeerAuthentications)
	nsSame := map[string]bool{}
	reusable := func(pod *corev1.Pod) *workloadapi.Address {
		if !authzSame {
			return nil
		}
		a := prev.pods[pod]
		if a == nil || !slices.Equal(prev.sliceSvcs[pod], sliceIx.keys(pod)) {
			return nil
		}
		same, ok := nsSame[pod.Namespace]
		if !ok {
			same = prev.namespaces[pod.Namespace] == namespaces[pod.Namespace] &&
				prev.index[pod.Namespace].same(services[pod.Namespace])
			nsSame[pod.Namespace] = same
		}
		if !same {
			return nil
		}
		return a
	}

	for _, svc := range in.Services {
		if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		// The waypoint binding depends on Gateways, pods and namespaces:
		// reuse only a resource with the same one.
		wp := waypoints.serviceAddress(svc)
		a := prev.service(svc)
		if a != nil && !proto.Equal(a.GetService().GetWaypoint(), wp) {
			a = nil
		}
		if a == nil {
			s := buildService(svc, opt)
			s.Waypoint = wp
			a = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
		}
		next.services[svc] = a
		s := a.GetService()
		out.Addresses[s.Namespace+"/"+s.Hostname] = a
	}
	pods := make([]claimant, 0, len(in.Pods))
	for _, pod := range in.Pods {
		if pod == nil {
			continue
		}
		// The waypoint binding and the require-waypoint policies depend on
		// Gateways, pods and namespaces: reuse only a resource with the
		// same ones.
		wp := waypoints.workloadAddress(pod, namespaces[pod.Namespace])
		var require []string
		a := reusable(pod)
		if a != nil {
			require = waypoints.requireKeys(a.GetWorkload().GetServices())
			if !proto.Equal(a.GetWorkload().GetWaypoint(), wp) || !slices.Equal(require, prev.require[pod]) {
				a = nil
			}
		}
		if a == nil {
			w := buildWorkload(pod, namespaces[pod.Namespace], services[pod.Namespace], opt)
			if w == nil {
				continue
			}
			if extra := sliceIx.services(pod, opt); len(extra) > 0 {
				if w.Services == nil {
					w.Services = extra
				} else {
					maps.Copy(w.Services, extra)
				}
			}
			w.Waypoint = wp
			w.AuthorizationPolicies = authz.policiesFor(pod.Namespace, pod.Labels)
			if require = waypoints.requireKeys(w.Services); len(require) > 0 {
				w.AuthorizationPolicies = slices.Compact(slices.Sorted(slices.Values(append(w.AuthorizationPolicies, require...))))
			}
			a = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
		}
		if len(require) > 0 {
			next.require[pod] = require
		}
		next.pods[pod] = a
		if k := sliceIx.keys(pod); len(k) > 0 {
			next.sliceSvcs[pod] = k
		}
		out.Addresses[a.GetWorkload().GetUid()] = a
		pods = append(pods, claimant{pod, a.GetWorkload()})
	}
	resolveConflicts(pods, out)
	for _, w := range sliceWorkloads {
		out.Addresses[w.Uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	return out, next
}

func namespacesByName(nss []*corev1.Namespace) map[string]*corev1.Namespace {
	m := make(map[string]*corev1.Namespace, len(nss))
	for _, ns := range nss {
		if ns != nil {
			m[ns.Name] = ns
		}
	}
	return m
}

// serviceIndex holds the services of one namespace that select pods (a
// non-empty selector, not ExternalName), each filed under one pair of its
// selector — the pair with the smallest key — so that a pod is matched only
// against the services sharing at least that label with it, not against
// every service of its namespace.
type serviceIndex struct {
	byLabel map[labelPair][]*indexedService
	all     []*corev1.Service // in name order
}

// same reports whether two indexes hold the same service objects. Either
// may be nil (no selecting service).
func (ix *serviceIndex) same(other *serviceIndex) bool {
	var a, b []*corev1.Service
	if ix != nil {
		a = ix.all
	}
	if other != nil {
		b = other.all
	}
	return slices.Equal(a, b)
}

type labelPair struct{ key, value string }

// indexedService is a selecting service with what every pod it selects
// shares: its xDS key and its TCP ports.
type indexedService struct {
	svc   *corev1.Service
	key   string // "namespace/hostname"
	ports []corev1.ServicePort
}

// indexServices builds the per-namespace indexes; in each list, services
// are in name order.
func indexServices(svcs []*corev1.Service, opt Options) map[string]*serviceIndex {
	m := map[string]*serviceIndex{}
	sorted := make([]*corev1.Service, 0, len(svcs))
	for _, s := range svcs {
		if s != nil && len(s.Spec.Selector) > 0 && s.Spec.Type != corev1.ServiceTypeExternalName {
			sorted = append(sorted, s)
		}
	}
	slices.SortStableFunc(sorted, func(a, b *corev1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, s := range sorted {
		ix := m[s.Namespace]
		if ix == nil {
			ix = &serviceIndex{byLabel: map[labelPair][]*indexedService{}}
			m[s.Namespace] = ix
		}
		var first labelPair
		for k, v := range s.Spec.Selector {
			if first.key == "" || k < first.key {
				first = labelPair{k, v}
			}
		}
		e := &indexedService{svc: s, key: s.Namespace + "/" + ServiceHostname(s.Name, s.Namespace, opt.DomainSuffix)}
		for _, p := range s.Spec.Ports {
			if tcp(p.Protocol) {
				e.ports = append(e.ports, p)
			}
		}
		ix.byLabel[first] = append(ix.byLabel[first], e)
		ix.all = append(ix.all, s)
	}
	return m
}

// selects reports whether a selector (label equality, as
// labels.SelectorFromSet) matches labels l: every pair of sel is in l. An
// empty selector selects everything.
func selects(sel, l map[string]string) bool {
	for k, v := range sel {
		if lv, ok := l[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
