package waypoint

import (
	"log/slog"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func routesResource(t *testing.T, name string, r *waypoint.Routes) *adspb.Resource {
	t.Helper()
	a, err := anypb.New(r)
	if err != nil {
		t.Fatal(err)
	}
	return &adspb.Resource{Name: name, Version: "1", Resource: a}
}

// TestRoutesUpdates: Routes resources are held by name and compiled into
// one table swapped in whole; a response with an undecodable resource is
// rejected and the previous routes stay; removing the last leaves none
// (nil: the data path's cost is a nil check).
func TestRoutesUpdates(t *testing.T) {
	p := newPolicies(state.NewStore(), slog.New(slog.DiscardHandler))
	if p.currentRoutes() != nil {
		t.Fatal("currentRoutes() before any update = non-nil, want nil")
	}
	a := &waypoint.Routes{Service: "default/a.default.svc.cluster.local"}
	b := &waypoint.Routes{} // service left out: the resource name is the key
	err := p.OnUpdate(workloadapi.WaypointRoutesTypeURL, []*adspb.Resource{
		routesResource(t, "default/a.default.svc.cluster.local", a),
		routesResource(t, "default/b.default.svc.cluster.local", b),
	}, nil)
	if err != nil {
		t.Fatalf("OnUpdate() error = %v", err)
	}
	first := p.currentRoutes()
	if first == nil {
		t.Fatal("currentRoutes() after an update = nil")
	}
	if got := p.sortedRoutesLocked(); len(got) != 2 || p.routesRaw["default/b.default.svc.cluster.local"].GetService() != "default/b.default.svc.cluster.local" {
		t.Errorf("routes held = %v, service of b %q, want both, b keyed by its name", got, p.routesRaw["default/b.default.svc.cluster.local"].GetService())
	}

	bad := &adspb.Resource{Name: "default/c", Resource: &anypb.Any{TypeUrl: workloadapi.WaypointRoutesTypeURL, Value: []byte{0xff}}}
	if err := p.OnUpdate(workloadapi.WaypointRoutesTypeURL, []*adspb.Resource{bad}, []string{"default/a.default.svc.cluster.local"}); err == nil {
		t.Error("OnUpdate(undecodable) error = nil, want an error (NACK)")
	}
	if p.currentRoutes() != first || len(p.routesRaw) != 2 {
		t.Errorf("after a rejected update: routes changed (%d held), want the previous ones", len(p.routesRaw))
	}

	if err := p.OnUpdate(workloadapi.WaypointRoutesTypeURL, nil, []string{"default/a.default.svc.cluster.local", "default/b.default.svc.cluster.local"}); err != nil {
		t.Fatalf("OnUpdate(remove all) error = %v", err)
	}
	if p.currentRoutes() != nil {
		t.Error("currentRoutes() after removing every Routes = non-nil, want nil")
	}
}
