package model

import (
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
