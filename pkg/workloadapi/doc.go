// Package workloadapi holds the Go types of the Workload API that istiod-lite
// serves to ztunnel over delta ADS: istio.workload.Address (a Workload or a
// Service) here, and istio.security.Authorization in the security
// subpackage; the waypoint's L7 policy (the project's own
// ambientgo.waypoint.Authorization) and routes (ambientgo.waypoint.Routes) in
// the waypoint subpackage. The Istio
// .proto files in proto/ are wire-compatible with Istio's; the Go code is
// generated from them by `make generate` and never edited.
package workloadapi

//go:generate protoc -I proto --go_out=. --go_opt=module=github.com/ambient-go/mesh/pkg/workloadapi workload.proto authorization.proto waypoint.proto

// Type URLs of the resources served over xDS. The first two are Istio's;
// WaypointAuthorizationTypeURL and WaypointRoutesTypeURL are the project's
// own (waypoint subpackage), served only to waypoints.
const (
	AddressTypeURL               = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL         = "type.googleapis.com/istio.security.Authorization"
	WaypointAuthorizationTypeURL = "type.googleapis.com/ambientgo.waypoint.Authorization"
	WaypointRoutesTypeURL        = "type.googleapis.com/ambientgo.waypoint.Routes"
)
