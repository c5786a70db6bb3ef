// Package workloadapi holds the Go types of the Workload API that istiod-lite
// serves to ztunnel over delta ADS: istio.workload.Address (a Workload or a
// Service) here, and istio.security.Authorization in the security
// subpackage. The .proto files in proto/ are wire-compatible with Istio's;
// the Go code is generated from them by `make generate` and never edited.
package workloadapi

//go:generate protoc -I proto --go_out=. --go_opt=module=github.com/ambient-go/mesh/pkg/workloadapi workload.proto authorization.proto

// Type URLs of the resources served over xDS, the same as Istio's.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)
