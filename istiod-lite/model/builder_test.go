package model

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestBuilder checks that a Builder fed a sequence of snapshots returns
// what Build returns for each, and reuses the resources of what did not
// change.
func TestBuilder(t *testing.T) {
	aps, pas := policyObjects(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: ns1}
spec:
  selector: {matchLabels: {app: a}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/ns1/sa/x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: ns2}
spec: {mtls: {mode: STRICT}}
`)
	ns1 := namespace("ns1", map[string]string{LabelDataplaneMode: DataplaneModeAmbient})
	ns2 := namespace("ns2", nil)
	pods := func(ns string, n int, app string) []*corev1.Pod {
		var out []*corev1.Pod
		for i := range n {
			out = append(out, pod(ns, fmt.Sprintf("%s-%d", app, i), map[string]string{"app": app}, fmt.Sprintf("10.%c.0.%d", ns[len(ns)-1], i+1)))
		}
		return out
	}
	svcA := service("ns1", "a", map[string]string{"app": "a"}, []string{"10.96.0.1"}, port(80, intstr.FromString("http")))
	svcB := service("ns2", "b", map[string]string{"app": "b"}, []string{"10.96.0.2"}, port(80, intstr.FromInt32(8080)))
	base := Inputs{
		Namespaces: []*corev1.Namespace{ns1, ns2},
		Pods:       append(pods("ns1", 3, "a"), pods("ns2", 3, "b")...),
		Services:   []*corev1.Service{svcA, svcB},
	}
	clone := func(in Inputs, edit func(*Inputs)) *Inputs {
		in.Namespaces, in.Pods, in.Services = slices.Clone(in.Namespaces), slices.Clone(in.Pods), slices.Clone(in.Services)
		in.AuthorizationPolicies, in.PeerAuthentications = slices.Clone(in.AuthorizationPolicies), slices.Clone(in.PeerAuthentications)
		edit(&in)
		return &in
	}
	steps4ns2 := namespace("ns2", map[string]string{LabelDataplaneMode: DataplaneModeAmbient})
	steps := []struct {
		name string
		in   *Inputs
		// reused: keys whose message must be the previous step's.
		reused []string
	}{
		{name: "first", in: &base},
		{name: "same objects", in: clone(base, func(*Inputs) {}),
			reused: []string{"Kubernetes//Pod/ns1/a-0", "Kubernetes//Pod/ns2/b-2", "ns1/a.ns1.svc.cluster.local"}},
		{name: "one pod replaced", in: clone(base, func(in *Inputs) {
			in.Pods[0] = with(pod("ns1", "a-0", map[string]string{"app": "a", "version": "v2"}, "10.1.0.1"), nodeName("node-2"))
		}), reused: []string{"Kubernetes//Pod/ns1/a-1", "Kubernetes//Pod/ns2/b-0"}},
		{name: "service of ns2 replaced", in: clone(base, func(in *Inputs) {
			in.Services[1] = service("ns2", "b", map[string]string{"app": "b"}, []string{"10.96.0.2"}, port(81, intstr.FromInt32(8081)))
		}), reused: []string{"Kubernetes//Pod/ns1/a-1", "ns1/a.ns1.svc.cluster.local"}},
		{name: "service added", in: clone(base, func(in *Inputs) {
			in.Services = append(in.Services, service("ns1", "all", map[string]string{"app": "a"}, nil, port(90, intstr.FromInt32(9090))))
		}), reused: []string{"ns1/a.ns1.svc.cluster.local"}}, // ns2's service is base's again
		{name: "namespace relabelled", in: clone(base, func(in *Inputs) {
			in.Namespaces[1] = steps4ns2
		}), reused: []string{"ns1/a.ns1.svc.cluster.local"}}, // ns1 lost its added service
		{name: "same again", in: clone(base, func(in *Inputs) {
			in.Namespaces[1] = steps4ns2
		}), reused: []string{"Kubernetes//Pod/ns1/a-0", "Kubernetes//Pod/ns2/b-0"}},
		{name: "policies added", in: clone(base, func(in *Inputs) {
			in.AuthorizationPolicies, in.PeerAuthentications = aps, pas
		})},
		{name: "pod removed", in: clone(base, func(in *Inputs) {
			in.AuthorizationPolicies, in.PeerAuthentications = aps, pas
			in.Pods = in.Pods[1:]
		}), reused: []string{"Kubernetes//Pod/ns1/a-1"}},
		{name: "nil", in: nil},
		{name: "after nil", in: &base},
	}
	b := NewBuilder(Options{})
	var prev *Output
	for _, step := range steps {
		got := b.Build(step.in)
		want := Build(step.in, Options{})
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder.Build differs from Build (-want +got):\n%s", step.name, diff)
		}
		for _, k := range step.reused {
			if got.Addresses[k] == nil || got.Addresses[k] != prev.Addresses[k] {
				t.Errorf("%s: %s was not reused", step.name, k)
			}
		}
		prev = got
	}
}
