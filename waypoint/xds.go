package waypoint

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
	"github.com/ambient-go/mesh/waypoint/proxy"
)

// policies is the xDS handler of the waypoint: Workload API addresses go
// to the Store; waypoint Authorization resources are kept by name and
// compiled (authz.CompileL7) into an immutable set on every update, which
// the data path reads without locking; so are the Services' Routes
// (proxy.CompileRoutes).
type policies struct {
	store *state.Store
	log   *slog.Logger

	mu       sync.Mutex
	raw      map[string]*waypoint.Authorization // by resource name, namespace/name
	compiled atomic.Pointer[authz.L7Policies]

	routesRaw map[string]*waypoint.Routes // by resource name, the Service key
	routes    atomic.Pointer[proxy.Routes]
}

func newPolicies(store *state.Store, log *slog.Logger) *policies {
	return &policies{store: store, log: log.With("component", "l7-policies"), raw: map[string]*waypoint.Authorization{}, routesRaw: map[string]*waypoint.Routes{}}
}

// current returns the compiled policies in force.
func (p *policies) current() *authz.L7Policies { return p.compiled.Load() }

// currentRoutes returns the compiled routes in force; nil before any.
func (p *policies) currentRoutes() *proxy.Routes { return p.routes.Load() }

// OnUpdate applies one xDS response. A response with an undecodable
// resource is rejected whole (NACK) and the previous policies (or routes)
// stay.
func (p *policies) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	switch typeURL {
	case workloadapi.WaypointAuthorizationTypeURL:
	case workloadapi.WaypointRoutesTypeURL:
		return p.updateRoutes(updated, removed)
	default:
		return p.store.OnUpdate(typeURL, updated, removed)
	}
	decoded := make([]*waypoint.Authorization, len(updated))
	for i, r := range updated {
		a := &waypoint.Authorization{}
		if r.GetResource() == nil {
			return fmt.Errorf("resource %q: empty", r.GetName())
		}
		if err := r.GetResource().UnmarshalTo(a); err != nil {
			return fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
		decoded[i] = a
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, name := range removed {
		delete(p.raw, name)
	}
	for i, a := range decoded {
		p.raw[updated[i].GetName()] = a
	}
	all := make([]*waypoint.Authorization, 0, len(p.raw))
	for _, name := range p.sortedLocked() {
		all = append(all, p.raw[name])
	}
	p.compiled.Store(authz.CompileL7(all))
	p.log.Info("waypoint policies updated", "policies", len(all))
	return nil
}

func (p *policies) sortedLocked() []string {
	names := make([]string, 0, len(p.raw))
	for n := range p.raw {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// updateRoutes applies a Routes response: decoded whole first, then
// compiled with every route held into a new table swapped in at once.
func (p *policies) updateRoutes(updated []*adspb.Resource, removed []string) error {
	decoded := make([]*waypoint.Routes, len(updated))
	for i, r := range updated {
		rt := &waypoint.Routes{}
		if r.GetResource() == nil {
			return fmt.Errorf("resource %q: empty", r.GetName())
		}
		if err := r.GetResource().UnmarshalTo(rt); err != nil {
			return fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
		if rt.GetService() == "" {
			rt.Service = r.GetName() // the resource name is the Service key
		}
		decoded[i] = rt
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, name := range removed {
		delete(p.routesRaw, name)
	}
	for i, rt := range decoded {
		p.routesRaw[updated[i].GetName()] = rt
	}
	names := p.sortedRoutesLocked()
	all := make([]*waypoint.Routes, 0, len(names))
	for _, name := range names {
		all = append(all, p.routesRaw[name])
	}
	var compiled *proxy.Routes
	if len(all) > 0 {
		compiled = proxy.CompileRoutes(all)
	}
	p.routes.Store(compiled) // nil when none: the data path's cost stays a nil check
	p.log.Info("waypoint routes updated", "services", len(all))
	return nil
}

func (p *policies) sortedRoutesLocked() []string {
	names := make([]string, 0, len(p.routesRaw))
	for n := range p.routesRaw {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
