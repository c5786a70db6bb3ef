package status

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

func TestConditions(t *testing.T) {
	then := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := then.Add(time.Hour)
	accepted := model.PolicyCondition{Type: model.ConditionZtunnelAccepted, Status: "True", Reason: model.ReasonAccepted, Message: "attached to ztunnel"}
	partial := model.PolicyCondition{Type: model.ConditionZtunnelAccepted, Status: "True", Reason: model.ReasonUnsupportedValue, Message: "needs a waypoint"}
	invalid := model.PolicyCondition{Type: model.ConditionZtunnelAccepted, Status: "False", Reason: model.ReasonInvalid, Message: "bad"}
	cond := func(c model.PolicyCondition, gen int64, at time.Time) *metav1alpha1.IstioCondition {
		return &metav1alpha1.IstioCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message,
			ObservedGeneration: gen, LastTransitionTime: timestamppb.New(at)}
	}
	foreign := &metav1alpha1.IstioCondition{Type: "Reconciled", Status: "True", Reason: "Done"}
	wpAccepted := model.PolicyCondition{Type: model.ConditionWaypointAccepted, Status: "True", Reason: model.ReasonAccepted, Message: "bound to waypoint demo/waypoint"}
	st := func(cs ...model.PolicyCondition) *model.PolicyStatus {
		return &model.PolicyStatus{Kind: model.KindAuthorizationPolicy, Namespace: "demo", Name: "p", Conditions: cs}
	}
	tests := []struct {
		name        string
		have        []*metav1alpha1.IstioCondition
		st          *model.PolicyStatus
		gen         int64
		want        []*metav1alpha1.IstioCondition
		wantChanged bool
	}{
		{name: "new", st: st(accepted), gen: 1, want: []*metav1alpha1.IstioCondition{cond(accepted, 1, now)}, wantChanged: true},
		{name: "unchanged", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then)}, st: st(accepted), gen: 1,
			want: []*metav1alpha1.IstioCondition{cond(accepted, 1, then)}},
		{name: "same status, new reason keeps transition time", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then)}, st: st(partial), gen: 2,
			want: []*metav1alpha1.IstioCondition{cond(partial, 2, then)}, wantChanged: true},
		{name: "status flips", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then)}, st: st(invalid), gen: 2,
			want: []*metav1alpha1.IstioCondition{cond(invalid, 2, now)}, wantChanged: true},
		{name: "other types kept", have: []*metav1alpha1.IstioCondition{foreign}, st: st(accepted), gen: 1,
			want: []*metav1alpha1.IstioCondition{foreign, cond(accepted, 1, now)}, wantChanged: true},
		{name: "WaypointAccepted next to ZtunnelAccepted", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then)}, st: st(accepted, wpAccepted), gen: 1,
			want: []*metav1alpha1.IstioCondition{cond(accepted, 1, then), cond(wpAccepted, 1, now)}, wantChanged: true},
		{name: "policy left to waypoints loses ZtunnelAccepted", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then), foreign}, st: st(wpAccepted), gen: 2,
			want: []*metav1alpha1.IstioCondition{foreign, cond(wpAccepted, 2, now)}, wantChanged: true},
		{name: "policy without status loses both of ours", have: []*metav1alpha1.IstioCondition{cond(accepted, 1, then), cond(wpAccepted, 1, then), foreign}, st: nil, gen: 2,
			want: []*metav1alpha1.IstioCondition{foreign}, wantChanged: true},
		{name: "nothing to do", have: nil, st: nil, gen: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := Conditions(tt.have, tt.st, tt.gen, now)
			if changed != tt.wantChanged {
				t.Errorf("Conditions changed = %v, want %v", changed, tt.wantChanged)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Conditions (-want +got):\n%s", diff)
			}
		})
	}
}
