package model

import (
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// Builder is Build with a memory of its previous call: its Build returns
// exactly what Build returns for the same Inputs, but reuses the resources
// (the same *workloadapi.Address) of the previous call for the objects
// that did not change, so that one changed pod among ten thousand costs
// one workload's translation, and an xds.Server handed the reused messages
// does not encode them again.
//
// An object is unchanged when it is the same pointer: the objects of
// Inputs must not be modified once handed to Build (replace them instead,
// as informer caches and localdir snapshots do). A workload is reused when
// its pod, its Namespace object, the selecting services of its namespace
// and all AuthorizationPolicies and PeerAuthentications are the same
// objects as in the previous call, and its waypoint binding and
// require-waypoint policies (which depend on Gateways, GatewayClasses,
// Namespaces and the waypoints' Services and pods) are the same as
// computed anew; a service when its Service is and its waypoint binding
// is the same.
//
// The Outputs share messages with each other and must be treated as
// read-only. A Builder is not safe for concurrent use.
type Builder struct {
	opt  Options
	prev *memo
}

// NewBuilder returns a Builder translating with opt.
func NewBuilder(opt Options) *Builder {
	return &Builder{opt: opt.withDefaults()}
}

// Build translates in as the function Build does, reusing what it can of
// the previous call.
func (b *Builder) Build(in *Inputs) *Output {
	out, m := build(in, b.opt, b.prev)
	b.prev = m
	return out
}

// memo is what a build remembers for the next one.
type memo struct {
	pods       map[*corev1.Pod]*workloadapi.Address
	services   map[*corev1.Service]*workloadapi.Address
	namespaces map[string]*corev1.Namespace
	index      map[string]*serviceIndex
	// serviceObjs are Inputs.Services, from which index was built.
	serviceObjs []*corev1.Service
	policies    []*securityv1.AuthorizationPolicy
	peers       []*securityv1.PeerAuthentication
	// require holds the require-waypoint policy keys each pod's workload
	// names (waypoint.go), for the pods that name any.
	require map[*corev1.Pod][]string
	// sliceSvcs holds the selector-less Services whose EndpointSlices
	// name each pod (endpointslice.go), for the pods named by any.
	sliceSvcs map[*corev1.Pod][]*corev1.Service
}

// service returns the previous resource of svc; m may be nil.
func (m *memo) service(svc *corev1.Service) *workloadapi.Address {
	if m == nil {
		return nil
	}
	return m.services[svc]
}
