package proxy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ambient-go/mesh/pkg/state"
)

// Errors of outbound resolution.
var (
	// ErrUnknownHost is a host name that names no service.
	ErrUnknownHost = errors.New("unknown host")
	errNoVIP       = errors.New("service has no VIP to address its waypoint")
)

// destination is where an outbound connection goes.
type destination struct {
	service  *state.Service  // the service addressed; nil when addressed to a pod or outside the mesh
	workload *state.Workload // the endpoint picked or the pod addressed; nil outside the mesh or when a service's waypoint takes the connection
	// addr is the target: the endpoint's IP and target port, or, through
	// a waypoint, the address the client connected to (the service's VIP
	// and port, or the pod's IP and port). It is the HBONE :authority.
	addr netip.AddrPort
	// waypoint, when set, is where the tunnel goes: the service's
	// waypoint, or the addressed pod's own (workload) waypoint.
	waypoint *state.Waypoint
}

// resolve finds where a connection of the local workload src, from its
// address client, to target (or to the service named host, on target's
// port) goes, as Istio's ztunnel does (outbound.rs build_request):
//   - service-addressed, and the service has a waypoint: to the waypoint,
//     whatever the port, with the VIP and port as authority; a waypoint
//     that does not resolve fails the connection;
//   - service-addressed otherwise: to an endpoint picked round robin,
//     directly, even when that endpoint has a workload waypoint;
//   - addressed to a pod with a waypoint: to the waypoint, with the pod's
//     IP and port as authority, unless the connection comes from that
//     waypoint itself (it has the waypoint's identity and address): then
//     directly, so that it crosses the waypoint once;
//   - otherwise to the pod, or, outside the mesh, to target as it is.
//
// On error the destination holds what was resolved, for the access log.
func (p *Proxy) resolve(src *state.Workload, client netip.Addr, target netip.AddrPort, host string) (destination, error) {
	store := p.cfg.Store
	var svc *state.Service
	switch {
	case host != "":
		if svc = store.ServiceByHostname(host); svc == nil {
			return destination{}, fmt.Errorf("%s: %w", host, ErrUnknownHost)
		}
	default:
		svc = store.ServiceByVIP(target.Addr())
	}
	if svc != nil {
		if svc.WaypointRef != nil {
			dst := destination{service: svc, addr: target}
			if host != "" {
				if len(svc.VIPs) == 0 {
					return dst, fmt.Errorf("service %s: %w", svc.Hostname, errNoVIP)
				}
				dst.addr = netip.AddrPortFrom(svc.VIPs[0], target.Port())
			}
			wp, err := store.ServiceWaypoint(svc, dst.addr.Addr())
			if err != nil {
				return dst, fmt.Errorf("service %s: %w", svc.Hostname, err)
			}
			dst.waypoint = wp
			return dst, nil
		}
		w, port, err := store.PickEndpoint(svc, target.Port())
		if err != nil {
			return destination{service: svc}, fmt.Errorf("service %s port %d: %w", svc.Hostname, target.Port(), err)
		}
		if p.reserved[port] {
			return destination{service: svc}, fmt.Errorf("service %s port %d: target port %d: %w", svc.Hostname, target.Port(), port, ErrIllegalPort)
		}
		return destination{service: svc, workload: w, addr: netip.AddrPortFrom(w.Addrs[0], port)}, nil
	}
	if p.reserved[target.Port()] {
		return destination{}, fmt.Errorf("%v: %w", target, ErrIllegalPort)
	}
	dst := destination{workload: store.WorkloadByAddr(target.Addr()), addr: target}
	if w := dst.workload; w != nil && w.WaypointRef != nil && !store.IsFromWaypoint(w, src.ID, client) {
		wp, err := store.WorkloadWaypoint(w, target.Addr())
		if err != nil {
			return dst, fmt.Errorf("workload %s/%s: %w", w.Namespace, w.Name, err)
		}
		dst.waypoint = wp
	}
	return dst, nil
}
