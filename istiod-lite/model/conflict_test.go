package model

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func created(at time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(at) }
}

// TestAddressConflicts is issue 9 item 3 on the control plane: of the pods
// claiming one IP, only one is served (Running first, then the oldest, then
// by namespace/name, whatever the input order), and each other one gets a
// status saying why it is not.
func TestAddressConflicts(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		pods       []*corev1.Pod
		wantServed []string // pod names
		wantLosers map[string]string
	}{
		{
			name: "oldest wins",
			pods: []*corev1.Pod{
				with(pod("demo", "new", nil, "10.0.0.1"), created(t0.Add(time.Hour))),
				with(pod("demo", "old", nil, "10.0.0.1"), created(t0)),
			},
			wantServed: []string{"old"},
			wantLosers: map[string]string{"demo/new": "address 10.0.0.1 is also claimed by demo/old, which is served"},
		},
		{
			name: "running wins over pending, however old",
			pods: []*corev1.Pod{
				with(pod("demo", "old", nil, "10.0.0.1"), created(t0), phase(corev1.PodPending)),
				with(pod("demo", "new", nil, "10.0.0.1"), created(t0.Add(time.Hour))),
			},
			wantServed: []string{"new"},
			wantLosers: map[string]string{"demo/old": "address 10.0.0.1 is also claimed by demo/new, which is served"},
		},
		{
			name: "a pod being deleted loses",
			pods: []*corev1.Pod{
				with(pod("demo", "old", nil, "10.0.0.1"), created(t0), deleting()),
				with(pod("demo", "new", nil, "10.0.0.1"), created(t0.Add(time.Hour))),
			},
			wantServed: []string{"new"},
			wantLosers: map[string]string{"demo/old": "address 10.0.0.1 is also claimed by demo/new, which is served"},
		},
		{
			name: "same age: by namespace and name",
			pods: []*corev1.Pod{
				pod("demo", "b", nil, "10.0.0.1"),
				pod("demo", "a", nil, "10.0.0.1"),
				pod("other", "c", nil, "10.0.0.2"),
			},
			wantServed: []string{"a", "c"},
			wantLosers: map[string]string{"demo/b": "address 10.0.0.1 is also claimed by demo/a, which is served"},
		},
		{
			name: "one shared address of two is enough to lose",
			pods: []*corev1.Pod{
				with(pod("demo", "a", nil, "10.0.0.1", "fd00::1"), created(t0)),
				with(pod("demo", "b", nil, "10.0.0.2", "fd00::1"), created(t0.Add(time.Second))),
			},
			wantServed: []string{"a"},
			wantLosers: map[string]string{"demo/b": "address fd00::1 is also claimed by demo/a, which is served"},
		},
		{
			name: "a loser frees its other addresses: no chain of losers",
			pods: []*corev1.Pod{
				with(pod("demo", "a", nil, "10.0.0.1"), created(t0)),
				with(pod("demo", "b", nil, "10.0.0.1", "10.0.0.2"), created(t0.Add(time.Second))),
				with(pod("demo", "c", nil, "10.0.0.2"), created(t0.Add(2*time.Second))),
			},
			wantServed: []string{"a", "c"},
			wantLosers: map[string]string{"demo/b": "address 10.0.0.1 is also claimed by demo/a, which is served"},
		},
		{
			name: "host-network pods share their node's IP",
			pods: []*corev1.Pod{
				with(pod("demo", "a", nil, "10.0.0.1"), hostNetwork()),
				with(pod("demo", "b", nil, "10.0.0.1"), hostNetwork()),
			},
			wantServed: []string{"a", "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reversed := slices.Clone(tt.pods)
			slices.Reverse(reversed)
			for _, order := range [][]*corev1.Pod{tt.pods, reversed} {
				out := Build(&Inputs{Pods: order}, Options{})
				var served []string
				for _, a := range out.Addresses {
					if w := a.GetWorkload(); w != nil {
						served = append(served, w.Name)
					}
				}
				slices.Sort(served)
				if diff := cmp.Diff(tt.wantServed, served); diff != "" {
					t.Errorf("served pods (-want +got):\n%s", diff)
				}
				losers := map[string]string{}
				for _, st := range out.PolicyStatuses {
					if st.Kind != KindPod {
						continue
					}
					if len(st.Conditions) != 1 || st.Conditions[0].Type != ConditionZtunnelAccepted ||
						st.Conditions[0].Status != "False" || st.Conditions[0].Reason != ReasonAddressConflict {
						t.Errorf("status of %s/%s: %+v, want one condition ZtunnelAccepted=False reason %s", st.Namespace, st.Name, st.Conditions, ReasonAddressConflict)
					}
					losers[st.Namespace+"/"+st.Name] = st.Conditions[0].Message
				}
				if diff := cmp.Diff(tt.wantLosers, losers, cmpEmptyMap); diff != "" {
					t.Errorf("conflict statuses (-want +got):\n%s", diff)
				}
			}
		})
	}
}

var cmpEmptyMap = cmp.FilterValues(func(a, b map[string]string) bool { return len(a) == 0 && len(b) == 0 }, cmp.Ignore())
