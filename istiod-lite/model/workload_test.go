package model

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// TestBuilderPodGetsIP: a scheduled pod is published before it has an IP
// (no addresses, unhealthy), and when the kubelet writes its IP and it is
// ready, the same resource (same uid) gets the addresses and turns
// healthy; nothing else is published for it (issue 14).
func TestBuilderPodGetsIP(t *testing.T) {
	ns := namespace("mesh", map[string]string{LabelDataplaneMode: DataplaneModeAmbient})
	svc := service("mesh", "echo", app, []string{"10.96.0.1"}, port(80, intstr.FromInt32(8080)))
	starting := with(pod("mesh", "echo-0", app), notReady(), func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending })
	running := pod("mesh", "echo-0", app, "10.0.0.7")
	want := func(ips []string, status workloadapi.WorkloadStatus) *workloadapi.Address {
		return wl(workload("mesh", "echo-0", ips...), func(w *workloadapi.Workload) {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
			w.CanonicalName = "echo"
			w.Services = map[string]*workloadapi.PortList{"mesh/echo.mesh.svc.cluster.local": ports(80, 8080)}
			w.Status = status
		})
	}
	b := NewBuilder(Options{})
	steps := []struct {
		name string
		pod  *corev1.Pod
		want *workloadapi.Address
	}{
		{"scheduled, no IP yet", starting, want(nil, workloadapi.WorkloadStatus_UNHEALTHY)},
		{"IP written, ready", running, want([]string{"10.0.0.7"}, workloadapi.WorkloadStatus_HEALTHY)},
	}
	for _, st := range steps {
		out := b.Build(&Inputs{Namespaces: []*corev1.Namespace{ns}, Services: []*corev1.Service{svc}, Pods: []*corev1.Pod{st.pod}})
		var workloads []*workloadapi.Address
		for _, a := range out.Addresses {
			if a.GetWorkload() != nil {
				workloads = append(workloads, a)
			}
		}
		if diff := cmp.Diff([]*workloadapi.Address{st.want}, workloads, protocmp.Transform()); diff != "" {
			t.Errorf("%s: Build() workloads (-want +got):\n%s", st.name, diff)
		}
		if a := out.Addresses["Kubernetes//Pod/mesh/echo-0"]; a == nil {
			t.Errorf("%s: Build() has no resource named Kubernetes//Pod/mesh/echo-0", st.name)
		}
	}
}
