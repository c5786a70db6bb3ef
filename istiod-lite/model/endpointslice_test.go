package model

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

type sliceEndpoint struct {
	ip    string
	ready *bool
	pod   string // targetRef to a pod of that name
}

func slice(ns, name, service string, addrType discoveryv1.AddressType, ports map[string]int32, eps ...sliceEndpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		AddressType: addrType,
	}
	if service != "" {
		es.Labels[discoveryv1.LabelServiceName] = service
	}
	for n, p := range ports {
		tcp := corev1.ProtocolTCP
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &n, Port: &p, Protocol: &tcp})
	}
	for _, e := range eps {
		ep := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready}}
		if e.pod != "" {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod}
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}

func boolPtr(b bool) *bool { return &b }

func sliceWorkload(ns, sliceName, ip, svcKey string, status workloadapi.WorkloadStatus, ports ...*workloadapi.Port) *workloadapi.Workload {
	return &workloadapi.Workload{
		Uid:            "Kubernetes/discovery.k8s.io/EndpointSlice/" + ns + "/" + sliceName + "/" + ip,
		Name:           sliceName,
		Namespace:      ns,
		Addresses:      [][]byte{netip.MustParseAddr(ip).AsSlice()},
		TrustDomain:    "cluster.local",
		ClusterId:      "Kubernetes",
		NetworkMode:    workloadapi.NetworkMode_HOST_NETWORK,
		TunnelProtocol: workloadapi.TunnelProtocol_NONE,
		Services:       map[string]*workloadapi.PortList{svcKey: {Ports: ports}},
		Status:         status,
	}
}

// TestEndpointSlices: a Service without selector gets its endpoints from
// its EndpointSlices, as Istio's ambient index builds them.
func TestEndpointSlices(t *testing.T) {
	const extKey = "demo/ext.demo.svc.cluster.local"
	ext := service("demo", "ext", nil, []string{"198.18.128.50"},
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
		corev1.ServicePort{Name: "metrics", Port: 9090, TargetPort: intstr.FromString("metrics")})
	selecting := service("demo", "echo", map[string]string{"app": "echo"}, []string{"198.18.128.51"},
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	echo := pod("demo", "echo", map[string]string{"app": "echo"}, "10.1.0.5")
	other := pod("demo", "other", nil, "10.1.0.6")
	ports := map[string]int32{"http": 9000, "metrics": 9100}

	tests := []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		// want are the addresses of the slice workloads and of the pod
		// workloads' Services, by uid.
		wantSliceWorkloads []*workloadapi.Workload
		wantPodServices    map[string][]string
	}{
		{
			name: "ready and not ready endpoints become workloads; not ready is UNHEALTHY",
			slices: []*discoveryv1.EndpointSlice{slice("demo", "ext-1", "ext", discoveryv1.AddressTypeIPv4, ports,
				sliceEndpoint{ip: "192.0.2.10", ready: boolPtr(true)},
				sliceEndpoint{ip: "192.0.2.11", ready: boolPtr(false)},
				sliceEndpoint{ip: "192.0.2.12"})},
			wantSliceWorkloads: []*workloadapi.Workload{
				sliceWorkload("demo", "ext-1", "192.0.2.10", extKey, workloadapi.WorkloadStatus_HEALTHY, &workloadapi.Port{ServicePort: 80, TargetPort: 9000}, &workloadapi.Port{ServicePort: 9090, TargetPort: 9100}),
				sliceWorkload("demo", "ext-1", "192.0.2.11", extKey, workloadapi.WorkloadStatus_UNHEALTHY, &workloadapi.Port{ServicePort: 80, TargetPort: 9000}, &workloadapi.Port{ServicePort: 9090, TargetPort: 9100}),
				sliceWorkload("demo", "ext-1", "192.0.2.12", extKey, workloadapi.WorkloadStatus_HEALTHY, &workloadapi.Port{ServicePort: 80, TargetPort: 9000}, &workloadapi.Port{ServicePort: 9090, TargetPort: 9100}),
			},
			wantPodServices: map[string][]string{"echo": {"demo/echo.demo.svc.cluster.local"}},
		},
		{
			name: "an endpoint naming a pod adds the service to that pod, not a workload",
			slices: []*discoveryv1.EndpointSlice{slice("demo", "ext-1", "ext", discoveryv1.AddressTypeIPv4, ports,
				sliceEndpoint{ip: "10.1.0.6", pod: "other"})},
			wantPodServices: map[string][]string{
				"echo":  {"demo/echo.demo.svc.cluster.local"},
				"other": {extKey},
			},
		},
		{
			name: "ignored: FQDN slices, slices of no service, of a missing service, of a selecting service",
			slices: []*discoveryv1.EndpointSlice{
				slice("demo", "fqdn", "ext", discoveryv1.AddressTypeFQDN, ports, sliceEndpoint{ip: "example.com"}),
				slice("demo", "loose", "", discoveryv1.AddressTypeIPv4, ports, sliceEndpoint{ip: "192.0.2.20"}),
				slice("demo", "gone-1", "gone", discoveryv1.AddressTypeIPv4, ports, sliceEndpoint{ip: "192.0.2.21"}),
				slice("demo", "echo-1", "echo", discoveryv1.AddressTypeIPv4, ports, sliceEndpoint{ip: "192.0.2.22"}, sliceEndpoint{ip: "10.1.0.6", pod: "other"}),
			},
			wantPodServices: map[string][]string{"echo": {"demo/echo.demo.svc.cluster.local"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &Inputs{
				Namespaces:     []*corev1.Namespace{namespace("demo", nil)},
				Pods:           []*corev1.Pod{echo, other},
				Services:       []*corev1.Service{ext, selecting},
				EndpointSlices: tc.slices,
			}
			// The Builder (with memo) and Build must agree; build twice so
			// the second reuses the first.
			b := NewBuilder(Options{})
			b.Build(in)
			for _, out := range []*Output{Build(in, Options{}), b.Build(in)} {
				var gotSlices []*workloadapi.Workload
				gotPods := map[string][]string{}
				for _, a := range out.Addresses {
					w := a.GetWorkload()
					if w == nil {
						continue
					}
					if w.NetworkMode == workloadapi.NetworkMode_HOST_NETWORK {
						gotSlices = append(gotSlices, w)
						continue
					}
					for k := range w.Services {
						gotPods[w.Name] = append(gotPods[w.Name], k)
					}
				}
				sortWorkloads(gotSlices)
				if diff := cmp.Diff(tc.wantSliceWorkloads, gotSlices, protocmp.Transform()); diff != "" {
					t.Errorf("slice workloads (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tc.wantPodServices, gotPods); diff != "" {
					t.Errorf("pod services (-want +got):\n%s", diff)
				}
			}
		})
	}

	t.Run("pod ports resolve against the pod", func(t *testing.T) {
		in := &Inputs{
			Pods:           []*corev1.Pod{other},
			Services:       []*corev1.Service{ext},
			EndpointSlices: []*discoveryv1.EndpointSlice{slice("demo", "ext-1", "ext", discoveryv1.AddressTypeIPv4, ports, sliceEndpoint{ip: "10.1.0.6", pod: "other"})},
		}
		w := Build(in, Options{}).Addresses[WorkloadUID("Kubernetes", "demo", "other")].GetWorkload()
		// 80 -> 8080 (numeric target); 9090 -> "metrics", which the pod
		// does not name: left out, as for a selecting Service.
		want := map[string]*workloadapi.PortList{extKey: {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}}
		if diff := cmp.Diff(want, w.GetServices(), protocmp.Transform()); diff != "" {
			t.Errorf("other's services (-want +got):\n%s", diff)
		}
	})

	t.Run("a changed slice reaches a reused pod", func(t *testing.T) {
		b := NewBuilder(Options{})
		in := &Inputs{Pods: []*corev1.Pod{other}, Services: []*corev1.Service{ext}}
		if got := b.Build(in).Addresses[WorkloadUID("Kubernetes", "demo", "other")].GetWorkload().GetServices(); len(got) != 0 {
			t.Fatalf("before the slice: services %v, want none", got)
		}
		in2 := &Inputs{Pods: in.Pods, Services: in.Services,
			EndpointSlices: []*discoveryv1.EndpointSlice{slice("demo", "ext-1", "ext", discoveryv1.AddressTypeIPv4, ports, sliceEndpoint{ip: "10.1.0.6", pod: "other"})}}
		if got := b.Build(in2).Addresses[WorkloadUID("Kubernetes", "demo", "other")].GetWorkload().GetServices(); got[extKey] == nil {
			t.Errorf("after the slice: services %v, want %s", got, extKey)
		}
	})
}

func sortWorkloads(ws []*workloadapi.Workload) {
	for i := range ws {
		for j := i + 1; j < len(ws); j++ {
			if ws[j].Uid < ws[i].Uid {
				ws[i], ws[j] = ws[j], ws[i]
			}
		}
	}
}
