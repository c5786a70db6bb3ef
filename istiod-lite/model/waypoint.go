package model

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

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

// waypointIndex answers, for one Build, which waypoint Gateway binds a
// Service or a pod. indexWaypoints builds it before anything that needs
// it (workloads, services, waypoint policies).
type waypointIndex struct {
	gateways map[string]*gatewayv1.Gateway // "namespace/name" → waypoint Gateway (class istio-waypoint)
}

// indexWaypoints indexes the waypoint Gateways of in.
//
// TODO(issue 10): binding being written.
func indexWaypoints(in *Inputs, opt Options) *waypointIndex {
	ix := &waypointIndex{gateways: map[string]*gatewayv1.Gateway{}}
	for _, gw := range in.Gateways {
		if gw != nil && string(gw.Spec.GatewayClassName) == WaypointGatewayClass {
			ix.gateways[gw.Namespace+"/"+gw.Name] = gw
		}
	}
	return ix
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
//
// TODO(issue 10): binding being written.
func (ix *waypointIndex) serviceWaypoint(svc *corev1.Service) (string, bool) { return "", false }
