package state

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func res(t *testing.T, name string, m proto.Message) *adspb.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &adspb.Resource{Name: name, Resource: a}
}

func workload(uid, ip string, status workloadapi.WorkloadStatus, svcPorts ...uint32) *workloadapi.Address {
	w := &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "ns", ServiceAccount: "sa", Node: "n1",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()},
		Status:    status,
		Services:  map[string]*workloadapi.PortList{},
	}
	if len(svcPorts) > 0 {
		pl := &workloadapi.PortList{}
		for i := 0; i < len(svcPorts); i += 2 {
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: svcPorts[i], TargetPort: svcPorts[i+1]})
		}
		w.Services["ns/svc.ns.svc.cluster.local"] = pl
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func service(vip string, ports ...uint32) *workloadapi.Address {
	s := &workloadapi.Service{
		Name: "svc", Namespace: "ns", Hostname: "svc.ns.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
	}
	for i := 0; i < len(ports); i += 2 {
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

func TestStoreLookupsAndRoundRobin(t *testing.T) {
	s := NewStore()
	err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)),
		res(t, "w2", workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY, 80, 9090)),
		res(t, "w3", workload("w3", "127.1.0.3", workloadapi.WorkloadStatus_UNHEALTHY, 80, 8080)),
		res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0, 81, 7000)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := s.WorkloadByAddr(netip.MustParseAddr("127.1.0.2")); w == nil || w.Uid != "w2" || w.ID.String() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Errorf("WorkloadByAddr(127.1.0.2) = %+v, want w2 with its SPIFFE ID", w)
	}
	svc := s.ServiceByVIP(netip.MustParseAddr("127.1.100.1"))
	if svc == nil || s.ServiceByHostname("svc.ns.svc.cluster.local") != svc {
		t.Fatal("service not found by VIP and hostname")
	}

	got := map[string]int{}
	for range 4 {
		w, port, err := s.PickEndpoint(svc, 80)
		if err != nil {
			t.Fatal(err)
		}
		got[w.Uid+":"+netip.AddrPortFrom(w.Addrs[0], port).String()]++
	}
	want := map[string]int{"w1:127.1.0.1:8080": 2, "w2:127.1.0.2:9090": 2}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("PickEndpoint x4 = %v, want %v (healthy endpoints only, per-workload target ports)", got, want)
			break
		}
	}
	if _, _, err := s.PickEndpoint(svc, 82); err != ErrNoPort {
		t.Errorf("PickEndpoint(port 82) = %v, want ErrNoPort", err)
	}
	// Port 81 is declared by the service, but no workload lists it: the
	// service's numeric target port applies.
	if w, port, err := s.PickEndpoint(svc, 81); err != nil || port != 7000 || w == nil {
		t.Errorf("PickEndpoint(port 81) = %v, %d, %v; want an endpoint on 7000", w, port, err)
	}

	// Removal, and an invalid update that leaves the state untouched.
	if err := s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{"w1"}); err != nil {
		t.Fatal(err)
	}
	if s.WorkloadByAddr(netip.MustParseAddr("127.1.0.1")) != nil {
		t.Error("w1 still found after removal")
	}
	bad := &adspb.Resource{Name: "x", Resource: &anypb.Any{TypeUrl: workloadapi.AddressTypeURL, Value: []byte{0xff, 0xff}}}
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{bad}, []string{"w2"}); err == nil {
		t.Error("OnUpdate accepted an undecodable resource")
	}
	if s.WorkloadByAddr(netip.MustParseAddr("127.1.0.2")) == nil {
		t.Error("a rejected update removed w2")
	}
	for range 3 {
		if w, _, err := s.PickEndpoint(svc, 80); err != nil || w.Uid != "w2" {
			t.Errorf("PickEndpoint after removing w1 = %v, %v; want w2", w, err)
		}
	}
}

// PickEndpoint(svc, 80) over updates = the HEALTHY endpoints in uid order,
// round robin: the cached candidates follow every address update.
func TestPickEndpointFollowsUpdates(t *testing.T) {
	s := NewStore()
	update := func(rs ...*adspb.Resource) {
		t.Helper()
		if err := s.OnUpdate(workloadapi.AddressTypeURL, rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	picks := func(svc *Service, n int) []string {
		t.Helper()
		var got []string
		for range n {
			w, port, err := s.PickEndpoint(svc, 80)
			if err != nil {
				got = append(got, err.Error())
				continue
			}
			got = append(got, w.Uid+":"+strconv.Itoa(int(port)))
		}
		return got
	}
	update(
		res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0)),
		res(t, "w2", workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY, 80, 9090)),
		res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)),
	)
	svc := s.ServiceByVIP(netip.MustParseAddr("127.1.100.1"))
	steps := []struct {
		name   string
		update []*adspb.Resource
		want   []string
	}{
		{"two healthy, uid order", nil, []string{"w1:8080", "w2:9090", "w1:8080", "w2:9090"}},
		{"w1 unhealthy", []*adspb.Resource{res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_UNHEALTHY, 80, 8080))},
			[]string{"w2:9090", "w2:9090"}},
		{"w0 added, new port for w2", []*adspb.Resource{
			res(t, "w0", workload("w0", "127.1.0.3", workloadapi.WorkloadStatus_HEALTHY, 80, 7070)),
			res(t, "w2", workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY, 80, 9191)),
		}, nil},
	}
	for _, st := range steps {
		update(st.update...)
		want := st.want
		if want == nil { // the cursor carries on: either endpoint may come first
			want = []string{"w0:7070", "w2:9191", "w0:7070", "w2:9191"}
			if got := picks(svc, 1); got[0] == want[1] {
				want = []string{"w0:7070", "w2:9191", "w0:7070"}
			} else {
				want = []string{"w2:9191", "w0:7070", "w2:9191"}
			}
		}
		if diff := cmp.Diff(want, picks(svc, len(want))); diff != "" {
			t.Errorf("%s: PickEndpoint mismatch (-want +got):\n%s", st.name, diff)
		}
	}
	if err := s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{"w0", "w2"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PickEndpoint(svc, 80); err != ErrNoEndpoints {
		t.Errorf("PickEndpoint with no healthy endpoint = %v, want ErrNoEndpoints", err)
	}
}

func TestPickEndpointAllocations(t *testing.T) {
	s := NewStore()
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0)),
		res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)),
		res(t, "w2", workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY, 80, 9090)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	svc := s.ServiceByVIP(netip.MustParseAddr("127.1.100.1"))
	s.PickEndpoint(svc, 80) // fills the cache
	if n := testing.AllocsPerRun(100, func() { s.PickEndpoint(svc, 80) }); n != 0 {
		t.Errorf("PickEndpoint allocations = %v, want 0 (cached candidates)", n)
	}
}

// Endpoints(svc, 80) = PickEndpoint's candidates: HEALTHY endpoints with
// their target port, in uid order, without allocating once cached.
func TestEndpoints(t *testing.T) {
	s := NewStore()
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0)),
		res(t, "w2", workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY, 80, 9090)),
		res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)),
		res(t, "w3", workload("w3", "127.1.0.3", workloadapi.WorkloadStatus_UNHEALTHY, 80, 7070)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	svc := s.ServiceByVIP(netip.MustParseAddr("127.1.100.1"))
	eps, err := s.Endpoints(svc, 80)
	if err != nil {
		t.Fatalf("Endpoints(svc, 80) error = %v", err)
	}
	var got []string
	for _, ep := range eps {
		got = append(got, ep.Workload.Uid+":"+strconv.Itoa(int(ep.Port)))
	}
	if diff := cmp.Diff([]string{"w1:8080", "w2:9090"}, got); diff != "" {
		t.Errorf("Endpoints(svc, 80) mismatch (-want +got):\n%s", diff)
	}
	if _, err := s.Endpoints(svc, 81); err != ErrNoPort {
		t.Errorf("Endpoints(svc, 81) error = %v, want ErrNoPort", err)
	}
	if n := testing.AllocsPerRun(100, func() { s.Endpoints(svc, 80) }); n != 0 {
		t.Errorf("Endpoints allocations = %v, want 0 (cached candidates)", n)
	}
}
