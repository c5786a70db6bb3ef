package state

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// GatewayAddress is a parsed workloadapi.GatewayAddress: the waypoint a
// Workload or Service names, either by hostname (the waypoint's Service,
// "Namespace/Hostname") or by address (a waypoint Service's VIP or a
// waypoint pod's IP).
type GatewayAddress struct {
	// Namespace and Hostname are set in the hostname form.
	Namespace string
	Hostname  string
	// Network and Addr are set in the address form.
	Network string
	Addr    netip.Addr
	// HBONEPort is hbone_mtls_port: the service port of the waypoint's
	// HBONE listener (15008).
	HBONEPort uint16
}

// IsHostname reports whether g is in the hostname form.
func (g *GatewayAddress) IsHostname() bool { return !g.Addr.IsValid() }

// String is "namespace/hostname:port" or "ip:port".
func (g *GatewayAddress) String() string {
	port := strconv.Itoa(int(g.HBONEPort))
	if g.IsHostname() {
		return g.Namespace + "/" + g.Hostname + ":" + port
	}
	return netip.AddrPortFrom(g.Addr, g.HBONEPort).String()
}

// parseGatewayAddress validates a GatewayAddress as Istio's ztunnel does
// (a destination is required; an address must be 4 or 16 bytes) and
// refuses a port that does not fit 16 bits. nil is no waypoint.
func parseGatewayAddress(g *workloadapi.GatewayAddress) (*GatewayAddress, error) {
	if g == nil {
		return nil, nil
	}
	if g.HboneMtlsPort > 65535 {
		return nil, fmt.Errorf("hbone_mtls_port %d out of range", g.HboneMtlsPort)
	}
	out := &GatewayAddress{HBONEPort: uint16(g.HboneMtlsPort)}
	switch d := g.Destination.(type) {
	case *workloadapi.GatewayAddress_Hostname:
		out.Namespace, out.Hostname = d.Hostname.GetNamespace(), d.Hostname.GetHostname()
	case *workloadapi.GatewayAddress_Address:
		a, ok := netip.AddrFromSlice(d.Address.GetAddress())
		if !ok {
			return nil, fmt.Errorf("bad address %x", d.Address.GetAddress())
		}
		out.Network, out.Addr = d.Address.GetNetwork(), a.Unmap()
	default:
		return nil, errors.New("no destination")
	}
	return out, nil
}

// Waypoint is a waypoint resolved for one connection: the waypoint pod
// to open HBONE to, and the identities it may present.
type Waypoint struct {
	// Ref is the GatewayAddress it was resolved from.
	Ref *GatewayAddress
	// Workload is the waypoint pod picked.
	Workload *Workload
	// Service is the waypoint's Service when Ref names one (by hostname
	// or VIP); nil when Ref names a workload.
	Service *Service
	// Addr is the pod's IP and the target port of the Service's
	// HBONEPort (Ref.HBONEPort itself when Ref names a workload).
	Addr netip.AddrPort
	// IDs are the identities the waypoint may present: the Service's
	// subject_alt_names that are SPIFFE IDs, then the pod's identity.
	IDs []spiffeid.ID
}

// ErrUnknownWaypoint is returned (wrapped) when a waypoint reference does
// not resolve to a reachable waypoint pod: no such Service or workload,
// or no healthy endpoint serving its HBONE port. As in Istio, the
// connection then fails; it never silently goes direct.
var ErrUnknownWaypoint = errors.New("unknown waypoint")

// ServiceWaypoint resolves svc's waypoint for a connection to dst (the
// address the client connected to; its family picks the waypoint pod's
// address). It returns nil, nil when svc has no waypoint.
func (s *Store) ServiceWaypoint(svc *Service, dst netip.Addr) (*Waypoint, error) {
	if svc.WaypointRef == nil {
		return nil, nil
	}
	return s.ResolveWaypoint(svc.WaypointRef, dst)
}

// WorkloadWaypoint resolves w's own waypoint (a workload waypoint) for a
// connection to dst. It returns nil, nil when w has no waypoint.
func (s *Store) WorkloadWaypoint(w *Workload, dst netip.Addr) (*Waypoint, error) {
	if w.WaypointRef == nil {
		return nil, nil
	}
	return s.ResolveWaypoint(w.WaypointRef, dst)
}

// ResolveWaypoint resolves ref as Istio's ztunnel does (state.rs
// fetch_waypoint): the hostname form names a Service (or, failing that, a
// workload with that hostname in that namespace); the address form a
// Service VIP (or, failing that, a workload IP). A Service yields one of
// its HEALTHY endpoints serving ref.HBONEPort, round robin, at its target
// port; a workload yields itself at ref.HBONEPort. dst is the address the
// client connected to: the waypoint pod's address of its family is
// preferred (for the address form, ref.Addr's family).
func (s *Store) ResolveWaypoint(ref *GatewayAddress, dst netip.Addr) (*Waypoint, error) {
	var (
		svc *Service
		w   *Workload
	)
	s.mu.RLock()
	if ref.IsHostname() {
		if svc = s.services[ref.Namespace+"/"+ref.Hostname]; svc == nil {
			w = s.workloadByHostnameLocked(ref.Namespace, ref.Hostname)
		}
	} else {
		dst = ref.Addr
		if svc = s.byVIP.get(ref.Addr); svc == nil {
			w = s.byAddr.get(ref.Addr)
		}
	}
	s.mu.RUnlock()

	wp := &Waypoint{Ref: ref, Service: svc}
	switch {
	case svc != nil:
		ep, port, err := s.PickEndpoint(svc, ref.HBONEPort)
		if err != nil {
			return nil, fmt.Errorf("waypoint %s: %w: %w", ref, ErrUnknownWaypoint, err)
		}
		wp.Workload = ep
		wp.Addr = netip.AddrPortFrom(pickAddr(ep.Addrs, dst), port)
		wp.IDs = spiffeIDs(svc.SubjectAltNames)
	case w != nil:
		if len(w.Addrs) == 0 {
			return nil, fmt.Errorf("waypoint %s: %w: workload %s has no address", ref, ErrUnknownWaypoint, w.Uid)
		}
		wp.Workload = w
		wp.Addr = netip.AddrPortFrom(pickAddr(w.Addrs, dst), ref.HBONEPort)
	default:
		return nil, fmt.Errorf("waypoint %s: %w: not found", ref, ErrUnknownWaypoint)
	}
	wp.IDs = append(wp.IDs, wp.Workload.ID)
	return wp, nil
}

// IsFromWaypoint reports whether a connection to dst from the workload
// with identity srcID at srcIP comes from dst's own waypoint: one of the
// workloads dst.WaypointRef names (the workload itself, or any endpoint of
// the Service, healthy or not) has that identity and that address. The
// source ztunnel then sends workload-addressed traffic straight to dst,
// so that it crosses the waypoint once (Istio's check_from_waypoint).
func (s *Store) IsFromWaypoint(dst *Workload, srcID spiffeid.ID, srcIP netip.Addr) bool {
	if dst.WaypointRef == nil {
		return false
	}
	srcIP = srcIP.Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	svc, w := s.findGatewayLocked(dst.WaypointRef)
	is := func(w *Workload) bool { return w.ID == srcID && hasAddr(w.Addrs, srcIP) }
	switch {
	case w != nil:
		return is(w)
	case svc != nil:
		for _, ep := range s.endpoints[svc.Key] {
			if is(ep) {
				return true
			}
		}
	}
	return false
}

// IsWaypointFor reports whether the local workload, reached at localIP,
// is the waypoint of whatever target names (a workload IP, else a Service
// VIP): target's waypoint is a Service of which local is an endpoint, or
// a workload that has localIP. The destination ztunnel accepts a CONNECT
// whose :authority is not its own address only then (Istio's
// validate_destination).
func (s *Store) IsWaypointFor(local *Workload, localIP, target netip.Addr) bool {
	localIP, target = localIP.Unmap(), target.Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ref *GatewayAddress
	if w := s.byAddr.get(target); w != nil {
		ref = w.WaypointRef
	} else if svc := s.byVIP.get(target); svc != nil {
		ref = svc.WaypointRef
	}
	if ref == nil {
		return false
	}
	svc, w := s.findGatewayLocked(ref)
	switch {
	case w != nil:
		return hasAddr(w.Addrs, localIP)
	case svc != nil:
		return s.endpoints[svc.Key][local.Uid] != nil
	}
	return false
}

// findGatewayLocked finds what ref names, as Istio's find_destination
// does: an address is a workload IP before a Service VIP; a hostname a
// Service before a workload's hostname. Called with mu held.
func (s *Store) findGatewayLocked(ref *GatewayAddress) (*Service, *Workload) {
	if ref.IsHostname() {
		if svc := s.services[ref.Namespace+"/"+ref.Hostname]; svc != nil {
			return svc, nil
		}
		return nil, s.workloadByHostnameLocked(ref.Namespace, ref.Hostname)
	}
	if w := s.byAddr.get(ref.Addr); w != nil {
		return nil, w
	}
	return s.byVIP.get(ref.Addr), nil
}

// workloadByHostnameLocked returns the workload with this hostname in
// namespace ns (the lowest uid if several), or nil. It scans every
// workload: waypoints named this way are rare. Called with mu held.
func (s *Store) workloadByHostnameLocked(ns, host string) *Workload {
	if host == "" {
		return nil
	}
	var found *Workload
	for _, w := range s.workloads {
		if w.Hostname == host && w.Namespace == ns && (found == nil || w.Uid < found.Uid) {
			found = w
		}
	}
	return found
}

// pickAddr returns want if addrs holds it, else the first address of
// want's family, else the first address.
func pickAddr(addrs []netip.Addr, want netip.Addr) netip.Addr {
	if !want.IsValid() {
		return addrs[0]
	}
	if hasAddr(addrs, want) {
		return want
	}
	for _, a := range addrs {
		if a.Is4() == want.Is4() {
			return a
		}
	}
	return addrs[0]
}

func hasAddr(addrs []netip.Addr, a netip.Addr) bool {
	for _, x := range addrs {
		if x == a {
			return true
		}
	}
	return false
}

// spiffeIDs returns the SANs that are SPIFFE IDs; others are ignored, as
// Istio's ztunnel ignores them.
func spiffeIDs(sans []string) []spiffeid.ID {
	var ids []spiffeid.ID
	for _, san := range sans {
		if id, err := spiffeid.FromString(san); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}
