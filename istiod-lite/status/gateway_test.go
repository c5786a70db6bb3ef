package status

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

var (
	then = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now  = then.Add(time.Hour)
)

func cond(typ string, status metav1.ConditionStatus, reason string, gen int64, at time.Time) metav1.Condition {
	c := metav1.Condition{Type: typ, Status: status, Reason: reason, Message: reason + " message", ObservedGeneration: gen}
	if !at.IsZero() {
		c.LastTransitionTime = metav1.NewTime(at)
	}
	return c
}

func TestServiceConditions(t *testing.T) {
	bound := model.PolicyCondition{Type: model.ConditionWaypointBound, Status: "True", Reason: model.ReasonWaypointAccepted, Message: "Successfully attached to waypoint demo/waypoint"}
	notReady := model.PolicyCondition{Type: model.ConditionWaypointBound, Status: "False", Reason: model.ReasonWaypointIsNotReady, Message: `waypoint "demo/waypoint" is not ready`}
	k8s := func(c model.PolicyCondition, gen int64, at time.Time) metav1.Condition {
		return metav1.Condition{Type: c.Type, Status: metav1.ConditionStatus(c.Status), Reason: c.Reason, Message: c.Message, ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(at)}
	}
	st := func(c model.PolicyCondition) *model.PolicyStatus {
		return &model.PolicyStatus{Kind: model.KindService, Namespace: "demo", Name: "echo", Conditions: []model.PolicyCondition{c}}
	}
	other := cond("example.com/Ready", metav1.ConditionTrue, "Fine", 0, then)
	tests := []struct {
		name        string
		have        []metav1.Condition
		st          *model.PolicyStatus
		want        []metav1.Condition
		wantChanged bool
	}{
		{name: "bound", st: st(bound), want: []metav1.Condition{k8s(bound, 1, now)}, wantChanged: true},
		{name: "unchanged", have: []metav1.Condition{k8s(bound, 1, then)}, st: st(bound), want: []metav1.Condition{k8s(bound, 1, then)}},
		{name: "not ready flips the status", have: []metav1.Condition{k8s(bound, 1, then)}, st: st(notReady), want: []metav1.Condition{k8s(notReady, 1, now)}, wantChanged: true},
		{name: "other types kept", have: []metav1.Condition{other}, st: st(bound), want: []metav1.Condition{other, k8s(bound, 1, now)}, wantChanged: true},
		{name: "unbound loses ours only", have: []metav1.Condition{k8s(bound, 1, then), other}, want: []metav1.Condition{other}, wantChanged: true},
		{name: "nothing to say", have: []metav1.Condition{other}, want: []metav1.Condition{other}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := ServiceConditions(tt.have, tt.st, 1, now)
			if changed != tt.wantChanged {
				t.Errorf("ServiceConditions changed = %v, want %v", changed, tt.wantChanged)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ServiceConditions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGatewayStatus(t *testing.T) {
	ip, host := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	addrs := []gatewayv1.GatewayStatusAddress{{Type: &ip, Value: "198.18.128.10"}, {Type: &host, Value: "waypoint.demo.svc.cluster.local"}}
	kinds := []gatewayv1.RouteGroupKind{}
	listener := func(status metav1.ConditionStatus, reason string, at time.Time) gatewayv1.ListenerStatus {
		return gatewayv1.ListenerStatus{Name: "mesh", SupportedKinds: kinds, Conditions: []metav1.Condition{cond("Accepted", status, reason, 1, at)}}
	}
	pending := cond("Accepted", metav1.ConditionUnknown, "Pending", 0, time.Unix(0, 0)) // the CRD's default
	accepted := cond("Accepted", metav1.ConditionTrue, "Accepted", 1, time.Time{})
	programmed := cond("Programmed", metav1.ConditionTrue, "Programmed", 1, time.Time{})
	notProgrammed := cond("Programmed", metav1.ConditionFalse, "AddressNotAssigned", 1, time.Time{})
	at := func(c metav1.Condition, t time.Time) metav1.Condition {
		c.LastTransitionTime = metav1.NewTime(t)
		return c
	}
	foreign := cond("example.com/Audited", metav1.ConditionTrue, "Audited", 1, then)
	st := func(addrs []gatewayv1.GatewayStatusAddress, listenerOK bool, conds ...metav1.Condition) *model.GatewayStatus {
		l := gatewayv1.ListenerStatus{Name: "mesh", Conditions: []metav1.Condition{cond("Accepted", metav1.ConditionTrue, "Accepted", 1, time.Time{})}}
		if !listenerOK {
			l.Conditions = []metav1.Condition{cond("Accepted", metav1.ConditionFalse, "UnsupportedProtocol", 1, time.Time{})}
		}
		return &model.GatewayStatus{Namespace: "demo", Name: "waypoint", Generation: 1, Addresses: addrs, Conditions: conds, Listeners: []gatewayv1.ListenerStatus{l}}
	}
	tests := []struct {
		name        string
		have        gatewayv1.GatewayStatus
		st          *model.GatewayStatus
		want        gatewayv1.GatewayStatus
		wantChanged bool
	}{
		{
			name: "first status replaces the CRD's Pending",
			have: gatewayv1.GatewayStatus{Conditions: []metav1.Condition{pending}},
			st:   st(nil, true, accepted, notProgrammed),
			want: gatewayv1.GatewayStatus{
				Conditions: []metav1.Condition{at(accepted, now), at(notProgrammed, now)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", now)},
			},
			wantChanged: true,
		},
		{
			name: "programmed: addresses, Programmed flips, Accepted keeps its time",
			have: gatewayv1.GatewayStatus{
				Conditions: []metav1.Condition{at(accepted, then), at(notProgrammed, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			st: st(addrs, true, accepted, programmed),
			want: gatewayv1.GatewayStatus{
				Addresses:  addrs,
				Conditions: []metav1.Condition{at(accepted, then), at(programmed, now)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			wantChanged: true,
		},
		{
			name: "unchanged",
			have: gatewayv1.GatewayStatus{
				Addresses:  addrs,
				Conditions: []metav1.Condition{at(accepted, then), at(programmed, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			st: st(addrs, true, accepted, programmed),
			want: gatewayv1.GatewayStatus{
				Addresses:  addrs,
				Conditions: []metav1.Condition{at(accepted, then), at(programmed, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
		},
		{
			name: "a listener refused flips its condition; other condition types kept",
			have: gatewayv1.GatewayStatus{
				Conditions: []metav1.Condition{foreign, at(accepted, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			st: st(nil, false, accepted),
			want: gatewayv1.GatewayStatus{
				Conditions: []metav1.Condition{foreign, at(accepted, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionFalse, "UnsupportedProtocol", now)},
			},
			wantChanged: true,
		},
		{
			name: "addresses withdrawn",
			have: gatewayv1.GatewayStatus{
				Addresses:  addrs,
				Conditions: []metav1.Condition{at(accepted, then), at(programmed, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			st: st(nil, true, accepted, programmed),
			want: gatewayv1.GatewayStatus{
				Conditions: []metav1.Condition{at(accepted, then), at(programmed, then)},
				Listeners:  []gatewayv1.ListenerStatus{listener(metav1.ConditionTrue, "Accepted", then)},
			},
			wantChanged: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := GatewayStatus(tt.have, tt.st, now)
			if changed != tt.wantChanged {
				t.Errorf("GatewayStatus changed = %v, want %v", changed, tt.wantChanged)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("GatewayStatus (-want +got):\n%s", diff)
			}
		})
	}
}
