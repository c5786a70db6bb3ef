package state

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func hostnameWaypoint(ns, host string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: host}},
		HboneMtlsPort: 15008,
	}
}

func addressWaypoint(ip string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr(ip).AsSlice()}},
		HboneMtlsPort: 15008,
	}
}

// wpWorkload is a workload in namespace ns with service account sa,
// endpoint of the services in svcs (key → service port, target port).
func wpWorkload(uid, ns, sa string, status workloadapi.WorkloadStatus, ips []string, svcs map[string][2]uint32, waypoint *workloadapi.GatewayAddress) *workloadapi.Address {
	w := &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: ns, ServiceAccount: sa, Node: "n1",
		Status: status, Waypoint: waypoint, Services: map[string]*workloadapi.PortList{},
	}
	for _, ip := range ips {
		w.Addresses = append(w.Addresses, netip.MustParseAddr(ip).AsSlice())
	}
	for key, p := range svcs {
		w.Services[key] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: p[0], TargetPort: p[1]}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func wpService(ns, name, vip string, ports [][2]uint32, sans []string, waypoint *workloadapi.GatewayAddress) *workloadapi.Address {
	s := &workloadapi.Service{
		Name: name, Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local",
		SubjectAltNames: sans, Waypoint: waypoint,
	}
	if vip != "" {
		s.Addresses = []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}}
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: p[0], TargetPort: p[1]})
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

const (
	wpKey  = "ns/waypoint.ns.svc.cluster.local"
	svcKey = "ns/echo.ns.svc.cluster.local"
)

var (
	healthy   = workloadapi.WorkloadStatus_HEALTHY
	unhealthy = workloadapi.WorkloadStatus_UNHEALTHY
)

// waypointStore holds a waypoint Service (VIP 127.2.100.1, port 15008 →
// 15008) with two healthy pods (wp-a dual stack, wp-b) and an unhealthy
// one, a Service echo bound to it, a pod echo-0 of echo bound to it as a
// workload waypoint, and a pod plain without a waypoint.
func waypointStore(t *testing.T) *Store {
	t.Helper()
	s := NewStore()
	wpPorts := map[string][2]uint32{wpKey: {15008, 15008}}
	err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		res(t, wpKey, wpService("ns", "waypoint", "127.2.100.1", [][2]uint32{{15021, 15021}, {15008, 0}}, []string{"spiffe://cluster.local/ns/ns/sa/extra", "not-a-spiffe-id"}, nil)),
		res(t, "wp-a", wpWorkload("wp-a", "ns", "waypoint", healthy, []string{"127.2.0.1", "fd00::1"}, wpPorts, nil)),
		res(t, "wp-b", wpWorkload("wp-b", "ns", "waypoint", healthy, []string{"127.2.0.2"}, wpPorts, nil)),
		res(t, "wp-c", wpWorkload("wp-c", "ns", "waypoint", unhealthy, []string{"127.2.0.3"}, wpPorts, nil)),
		res(t, svcKey, wpService("ns", "echo", "127.2.100.2", [][2]uint32{{80, 8080}}, nil, hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"))),
		res(t, "echo-0", wpWorkload("echo-0", "ns", "echo", healthy, []string{"127.2.0.10"}, map[string][2]uint32{svcKey: {80, 8080}}, hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"))),
		res(t, "plain", wpWorkload("plain", "ns", "plain", healthy, []string{"127.2.0.11"}, nil, nil)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWaypointParsing(t *testing.T) {
	tests := []struct {
		name     string
		waypoint *workloadapi.GatewayAddress
		want     *GatewayAddress // nil with wantErr false: no waypoint
		wantErr  bool
	}{
		{name: "none"},
		{
			name:     "hostname form",
			waypoint: hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"),
			want:     &GatewayAddress{Namespace: "ns", Hostname: "waypoint.ns.svc.cluster.local", HBONEPort: 15008},
		},
		{
			name:     "address form",
			waypoint: addressWaypoint("10.0.0.9"),
			want:     &GatewayAddress{Addr: netip.MustParseAddr("10.0.0.9"), HBONEPort: 15008},
		},
		{
			name:     "IPv4-mapped address is unmapped",
			waypoint: addressWaypoint("::ffff:10.0.0.9"),
			want:     &GatewayAddress{Addr: netip.MustParseAddr("10.0.0.9"), HBONEPort: 15008},
		},
		{name: "no destination", waypoint: &workloadapi.GatewayAddress{HboneMtlsPort: 15008}, wantErr: true},
		{
			name: "address of 3 bytes",
			waypoint: &workloadapi.GatewayAddress{
				Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: []byte{10, 0, 0}}},
				HboneMtlsPort: 15008,
			},
			wantErr: true,
		},
		{
			name: "port out of range",
			waypoint: &workloadapi.GatewayAddress{
				Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "ns", Hostname: "w"}},
				HboneMtlsPort: 70000,
			},
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, kind := range []string{"workload", "service"} {
				s := NewStore()
				var r *adspb.Resource
				if kind == "workload" {
					r = res(t, "w", wpWorkload("w", "ns", "sa", healthy, []string{"127.2.0.1"}, nil, tc.waypoint))
				} else {
					r = res(t, "ns/s.ns.svc.cluster.local", wpService("ns", "s", "127.2.100.1", nil, nil, tc.waypoint))
				}
				err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{r}, nil)
				if (err != nil) != tc.wantErr {
					t.Fatalf("%s: OnUpdate = %v, want error %v", kind, err, tc.wantErr)
				}
				var got *GatewayAddress
				if kind == "workload" {
					if w := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.1")); w != nil {
						got = w.WaypointRef
					} else if !tc.wantErr {
						t.Fatalf("%s: not stored", kind)
					}
				} else {
					if svc := s.ServiceByVIP(netip.MustParseAddr("127.2.100.1")); svc != nil {
						got = svc.WaypointRef
					} else if !tc.wantErr {
						t.Fatalf("%s: not stored", kind)
					}
				}
				if tc.wantErr {
					if got != nil {
						t.Errorf("%s: a rejected update stored waypoint %v", kind, got)
					}
					continue
				}
				if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("%s: WaypointRef (-want +got):\n%s", kind, diff)
				}
			}
		})
	}
}

func TestResolveWaypoint(t *testing.T) {
	wpIDs := []string{"spiffe://cluster.local/ns/ns/sa/extra", "spiffe://cluster.local/ns/ns/sa/waypoint"}
	tests := []struct {
		name    string
		extra   []*workloadapi.Address // applied after waypointStore
		ref     *workloadapi.GatewayAddress
		dst     string
		want    []string // "uid addr:port" of the waypoints picked over two calls
		wantIDs []string
		wantErr []error
	}{
		{
			name:    "hostname form: healthy endpoints of the Service, round robin",
			ref:     hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"),
			dst:     "127.2.100.2",
			want:    []string{"wp-a 127.2.0.1:15008", "wp-b 127.2.0.2:15008"},
			wantIDs: wpIDs,
		},
		{
			name:    "an IPv6 destination prefers the pod's IPv6 address",
			ref:     hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"),
			dst:     "fd00::99",
			want:    []string{"wp-a [fd00::1]:15008", "wp-b 127.2.0.2:15008"},
			wantIDs: wpIDs,
		},
		{
			name:    "address form naming the Service's VIP",
			ref:     addressWaypoint("127.2.100.1"),
			dst:     "fd00::99", // ignored: the family is the VIP's
			want:    []string{"wp-a 127.2.0.1:15008", "wp-b 127.2.0.2:15008"},
			wantIDs: wpIDs,
		},
		{
			name:    "address form naming a pod",
			ref:     addressWaypoint("127.2.0.2"),
			dst:     "127.2.100.2",
			want:    []string{"wp-b 127.2.0.2:15008", "wp-b 127.2.0.2:15008"},
			wantIDs: []string{"spiffe://cluster.local/ns/ns/sa/waypoint"},
		},
		{
			name: "hostname form naming a workload's hostname",
			extra: []*workloadapi.Address{func() *workloadapi.Address {
				a := wpWorkload("wp-h", "other", "wp", healthy, []string{"127.2.0.20"}, nil, nil)
				a.GetWorkload().Hostname = "wp.example"
				return a
			}()},
			ref:     hostnameWaypoint("other", "wp.example"),
			dst:     "127.2.100.2",
			want:    []string{"wp-h 127.2.0.20:15008", "wp-h 127.2.0.20:15008"},
			wantIDs: []string{"spiffe://cluster.local/ns/other/sa/wp"},
		},
		{
			name:    "unknown hostname",
			ref:     hostnameWaypoint("ns", "nope.ns.svc.cluster.local"),
			wantErr: []error{ErrUnknownWaypoint},
		},
		{
			name:    "hostname in another namespace is another Service",
			ref:     hostnameWaypoint("other", "waypoint.ns.svc.cluster.local"),
			wantErr: []error{ErrUnknownWaypoint},
		},
		{
			name:    "unknown address",
			ref:     addressWaypoint("127.2.9.9"),
			wantErr: []error{ErrUnknownWaypoint},
		},
		{
			name: "no healthy pod",
			extra: []*workloadapi.Address{
				wpWorkload("wp-a", "ns", "waypoint", unhealthy, []string{"127.2.0.1"}, map[string][2]uint32{wpKey: {15008, 15008}}, nil),
				wpWorkload("wp-b", "ns", "waypoint", unhealthy, []string{"127.2.0.2"}, map[string][2]uint32{wpKey: {15008, 15008}}, nil),
			},
			ref:     hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local"),
			wantErr: []error{ErrUnknownWaypoint, ErrNoEndpoints},
		},
		{
			name:    "the Service has no HBONE port",
			ref:     &workloadapi.GatewayAddress{Destination: hostnameWaypoint("ns", "waypoint.ns.svc.cluster.local").Destination, HboneMtlsPort: 15009},
			wantErr: []error{ErrUnknownWaypoint, ErrNoPort},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := waypointStore(t)
			for _, a := range tc.extra {
				name := a.GetWorkload().GetUid()
				if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{res(t, name, a)}, nil); err != nil {
					t.Fatal(err)
				}
			}
			ref, err := parseGatewayAddress(tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			var dst netip.Addr
			if tc.dst != "" {
				dst = netip.MustParseAddr(tc.dst)
			}
			var got []string
			var gotIDs []string
			for range 2 {
				wp, err := s.ResolveWaypoint(ref, dst)
				if tc.wantErr != nil {
					for _, want := range tc.wantErr {
						if !errors.Is(err, want) {
							t.Errorf("ResolveWaypoint(%v) = %v, %v; want an error that is %v", ref, wp, err, want)
						}
					}
					return
				}
				if err != nil {
					t.Fatalf("ResolveWaypoint(%v) = %v", ref, err)
				}
				got = append(got, wp.Workload.Uid+" "+wp.Addr.String())
				gotIDs = gotIDs[:0]
				for _, id := range wp.IDs {
					gotIDs = append(gotIDs, id.String())
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ResolveWaypoint(%v) x2 (-want +got):\n%s", ref, diff)
			}
			if diff := cmp.Diff(tc.wantIDs, gotIDs); diff != "" {
				t.Errorf("ResolveWaypoint(%v).IDs (-want +got):\n%s", ref, diff)
			}
		})
	}
}

func TestServiceAndWorkloadWaypoint(t *testing.T) {
	s := waypointStore(t)
	echo := s.ServiceByVIP(netip.MustParseAddr("127.2.100.2"))
	if wp, err := s.ServiceWaypoint(echo, netip.MustParseAddr("127.2.100.2")); err != nil || wp == nil || wp.Service == nil || wp.Service.Key != wpKey {
		t.Errorf("ServiceWaypoint(echo) = %+v, %v; want the waypoint Service's pod", wp, err)
	}
	pod := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.10"))
	if wp, err := s.WorkloadWaypoint(pod, pod.Addrs[0]); err != nil || wp == nil || wp.Workload.Namespace != "ns" {
		t.Errorf("WorkloadWaypoint(echo-0) = %+v, %v; want a waypoint pod", wp, err)
	}
	plain := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.11"))
	if wp, err := s.WorkloadWaypoint(plain, plain.Addrs[0]); wp != nil || err != nil {
		t.Errorf("WorkloadWaypoint(plain) = %+v, %v; want nil, nil", wp, err)
	}
	wpSvc := s.ServiceByVIP(netip.MustParseAddr("127.2.100.1"))
	if wp, err := s.ServiceWaypoint(wpSvc, wpSvc.VIPs[0]); wp != nil || err != nil {
		t.Errorf("ServiceWaypoint(waypoint) = %+v, %v; want nil, nil", wp, err)
	}
}

func TestIsFromWaypoint(t *testing.T) {
	s := waypointStore(t)
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/waypoint")
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/echo")
	pod := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.10"))
	plain := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.11"))
	tests := []struct {
		name string
		dst  *Workload
		id   spiffeid.ID
		ip   string
		want bool
	}{
		{"a pod of the waypoint", pod, wpID, "127.2.0.1", true},
		{"its IPv6 address", pod, wpID, "fd00::1", true},
		{"an unhealthy pod of the waypoint still is one", pod, wpID, "127.2.0.3", true},
		{"the waypoint's identity from another address", pod, wpID, "127.2.0.11", false},
		{"a waypoint pod's address with another identity", pod, echoID, "127.2.0.1", false},
		{"destination without a waypoint", plain, wpID, "127.2.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.IsFromWaypoint(tc.dst, tc.id, netip.MustParseAddr(tc.ip)); got != tc.want {
				t.Errorf("IsFromWaypoint(%s, %s, %s) = %v, want %v", tc.dst.Uid, tc.id, tc.ip, got, tc.want)
			}
		})
	}

	// A workload waypoint named by the pod's address.
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		res(t, "plain", wpWorkload("plain", "ns", "plain", healthy, []string{"127.2.0.11"}, nil, addressWaypoint("127.2.0.2"))),
	}, nil); err != nil {
		t.Fatal(err)
	}
	plain = s.WorkloadByAddr(netip.MustParseAddr("127.2.0.11"))
	if !s.IsFromWaypoint(plain, wpID, netip.MustParseAddr("127.2.0.2")) {
		t.Error("IsFromWaypoint(plain, waypoint, 127.2.0.2) = false, want true: the waypoint is that pod")
	}
	if s.IsFromWaypoint(plain, wpID, netip.MustParseAddr("127.2.0.1")) {
		t.Error("IsFromWaypoint(plain, waypoint, 127.2.0.1) = true, want false: another pod of the Service is not that waypoint")
	}
}

func TestIsWaypointFor(t *testing.T) {
	s := waypointStore(t)
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{
		// A pod whose waypoint is named by a pod's address.
		res(t, "byip", wpWorkload("byip", "ns", "byip", healthy, []string{"127.2.0.12"}, nil, addressWaypoint("127.2.0.2"))),
	}, nil); err != nil {
		t.Fatal(err)
	}
	wpA := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.1"))
	wpB := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.2"))
	wpC := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.3"))
	plain := s.WorkloadByAddr(netip.MustParseAddr("127.2.0.11"))
	tests := []struct {
		name   string
		local  *Workload
		target string
		want   bool
	}{
		{"a waypoint pod for its Service's VIP", wpA, "127.2.100.2", true},
		{"a waypoint pod for a pod bound to it", wpA, "127.2.0.10", true},
		{"an unhealthy waypoint pod still is an endpoint", wpC, "127.2.100.2", true},
		{"another workload for that VIP", plain, "127.2.100.2", false},
		{"a waypoint pod for a pod without a waypoint", wpA, "127.2.0.11", false},
		{"a waypoint pod for an unknown address", wpA, "127.2.9.9", false},
		{"the pod a waypoint address names", wpB, "127.2.0.12", true},
		{"another pod of that Service is not the named pod", wpA, "127.2.0.12", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.IsWaypointFor(tc.local, tc.local.Addrs[0], netip.MustParseAddr(tc.target)); got != tc.want {
				t.Errorf("IsWaypointFor(%s, %s) = %v, want %v", tc.local.Uid, tc.target, got, tc.want)
			}
		})
	}
}
