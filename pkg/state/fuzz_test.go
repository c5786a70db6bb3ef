package state

import (
	"errors"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// FuzzOnUpdate feeds OnUpdate any bytes as an Address or an Authorization
// resource (issue 9 item 10): it must return an error or apply them, never
// panic, and every address a workload claims must still resolve to a
// workload that claims it. Seeds are in testdata/fuzz/FuzzOnUpdate.
func FuzzOnUpdate(f *testing.F) {
	badTD := workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY)
	badTD.GetWorkload().TrustDomain = "Not A Trust Domain!"
	for _, m := range []proto.Message{
		workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080),
		workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_UNHEALTHY), // conflicts with w0
		badTD,
		service("127.1.100.1", 80, 8080),
		wpWorkload("w3", "ns", "sa", healthy, []string{"127.1.0.3"}, nil, addressWaypoint("127.1.0.1")),
		wpService("ns", "svc", "127.1.100.1", [][2]uint32{{80, 8080}}, nil, hostnameWaypoint("ns", "svc.ns.svc.cluster.local")),
		&security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		_, isPolicy := m.(*security.Authorization)
		f.Add(b, isPolicy, "r")
	}
	f.Fuzz(func(t *testing.T, value []byte, policy bool, name string) {
		s := NewStore()
		seed := []*adspb.Resource{
			res(t, "w0", workload("w0", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)),
			res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0)),
		}
		if err := s.OnUpdate(workloadapi.AddressTypeURL, seed, nil); err != nil {
			t.Fatal(err)
		}
		typeURL := workloadapi.AddressTypeURL
		if policy {
			typeURL = workloadapi.AuthorizationTypeURL
		}
		r := &adspb.Resource{Name: name, Resource: &anypb.Any{TypeUrl: typeURL, Value: value}}
		// Added, then removed by name: both must leave a consistent index.
		for _, removed := range [][]string{nil, {name}} {
			var updated []*adspb.Resource
			if removed == nil {
				updated = []*adspb.Resource{r}
			}
			_ = s.OnUpdate(typeURL, updated, removed)
			d := s.Dump()
			for _, w := range d.Workloads {
				for _, b := range w.Addresses {
					a, _ := netip.AddrFromSlice(b)
					got := s.WorkloadByAddr(a)
					if got == nil {
						t.Fatalf("workload %q claims %s, which resolves to nothing", w.Uid, a)
					}
				}
			}
			for _, svc := range d.Services {
				sv := s.ServiceByHostname(svc.Hostname)
				if sv == nil {
					t.Fatalf("service %q not found by hostname", svc.Hostname)
				}
				for _, p := range svc.Ports {
					s.PickEndpoint(sv, uint16(p.ServicePort))
				}
				// Waypoint lookups never panic, and resolve to a pod
				// with an address, or fail with ErrUnknownWaypoint.
				for _, vip := range sv.VIPs {
					wp, err := s.ServiceWaypoint(sv, vip)
					checkWaypoint(t, wp, err)
				}
			}
			for _, w := range d.Workloads {
				for _, b := range w.Addresses {
					a, _ := netip.AddrFromSlice(b)
					got := s.WorkloadByAddr(a)
					wp, err := s.WorkloadWaypoint(got, a)
					checkWaypoint(t, wp, err)
					s.IsFromWaypoint(got, got.ID, a)
					s.IsWaypointFor(got, a, netip.MustParseAddr("127.1.100.1"))
				}
			}
			_ = s.Policies()
		}
	})
}

func checkWaypoint(t *testing.T, wp *Waypoint, err error) {
	t.Helper()
	switch {
	case err != nil && !errors.Is(err, ErrUnknownWaypoint):
		t.Fatalf("waypoint lookup = %v, want ErrUnknownWaypoint", err)
	case err == nil && wp != nil && (!wp.Addr.IsValid() || len(wp.IDs) == 0):
		t.Fatalf("waypoint = %+v, want an address and identities", wp)
	}
}
