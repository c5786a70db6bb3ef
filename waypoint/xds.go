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
)

// policies is the xDS handler of the waypoint: Workload API addresses go
// to the Store; waypoint Authorization resources are kept by name and
// compiled (authz.CompileL7) into an immutable set on every update, which
// the data path reads without locking.
type policies struct {
	store *state.Store
	log   *slog.Logger

	mu       sync.Mutex
	raw      map[string]*waypoint.Authorization // by resource name, namespace/name
	compiled atomic.Pointer[authz.L7Policies]
}

func newPolicies(store *state.Store, log *slog.Logger) *policies {
	return &policies{store: store, log: log.With("component", "l7-policies"), raw: map[string]*waypoint.Authorization{}}
}

// current returns the compiled policies in force.
func (p *policies) current() *authz.L7Policies { return p.compiled.Load() }

// OnUpdate applies one xDS response. A response with an undecodable
// resource is rejected whole (NACK) and the previous policies stay.
func (p *policies) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	if typeURL != workloadapi.WaypointAuthorizationTypeURL {
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
