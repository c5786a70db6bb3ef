package model

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Builders for the test inputs. Each returns a fresh object that a test case
// may modify with the option functions.

func namespace(name string, lbls map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

type podOpt func(*corev1.Pod)

// pod returns a running, ready pod on node-1 with the given IPs.
func pod(ns, name string, lbls map[string]string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{
			NodeName: "node-1",
			Containers: []corev1.Container{{
				Name:  "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP}},
			}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func with(p *corev1.Pod, opts ...podOpt) *corev1.Pod {
	for _, o := range opts {
		o(p)
	}
	return p
}

func serviceAccountName(sa string) podOpt {
	return func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa }
}
func nodeName(n string) podOpt        { return func(p *corev1.Pod) { p.Spec.NodeName = n } }
func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func hostNetwork() podOpt             { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }
func deleting() podOpt {
	return func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }
}
func notReady() podOpt {
	return func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }
}
func ownedBy(kind, name string) podOpt {
	return func(p *corev1.Pod) {
		t := true
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &t}}
	}
}

func service(ns, name string, selector map[string]string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector, ClusterIPs: clusterIPs, Ports: ports},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	return s
}

func port(p int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Port: p, TargetPort: target}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// workload returns the expected workload of a pod built by pod() in the
// default options: a ready, non-ambient bare pod.
func workload(ns, name string, ips ...string) *workloadapi.Workload {
	w := &workloadapi.Workload{
		Uid:               "Kubernetes//Pod/" + ns + "/" + name,
		Name:              name,
		Namespace:         ns,
		TrustDomain:       "cluster.local",
		ServiceAccount:    "default",
		Node:              "node-1",
		ClusterId:         "Kubernetes",
		CanonicalName:     name,
		CanonicalRevision: "latest",
		WorkloadType:      workloadapi.WorkloadType_POD,
		WorkloadName:      name,
		Status:            workloadapi.WorkloadStatus_HEALTHY,
	}
	for _, s := range ips {
		w.Addresses = append(w.Addresses, ip(s))
	}
	return w
}

func wl(w *workloadapi.Workload, edit func(*workloadapi.Workload)) *workloadapi.Address {
	if edit != nil {
		edit(w)
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func svcAddr(s *workloadapi.Service) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

func addresses(as ...*workloadapi.Address) map[string]*workloadapi.Address {
	m := map[string]*workloadapi.Address{}
	for _, a := range as {
		switch t := a.Type.(type) {
		case *workloadapi.Address_Workload:
			m[t.Workload.Uid] = a
		case *workloadapi.Address_Service:
			m[t.Service.Namespace+"/"+t.Service.Hostname] = a
		}
	}
	return m
}

func ports(pp ...uint32) *workloadapi.PortList {
	pl := &workloadapi.PortList{}
	for i := 0; i+1 < len(pp); i += 2 {
		pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: pp[i], TargetPort: pp[i+1]})
	}
	return pl
}

var app = map[string]string{"app": "echo"}

func TestBuild(t *testing.T) {
	tests := []struct {
		name string
		in   Inputs
		opt  Options
		want map[string]*workloadapi.Address
	}{
		{
			name: "empty",
			want: map[string]*workloadapi.Address{},
		},
		{
			name: "bare pod, not ambient",
			in:   Inputs{Pods: []*corev1.Pod{pod("ns1", "p1", nil, "10.0.0.1")}},
			want: addresses(wl(workload("ns1", "p1", "10.0.0.1"), nil)),
		},
		{
			// Its node's ztunnel waits for it during the CNI ADD, which
			// runs before the kubelet writes the IP (issue 14).
			name: "scheduled pod without IP: published without addresses, unhealthy",
			in: Inputs{
				Namespaces: []*corev1.Namespace{namespace("mesh", map[string]string{"istio.io/dataplane-mode": "ambient"})},
				Pods:       []*corev1.Pod{pod("mesh", "new", nil), pod("ns1", "plain", nil)},
			},
			want: addresses(
				wl(workload("mesh", "new"), func(w *workloadapi.Workload) {
					w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
					w.Status = workloadapi.WorkloadStatus_UNHEALTHY
				}),
				wl(workload("ns1", "plain"), func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }),
			),
		},
		{
			name: "unscheduled or host-network pod without IP is not a workload",
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "pending", nil), nodeName("")),
				with(pod("ns1", "host", nil), hostNetwork()),
				with(pod("ns1", "done", nil), phase(corev1.PodSucceeded)),
			}},
			want: map[string]*workloadapi.Address{},
		},
		{
			name: "terminal pods are dropped",
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "done", nil, "10.0.0.1"), phase(corev1.PodSucceeded)),
				with(pod("ns1", "failed", nil, "10.0.0.2"), phase(corev1.PodFailed)),
			}},
			want: map[string]*workloadapi.Address{},
		},
		{
			name: "status follows readiness and deletion",
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "unready", nil, "10.0.0.1"), notReady()),
				with(pod("ns1", "deleting", nil, "10.0.0.2"), deleting()),
				with(pod("ns1", "noconditions", nil, "10.0.0.3"), func(p *corev1.Pod) { p.Status.Conditions = nil }),
			}},
			want: addresses(
				wl(workload("ns1", "unready", "10.0.0.1"), func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }),
				wl(workload("ns1", "deleting", "10.0.0.2"), func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }),
				wl(workload("ns1", "noconditions", "10.0.0.3"), func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }),
			),
		},
		{
			name: "ambient from namespace, pod opt-out, pod opt-in",
			in: Inputs{
				Namespaces: []*corev1.Namespace{
					namespace("mesh", map[string]string{"istio.io/dataplane-mode": "ambient"}),
					namespace("plain", nil),
				},
				Pods: []*corev1.Pod{
					pod("mesh", "in", nil, "10.0.0.1"),
					pod("mesh", "out", map[string]string{"istio.io/dataplane-mode": "none"}, "10.0.0.2"),
					pod("plain", "optin", map[string]string{"istio.io/dataplane-mode": "ambient"}, "10.0.0.3"),
					pod("plain", "plain", nil, "10.0.0.4"),
					pod("missing-ns", "orphan", nil, "10.0.0.5"),
				},
			},
			want: addresses(
				wl(workload("mesh", "in", "10.0.0.1"), func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE }),
				wl(workload("mesh", "out", "10.0.0.2"), nil),
				wl(workload("plain", "optin", "10.0.0.3"), func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE }),
				wl(workload("plain", "plain", "10.0.0.4"), nil),
				wl(workload("missing-ns", "orphan", "10.0.0.5"), nil),
			),
		},
		{
			name: "host network pod is never HBONE",
			in: Inputs{
				Namespaces: []*corev1.Namespace{namespace("mesh", map[string]string{"istio.io/dataplane-mode": "ambient"})},
				Pods:       []*corev1.Pod{with(pod("mesh", "host", nil, "192.168.1.10"), hostNetwork())},
			},
			want: addresses(wl(workload("mesh", "host", "192.168.1.10"), func(w *workloadapi.Workload) {
				w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
			})),
		},
		{
			name: "dual stack, IPv4-mapped and duplicate IPs",
			in: Inputs{Pods: []*corev1.Pod{
				pod("ns1", "dual", nil, "10.0.0.1", "fd00::1"),
				pod("ns1", "mapped", nil, "::ffff:10.0.0.2", "10.0.0.2", "not-an-ip"),
				with(pod("ns1", "legacy", nil), func(p *corev1.Pod) { p.Status.PodIP = "10.0.0.3" }),
			}},
			want: addresses(
				wl(workload("ns1", "dual", "10.0.0.1", "fd00::1"), nil),
				wl(workload("ns1", "mapped", "10.0.0.2"), nil),
				wl(workload("ns1", "legacy", "10.0.0.3"), nil),
			),
		},
		{
			name: "options",
			in:   Inputs{Pods: []*corev1.Pod{with(pod("ns1", "p1", nil, "10.0.0.1"), serviceAccountName("sa1"))}},
			opt:  Options{TrustDomain: "example.org", ClusterID: "c1", Network: "net1", DomainSuffix: "example.local"},
			want: addresses(wl(workload("ns1", "p1", "10.0.0.1"), func(w *workloadapi.Workload) {
				w.Uid = "c1//Pod/ns1/p1"
				w.TrustDomain = "example.org"
				w.ClusterId = "c1"
				w.Network = "net1"
				w.ServiceAccount = "sa1"
			})),
		},
		{
			name: "canonical name and revision",
			in: Inputs{Pods: []*corev1.Pod{
				pod("ns1", "istio", map[string]string{
					"service.istio.io/canonical-name": "cn", "app.kubernetes.io/name": "kn", "app": "a",
					"service.istio.io/canonical-revision": "cr", "app.kubernetes.io/version": "kv", "version": "v",
				}, "10.0.0.1"),
				pod("ns1", "k8s", map[string]string{"app.kubernetes.io/name": "kn", "app": "a", "app.kubernetes.io/version": "kv", "version": "v"}, "10.0.0.2"),
				pod("ns1", "app", map[string]string{"app": "a", "version": "v"}, "10.0.0.3"),
			}},
			want: addresses(
				wl(workload("ns1", "istio", "10.0.0.1"), func(w *workloadapi.Workload) { w.CanonicalName, w.CanonicalRevision = "cn", "cr" }),
				wl(workload("ns1", "k8s", "10.0.0.2"), func(w *workloadapi.Workload) { w.CanonicalName, w.CanonicalRevision = "kn", "kv" }),
				wl(workload("ns1", "app", "10.0.0.3"), func(w *workloadapi.Workload) { w.CanonicalName, w.CanonicalRevision = "a", "v" }),
			),
		},
		{
			name: "workload type and name from owner",
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "echo-5d8f7c9b4-x2x9q", map[string]string{"pod-template-hash": "5d8f7c9b4"}, "10.0.0.1"), ownedBy("ReplicaSet", "echo-5d8f7c9b4")),
				with(pod("ns1", "rs-abcde", nil, "10.0.0.2"), ownedBy("ReplicaSet", "rs")),
				with(pod("ns1", "migrate-7xk2p", nil, "10.0.0.3"), ownedBy("Job", "migrate")),
				with(pod("ns1", "backup-29175840-abcde", nil, "10.0.0.4"), ownedBy("Job", "backup-29175840")),
				with(pod("ns1", "db-0", nil, "10.0.0.5"), ownedBy("StatefulSet", "db")),
			}},
			want: addresses(
				wl(workload("ns1", "echo-5d8f7c9b4-x2x9q", "10.0.0.1"), func(w *workloadapi.Workload) {
					w.WorkloadType, w.WorkloadName, w.CanonicalName = workloadapi.WorkloadType_DEPLOYMENT, "echo", "echo"
				}),
				wl(workload("ns1", "rs-abcde", "10.0.0.2"), func(w *workloadapi.Workload) { w.WorkloadName, w.CanonicalName = "rs", "rs" }),
				wl(workload("ns1", "migrate-7xk2p", "10.0.0.3"), func(w *workloadapi.Workload) {
					w.WorkloadType, w.WorkloadName, w.CanonicalName = workloadapi.WorkloadType_JOB, "migrate", "migrate"
				}),
				wl(workload("ns1", "backup-29175840-abcde", "10.0.0.4"), func(w *workloadapi.Workload) {
					w.WorkloadType, w.WorkloadName, w.CanonicalName = workloadapi.WorkloadType_CRONJOB, "backup", "backup"
				}),
				wl(workload("ns1", "db-0", "10.0.0.5"), func(w *workloadapi.Workload) { w.WorkloadName, w.CanonicalName = "db", "db" }),
			),
		},
		{
			name: "service ports: named, numeric, unset target; UDP dropped",
			in: Inputs{
				Pods: []*corev1.Pod{pod("ns1", "p1", app, "10.0.0.1")},
				Services: []*corev1.Service{service("ns1", "echo", app, []string{"10.96.0.10"},
					port(80, intstr.FromString("http")),
					port(81, intstr.FromInt32(9090)),
					port(82, intstr.IntOrString{}),
					port(83, intstr.FromString("missing")),
					corev1.ServicePort{Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP},
				)},
			},
			want: addresses(
				svcAddr(&workloadapi.Service{
					Name: "echo", Namespace: "ns1", Hostname: "echo.ns1.svc.cluster.local",
					Addresses:  []*workloadapi.NetworkAddress{{Address: ip("10.96.0.10")}},
					Ports:      ports(80, 0, 81, 9090, 82, 82, 83, 0).Ports,
					IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				wl(workload("ns1", "p1", "10.0.0.1"), func(w *workloadapi.Workload) {
					w.CanonicalName = "echo"
					w.Services = map[string]*workloadapi.PortList{
						"ns1/echo.ns1.svc.cluster.local": ports(80, 8080, 81, 9090, 82, 82),
					}
				}),
			),
		},
		{
			name: "selector mismatch, other namespace, empty selector",
			in: Inputs{
				Pods: []*corev1.Pod{pod("ns1", "p1", app, "10.0.0.1")},
				Services: []*corev1.Service{
					service("ns1", "other", map[string]string{"app": "other"}, []string{"10.96.0.11"}, port(80, intstr.FromInt32(80))),
					service("ns2", "echo", app, []string{"10.96.0.12"}, port(80, intstr.FromInt32(80))),
					service("ns1", "manual", nil, []string{"10.96.0.13"}, port(80, intstr.FromInt32(80))),
				},
			},
			want: addresses(
				svcAddr(&workloadapi.Service{
					Name: "other", Namespace: "ns1", Hostname: "other.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.11")}},
					Ports:     ports(80, 80).Ports, IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				svcAddr(&workloadapi.Service{
					Name: "echo", Namespace: "ns2", Hostname: "echo.ns2.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.12")}},
					Ports:     ports(80, 80).Ports, IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				svcAddr(&workloadapi.Service{
					Name: "manual", Namespace: "ns1", Hostname: "manual.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.13")}},
					Ports:     ports(80, 80).Ports, IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				wl(workload("ns1", "p1", "10.0.0.1"), func(w *workloadapi.Workload) { w.CanonicalName = "echo" }),
			),
		},
		{
			name: "pod in two services; service with no matching TCP port keeps the membership",
			in: Inputs{
				Pods: []*corev1.Pod{pod("ns1", "p1", app, "10.0.0.1")},
				Services: []*corev1.Service{
					service("ns1", "b", app, []string{"10.96.0.2"}, port(80, intstr.FromString("http"))),
					service("ns1", "a", app, []string{"10.96.0.1"}, port(90, intstr.FromString("nope"))),
				},
			},
			want: addresses(
				svcAddr(&workloadapi.Service{
					Name: "a", Namespace: "ns1", Hostname: "a.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.1")}},
					Ports:     ports(90, 0).Ports, IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				svcAddr(&workloadapi.Service{
					Name: "b", Namespace: "ns1", Hostname: "b.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.2")}},
					Ports:     ports(80, 0).Ports, IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
				}),
				wl(workload("ns1", "p1", "10.0.0.1"), func(w *workloadapi.Workload) {
					w.CanonicalName = "echo"
					w.Services = map[string]*workloadapi.PortList{
						"ns1/a.ns1.svc.cluster.local": {},
						"ns1/b.ns1.svc.cluster.local": ports(80, 8080),
					}
				}),
			),
		},
		{
			name: "headless, dual-stack and IPv6 services; ExternalName skipped",
			opt:  Options{Network: "net1"},
			in: Inputs{Services: []*corev1.Service{
				service("ns1", "headless", app, []string{"None"}, port(80, intstr.FromInt32(8080))),
				with2(service("ns1", "dual", app, []string{"10.96.0.1", "fd00:10:96::1"}, port(80, intstr.FromInt32(8080))), func(s *corev1.Service) {
					s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
				}),
				service("ns1", "v6", app, []string{"fd00:10:96::2"}, port(80, intstr.FromInt32(8080))),
				with2(service("ns1", "ext", nil, nil), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeExternalName
					s.Spec.ExternalName = "example.com"
				}),
			}},
			want: addresses(
				svcAddr(&workloadapi.Service{
					Name: "headless", Namespace: "ns1", Hostname: "headless.ns1.svc.cluster.local",
					Ports: ports(80, 8080).Ports,
				}),
				svcAddr(&workloadapi.Service{
					Name: "dual", Namespace: "ns1", Hostname: "dual.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{
						{Network: "net1", Address: ip("10.96.0.1")},
						{Network: "net1", Address: ip("fd00:10:96::1")},
					},
					Ports: ports(80, 8080).Ports, IpFamilies: workloadapi.IPFamilies_DUAL,
				}),
				svcAddr(&workloadapi.Service{
					Name: "v6", Namespace: "ns1", Hostname: "v6.ns1.svc.cluster.local",
					Addresses: []*workloadapi.NetworkAddress{{Network: "net1", Address: ip("fd00:10:96::2")}},
					Ports:     ports(80, 8080).Ports, IpFamilies: workloadapi.IPFamilies_IPV6_ONLY,
				}),
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Build(&tt.in, tt.opt)
			if diff := cmp.Diff(tt.want, got.Addresses, protocmp.Transform()); diff != "" {
				t.Errorf("Build().Addresses mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[string]*security.Authorization{}, got.Authorizations, protocmp.Transform()); diff != "" {
				t.Errorf("Build().Authorizations mismatch (-want +got):\n%s", diff)
			}
			// The model is deterministic: a second run gives the same output.
			if diff := cmp.Diff(got, Build(&tt.in, tt.opt), protocmp.Transform()); diff != "" {
				t.Errorf("Build() not deterministic (-first +second):\n%s", diff)
			}
		})
	}
}

func with2(s *corev1.Service, edit func(*corev1.Service)) *corev1.Service {
	edit(s)
	return s
}

func TestBuildNil(t *testing.T) {
	got := Build(nil, Options{})
	if len(got.Addresses) != 0 || got.Authorizations == nil {
		t.Errorf("Build(nil) = %v, want empty maps", got)
	}
	in := &Inputs{Pods: []*corev1.Pod{nil}, Services: []*corev1.Service{nil}, Namespaces: []*corev1.Namespace{nil}}
	if got := Build(in, Options{}); len(got.Addresses) != 0 {
		t.Errorf("Build(nil entries) = %v, want no addresses", got.Addresses)
	}
}

func TestWorkloadUID(t *testing.T) {
	if got, want := WorkloadUID("Kubernetes", "ns1", "p1"), "Kubernetes//Pod/ns1/p1"; got != want {
		t.Errorf("WorkloadUID() = %q, want %q", got, want)
	}
}

func TestAmbient(t *testing.T) {
	ambientNS := namespace("ns", map[string]string{"istio.io/dataplane-mode": "ambient"})
	plainNS := namespace("ns", nil)
	label := func(v string) map[string]string { return map[string]string{"istio.io/dataplane-mode": v} }
	tests := []struct {
		name string
		ns   *corev1.Namespace
		pod  *corev1.Pod
		want bool
	}{
		{"namespace ambient", ambientNS, pod("ns", "p", nil), true},
		{"namespace ambient, pod none", ambientNS, pod("ns", "p", label("none")), false},
		{"namespace ambient, pod other value", ambientNS, pod("ns", "p", label("sidecar")), true},
		{"namespace plain, pod ambient", plainNS, pod("ns", "p", label("ambient")), true},
		{"namespace plain", plainNS, pod("ns", "p", nil), false},
		{"namespace unknown, pod ambient", nil, pod("ns", "p", label("ambient")), true},
		{"namespace unknown", nil, pod("ns", "p", nil), false},
		{"namespace none label", namespace("ns", label("none")), pod("ns", "p", nil), false},
		{"nil pod", ambientNS, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Ambient(tt.ns, tt.pod); got != tt.want {
				t.Errorf("Ambient() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNodeIdentities(t *testing.T) {
	type set = map[string]struct{}
	tests := []struct {
		name string
		in   Inputs
		opt  Options
		want map[string]map[string]struct{}
	}{
		{name: "empty", want: map[string]map[string]struct{}{}},
		{
			name: "pods grouped by node, shared identities deduplicated",
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "a", nil, "10.0.0.1"), serviceAccountName("sa1")),
				with(pod("ns1", "b", nil, "10.0.0.2"), serviceAccountName("sa1")),
				with(pod("ns2", "c", nil, "10.0.0.3")),
				with(pod("ns1", "d", nil, "10.0.1.1"), serviceAccountName("sa2"), nodeName("node-2")),
			}},
			want: map[string]map[string]struct{}{
				"node-1": {"spiffe://cluster.local/ns/ns1/sa/sa1": {}, "spiffe://cluster.local/ns/ns2/sa/default": {}},
				"node-2": {"spiffe://cluster.local/ns/ns1/sa/sa2": {}},
			},
		},
		{
			name: "starting pods without IP count; unscheduled, terminal and deleting pods do not",
			opt:  Options{TrustDomain: "example.org"},
			in: Inputs{Pods: []*corev1.Pod{
				with(pod("ns1", "starting", nil), serviceAccountName("starting"), phase(corev1.PodPending)),
				with(pod("ns1", "unscheduled", nil), serviceAccountName("unscheduled"), nodeName("")),
				with(pod("ns1", "done", nil, "10.0.0.1"), serviceAccountName("done"), phase(corev1.PodSucceeded)),
				with(pod("ns1", "failed", nil, "10.0.0.2"), serviceAccountName("failed"), phase(corev1.PodFailed)),
				with(pod("ns1", "deleting", nil, "10.0.0.3"), serviceAccountName("deleting"), deleting()),
				nil,
			}},
			want: map[string]map[string]struct{}{
				"node-1": set{"spiffe://example.org/ns/ns1/sa/starting": {}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NodeIdentities(&tt.in, tt.opt)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("NodeIdentities() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
