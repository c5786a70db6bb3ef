package state

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// TestWorkloadWithoutAddresses: istiod-lite publishes a scheduled pod's
// workload before the pod has an IP (issue 14). The store keeps it and
// finds it by uid and on its node, but no address lookup returns it and
// it is no endpoint of its service, even if it claims to be healthy;
// once the same uid arrives with an address it is both.
func TestWorkloadWithoutAddresses(t *testing.T) {
	s := NewStore()
	noAddr := workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)
	noAddr.GetWorkload().Addresses = nil
	apply := func(rs ...*adspb.Resource) {
		t.Helper()
		if err := s.OnUpdate(workloadapi.AddressTypeURL, rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	apply(res(t, "w1", noAddr), res(t, "ns/svc.ns.svc.cluster.local", service("127.1.100.1", 80, 0)))
	svc := s.ServiceByVIP(netip.MustParseAddr("127.1.100.1"))
	if svc == nil {
		t.Fatal("service not stored")
	}

	w := s.WorkloadByUID("w1")
	if w == nil || len(w.Addrs) != 0 || w.ID.String() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Fatalf("WorkloadByUID(w1) = %+v, want w1 without addresses, with its SPIFFE ID", w)
	}
	for _, a := range []string{"127.1.0.1", "0.0.0.0", "::"} {
		if got := s.WorkloadByAddr(netip.MustParseAddr(a)); got != nil {
			t.Errorf("WorkloadByAddr(%s) = %s, want nil", a, got.Uid)
		}
	}
	if got, _, err := s.PickEndpoint(svc, 80); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("PickEndpoint() = %v, %v, want %v", got, err, ErrNoEndpoints)
	}
	if got := s.NodeWorkloads("n1"); len(got) != 1 || got[0].Uid != "w1" {
		t.Errorf("NodeWorkloads(n1) = %v, want [w1]", got)
	}
	s.mu.RLock()
	eps := len(s.endpoints[svc.Key])
	s.mu.RUnlock()
	if eps != 0 {
		t.Errorf("service endpoints = %d, want 0 while the workload has no address", eps)
	}

	apply(res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY, 80, 8080)))
	if got := s.WorkloadByAddr(netip.MustParseAddr("127.1.0.1")); got == nil || got.Uid != "w1" {
		t.Errorf("after the address arrived: WorkloadByAddr(127.1.0.1) = %v, want w1", got)
	}
	if got, port, err := s.PickEndpoint(svc, 80); err != nil || got.Uid != "w1" || port != 8080 {
		t.Errorf("after the address arrived: PickEndpoint() = %v, %d, %v, want w1, 8080", got, port, err)
	}
}
