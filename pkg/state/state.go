// Package state holds what a proxy (ztunnel or waypoint) knows of the mesh: the workloads,
// services and authorization policies that istiod-lite serves over xDS.
//
// Store applies xDS deltas (it is the xds.Handler of ztunnel's client) and
// answers the data path's lookups: which workload or service an IP belongs
// to, and which endpoint of a service to dial. A rejected update leaves the
// previous state in place, and a lost connection to istiod-lite leaves the
// whole store untouched, so ztunnel keeps working on its last good config.
package state

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// Workload is a workload as the data path uses it: the proto plus what is
// derived from it once per update.
type Workload struct {
	*workloadapi.Workload
	Addrs []netip.Addr
	// ID is the workload's SPIFFE identity.
	ID spiffeid.ID
	// WaypointRef is the parsed Waypoint (a workload waypoint); nil when
	// it has none.
	WaypointRef *GatewayAddress
}

// Service is a service with its parsed VIPs.
type Service struct {
	*workloadapi.Service
	// Key is "namespace/hostname", the xDS resource name.
	Key  string
	VIPs []netip.Addr
	// WaypointRef is the parsed Waypoint; nil when it has none.
	WaypointRef *GatewayAddress
}

// TargetPort returns the target port the service declares for servicePort:
// 0 when the port is named (each workload then says), and ok=false when the
// service has no such port.
func (s *Service) TargetPort(servicePort uint16) (target uint16, ok bool) {
	for _, p := range s.Ports {
		if p.ServicePort == uint32(servicePort) {
			return uint16(p.TargetPort), true
		}
	}
	return 0, false
}

// Store is ztunnel's view of the mesh. The zero value is not usable; call
// NewStore.
type Store struct {
	mu        sync.RWMutex
	log       *slog.Logger
	workloads map[string]*Workload            // by uid
	byAddr    *claims[netip.Addr, *Workload]  // by pod IP (default network); see workloadWins
	services  map[string]*Service             // by namespace/hostname
	byVIP     *claims[netip.Addr, *Service]   // by VIP; see serviceWins
	byHost    *claims[string, *Service]       // by hostname (FQDNs hold the namespace)
	endpoints map[string]map[string]*Workload // service key → uid → workload
	policies  map[string]*security.Authorization
	kinds     map[string]byte // Address resource name → 'w' or 's'

	rr        sync.Map // service key → *atomic.Uint64, round robin cursor
	version   atomic.Uint64
	listeners []func()

	// picks caches PickEndpoint's sorted candidates per service and port:
	// an immutable map replaced on a miss (copy on write, under mu's read
	// lock) and dropped by every address update (under mu's write lock),
	// so a hit costs one atomic load and no allocation.
	picks atomic.Pointer[map[pickKey]*pickSet]
}

// NewStore returns an empty store. It logs nothing until SetLogger.
//
// Two workloads may claim one IP at once (a pod's IP reused by a new pod
// before the old one's removal arrives), and two services one VIP or
// hostname. The store keeps every claimant: a lookup returns the winner —
// for workloads a HEALTHY one before others, then the lowest uid; for
// services the lowest namespace/hostname — and when it leaves, the next
// claimant, so an in-mesh workload is never taken for an address outside
// the mesh because another once claimed its IP. Each conflict is logged
// (Warn) once when it appears or changes, and listed in Dump.
func NewStore() *Store {
	name := func(w *Workload) string { return w.Uid }
	return &Store{
		log:       slog.New(slog.DiscardHandler),
		workloads: map[string]*Workload{},
		byAddr:    newClaims[netip.Addr](workloadWins, name),
		services:  map[string]*Service{},
		byVIP:     newClaims[netip.Addr](serviceWins, func(s *Service) string { return s.Key }),
		byHost:    newClaims[string](serviceWins, func(s *Service) string { return s.Key }),
		endpoints: map[string]map[string]*Workload{},
		policies:  map[string]*security.Authorization{},
		kinds:     map[string]byte{},
	}
}

// SetLogger sets the logger of address conflicts; call it before the
// store receives updates.
func (s *Store) SetLogger(log *slog.Logger) {
	s.mu.Lock()
	s.log = log.With("component", "state")
	s.mu.Unlock()
}

// OnChange registers f to be called (without the store's lock) after every
// applied update. Register before the store receives updates.
func (s *Store) OnChange(f func()) {
	s.mu.Lock()
	s.listeners = append(s.listeners, f)
	s.mu.Unlock()
}

// Version counts the updates applied so far.
func (s *Store) Version() uint64 { return s.version.Load() }

// OnUpdate applies one xDS response. It decodes every resource first and
// changes nothing if any of them is invalid, so a bad push is NACKed and the
// last good state is kept.
func (s *Store) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	switch typeURL {
	case workloadapi.AddressTypeURL:
		return s.updateAddresses(updated, removed)
	case workloadapi.AuthorizationTypeURL:
		return s.updatePolicies(updated, removed)
	default:
		return fmt.Errorf("unknown type %q", typeURL)
	}
}

func (s *Store) updateAddresses(updated []*adspb.Resource, removed []string) error {
	var (
		workloads []*Workload
		services  []*Service
	)
	for _, r := range updated {
		addr := &workloadapi.Address{}
		if r.GetResource() == nil {
			return fmt.Errorf("resource %q: empty", r.GetName())
		}
		if err := r.GetResource().UnmarshalTo(addr); err != nil {
			return fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
		switch t := addr.Type.(type) {
		case *workloadapi.Address_Workload:
			w, err := newWorkload(t.Workload)
			if err != nil {
				return fmt.Errorf("workload %q: %w", r.GetName(), err)
			}
			workloads = append(workloads, w)
		case *workloadapi.Address_Service:
			svc, err := newService(t.Service)
			if err != nil {
				return fmt.Errorf("service %q: %w", r.GetName(), err)
			}
			services = append(services, svc)
		default:
			return fmt.Errorf("resource %q: neither a workload nor a service", r.GetName())
		}
	}

	s.mu.Lock()
	for _, name := range removed {
		switch s.kinds[name] {
		case 'w':
			s.removeWorkload(name)
		case 's':
			s.removeService(name)
		}
	}
	for _, w := range workloads {
		s.removeWorkload(w.Uid)
		s.workloads[w.Uid] = w
		s.kinds[w.Uid] = 'w'
		for _, a := range w.Addrs {
			s.byAddr.add(a, w)
		}
		// A workload without addresses (a pod scheduled before it has an
		// IP) is found by uid only: it is no endpoint of its services
		// until its addresses arrive.
		if len(w.Addrs) == 0 {
			continue
		}
		for key := range w.Services {
			eps := s.endpoints[key]
			if eps == nil {
				eps = map[string]*Workload{}
				s.endpoints[key] = eps
			}
			eps[w.Uid] = w
		}
	}
	for _, svc := range services {
		s.removeService(svc.Key)
		s.services[svc.Key] = svc
		s.kinds[svc.Key] = 's'
		for _, a := range svc.VIPs {
			s.byVIP.add(a, svc)
		}
		s.byHost.add(svc.Hostname, svc)
	}
	s.picks.Store(nil)
	s.byAddr.report(s.log, "workload address", addrString)
	s.byVIP.report(s.log, "service VIP", addrString)
	s.byHost.report(s.log, "service hostname", hostString)
	s.mu.Unlock()
	s.changed()
	return nil
}

// removeWorkload and removeService are called with mu held.
func (s *Store) removeWorkload(uid string) {
	old := s.workloads[uid]
	if old == nil {
		return
	}
	delete(s.workloads, uid)
	delete(s.kinds, uid)
	for _, a := range old.Addrs {
		s.byAddr.remove(a, old)
	}
	for key := range old.Services {
		if eps := s.endpoints[key]; eps != nil {
			delete(eps, uid)
			if len(eps) == 0 {
				delete(s.endpoints, key)
			}
		}
	}
}

func (s *Store) removeService(key string) {
	old := s.services[key]
	if old == nil {
		return
	}
	delete(s.services, key)
	delete(s.kinds, key)
	for _, a := range old.VIPs {
		s.byVIP.remove(a, old)
	}
	s.byHost.remove(old.Hostname, old)
}

func (s *Store) updatePolicies(updated []*adspb.Resource, removed []string) error {
	policies := make([]*security.Authorization, 0, len(updated))
	for _, r := range updated {
		p := &security.Authorization{}
		if r.GetResource() == nil {
			return fmt.Errorf("resource %q: empty", r.GetName())
		}
		if err := r.GetResource().UnmarshalTo(p); err != nil {
			return fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
		policies = append(policies, p)
	}
	s.mu.Lock()
	for _, name := range removed {
		delete(s.policies, name)
	}
	for i, p := range policies {
		s.policies[updated[i].GetName()] = p
	}
	s.mu.Unlock()
	s.changed()
	return nil
}

func (s *Store) changed() {
	s.version.Add(1)
	s.mu.RLock()
	ls := s.listeners
	s.mu.RUnlock()
	for _, f := range ls {
		f()
	}
}

func newWorkload(w *workloadapi.Workload) (*Workload, error) {
	if w == nil {
		return nil, fmt.Errorf("no workload")
	}
	if w.Uid == "" {
		return nil, fmt.Errorf("no uid")
	}
	out := &Workload{Workload: w}
	for _, b := range w.Addresses {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("bad address %x", b)
		}
		out.Addrs = append(out.Addrs, a.Unmap())
	}
	td := w.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	id, err := spiffeid.FromSegments(trustDomain, "ns", w.Namespace, "sa", sa)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	out.ID = id
	if out.WaypointRef, err = parseGatewayAddress(w.Waypoint); err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	return out, nil
}

func newService(svc *workloadapi.Service) (*Service, error) {
	if svc.GetHostname() == "" {
		return nil, fmt.Errorf("no hostname")
	}
	out := &Service{Service: svc, Key: svc.Namespace + "/" + svc.Hostname}
	for _, na := range svc.Addresses {
		a, ok := netip.AddrFromSlice(na.GetAddress())
		if !ok {
			return nil, fmt.Errorf("bad address %x", na.GetAddress())
		}
		out.VIPs = append(out.VIPs, a.Unmap())
	}
	wp, err := parseGatewayAddress(svc.Waypoint)
	if err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	out.WaypointRef = wp
	return out, nil
}

// WorkloadByUID returns the workload with this uid, or nil. It finds a
// workload that has no addresses yet, which the address lookups do not.
func (s *Store) WorkloadByUID(uid string) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[uid]
}

// WorkloadByAddr returns the workload that has IP a, or nil.
func (s *Store) WorkloadByAddr(a netip.Addr) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byAddr.get(a.Unmap())
}

// ServiceByVIP returns the service that has VIP a, or nil.
func (s *Store) ServiceByVIP(a netip.Addr) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byVIP.get(a.Unmap())
}

// ServiceByHostname returns the service with this FQDN (in any namespace),
// or nil; used for SOCKS5 requests that name a host.
func (s *Store) ServiceByHostname(host string) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byHost.get(host)
}

// Errors returned by PickEndpoint.
var (
	ErrNoPort      = fmt.Errorf("service has no such port")
	ErrNoEndpoints = fmt.Errorf("service has no healthy endpoint")
)

// PickEndpoint chooses, round robin, a healthy endpoint of svc that serves
// servicePort, and returns it with the port to dial on it. The candidates
// are the HEALTHY endpoints with an address, sorted by uid; the cursor is
// kept per service.
func (s *Store) PickEndpoint(svc *Service, servicePort uint16) (*Workload, uint16, error) {
	k := pickKey{svc, servicePort}
	ps := s.pickSet(k)
	if ps == nil {
		return nil, 0, ErrNoPort
	}
	if len(ps.cands) == 0 {
		return nil, 0, ErrNoEndpoints
	}
	n := ps.rr.Add(1) - 1
	c := ps.cands[n%uint64(len(ps.cands))]
	return c.Workload, c.Port, nil
}

// Endpoint is a candidate of PickEndpoint: a healthy workload with an
// address and the port to dial on it.
type Endpoint struct {
	Workload *Workload
	Port     uint16
}

// Endpoints returns the candidates PickEndpoint chooses from for svc and
// servicePort (HEALTHY endpoints with an address, sorted by uid), for
// callers that balance by their own rule (the waypoint). The slice is
// shared and must not be modified; an update replaces it rather than
// changes it. Like PickEndpoint, a call allocates nothing once the list is
// cached.
func (s *Store) Endpoints(svc *Service, servicePort uint16) ([]Endpoint, error) {
	ps := s.pickSet(pickKey{svc, servicePort})
	if ps == nil {
		return nil, ErrNoPort
	}
	if len(ps.cands) == 0 {
		return nil, ErrNoEndpoints
	}
	return ps.cands, nil
}

// pickKey names a cached candidate list: the service as the caller holds
// it (its ports declare the target port) and the service port.
type pickKey struct {
	svc  *Service
	port uint16
}

// pickSet is the cached outcome of one pickKey; nil when the service has
// no such port.
type pickSet struct {
	cands []Endpoint
	rr    *atomic.Uint64 // the service's cursor (s.rr)
}

// pickSet returns k's candidates, from the cache or built and cached.
func (s *Store) pickSet(k pickKey) *pickSet {
	if m := s.picks.Load(); m != nil {
		if ps, ok := (*m)[k]; ok {
			return ps
		}
	}
	// Built under the read lock so that an update (write lock, which
	// drops the cache) cannot slip between reading the endpoints and
	// caching what was read.
	s.mu.RLock()
	defer s.mu.RUnlock()
	ps := s.buildPickSet(k)
	for {
		old := s.picks.Load()
		m := make(map[pickKey]*pickSet, 1)
		if old != nil {
			if cur, ok := (*old)[k]; ok {
				return cur
			}
			maps.Copy(m, *old)
		}
		m[k] = ps
		if s.picks.CompareAndSwap(old, &m) {
			return ps
		}
	}
}

// buildPickSet lists k's candidates; called with mu held for reading.
func (s *Store) buildPickSet(k pickKey) *pickSet {
	svc, servicePort := k.svc, k.port
	declared, ok := svc.TargetPort(servicePort)
	if !ok {
		return nil
	}
	cands := make([]Endpoint, 0, len(s.endpoints[svc.Key]))
	for _, w := range s.endpoints[svc.Key] {
		if w.Status != workloadapi.WorkloadStatus_HEALTHY || len(w.Addrs) == 0 {
			continue
		}
		port := declared
		if pl := w.Services[svc.Key]; pl != nil {
			for _, p := range pl.Ports {
				if p.ServicePort == uint32(servicePort) && p.TargetPort != 0 {
					port = uint16(p.TargetPort)
				}
			}
		}
		if port == 0 {
			continue
		}
		cands = append(cands, Endpoint{w, port})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].Workload.Uid < cands[j].Workload.Uid })
	v, _ := s.rr.LoadOrStore(svc.Key, new(atomic.Uint64))
	return &pickSet{cands: cands, rr: v.(*atomic.Uint64)}
}

// NodeWorkloads returns the workloads scheduled on node, sorted by uid.
func (s *Store) NodeWorkloads(node string) []*Workload {
	s.mu.RLock()
	var out []*Workload
	for _, w := range s.workloads {
		if w.Node == node {
			out = append(out, w)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Workload) int {
		if a.Uid < b.Uid {
			return -1
		}
		if a.Uid > b.Uid {
			return 1
		}
		return 0
	})
	return out
}

// Policies returns the authorization policies, keyed by namespace/name.
func (s *Store) Policies() map[string]*security.Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]*security.Authorization, len(s.policies))
	for k, v := range s.policies {
		out[k] = v
	}
	return out
}

// Dump is the store's content for /config_dump.
type Dump struct {
	Workloads []*workloadapi.Workload   `json:"workloads"`
	Services  []*workloadapi.Service    `json:"services"`
	Policies  []*security.Authorization `json:"policies"`
	// Conflicts are the addresses claimed by several workloads or
	// services, with the one lookups return.
	Conflicts []Conflict `json:"conflicts,omitempty"`
}

// Dump returns a snapshot of the store, sorted by key.
func (s *Store) Dump() Dump {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var d Dump
	for _, k := range sortedKeys(s.workloads) {
		d.Workloads = append(d.Workloads, s.workloads[k].Workload)
	}
	for _, k := range sortedKeys(s.services) {
		d.Services = append(d.Services, s.services[k].Service)
	}
	for _, k := range sortedKeys(s.policies) {
		d.Policies = append(d.Policies, s.policies[k])
	}
	d.Conflicts = append(d.Conflicts, s.byAddr.conflicts("workload address", addrString)...)
	d.Conflicts = append(d.Conflicts, s.byVIP.conflicts("service VIP", addrString)...)
	d.Conflicts = append(d.Conflicts, s.byHost.conflicts("service hostname", hostString)...)
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
