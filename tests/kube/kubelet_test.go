package kube

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestAffinityNode: the harness scheduler binds a DaemonSet's pod to the
// node its required node affinity names (matchFields metadata.name), as
// the DaemonSet controller writes it.
func TestAffinityNode(t *testing.T) {
	affinity := func(terms ...corev1.NodeSelectorTerm) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms},
		}}
	}
	field := func(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	for _, tc := range []struct {
		name     string
		affinity *corev1.Affinity
		want     string
	}{
		{name: "none", want: ""},
		{name: "DaemonSet pod", affinity: affinity(field("metadata.name", corev1.NodeSelectorOpIn, "node-b")), want: "node-b"},
		{name: "several nodes: not pinned", affinity: affinity(field("metadata.name", corev1.NodeSelectorOpIn, "node-a", "node-b")), want: ""},
		{name: "NotIn", affinity: affinity(field("metadata.name", corev1.NodeSelectorOpNotIn, "node-a")), want: ""},
		{name: "other field", affinity: affinity(field("spec.unschedulable", corev1.NodeSelectorOpIn, "node-a")), want: ""},
		{name: "preferred only", affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{}}, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Affinity: tc.affinity}}
			if got := affinityNode(pod); got != tc.want {
				t.Errorf("affinityNode(%s) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}
