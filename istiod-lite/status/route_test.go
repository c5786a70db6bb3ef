package status

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/kubetest"
	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/source/kube"
)

func svcRef(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: gatewayv1.ObjectName(name)}
}

func TestRouteParents(t *testing.T) {
	echo, other := svcRef("echo"), svcRef("other")
	ingress := gatewayv1.ParentReference{Name: "ingress"}
	ours := func(ref gatewayv1.ParentReference, conds ...metav1.Condition) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: model.RouteControllerName, Conditions: conds}
	}
	theirs := gatewayv1.RouteParentStatus{ParentRef: ingress, ControllerName: "example.com/gateway",
		Conditions: []metav1.Condition{cond("Accepted", metav1.ConditionTrue, "Accepted", 1, then)}}
	st := func(parents ...gatewayv1.RouteParentStatus) *model.RouteStatus {
		return &model.RouteStatus{Kind: model.KindHTTPRoute, Namespace: "demo", Name: "r", Generation: 1, Parents: parents}
	}
	acc, rej := cond("Accepted", metav1.ConditionTrue, "Accepted", 1, time.Time{}), cond("Accepted", metav1.ConditionFalse, "NoMatchingParent", 1, time.Time{})
	at := func(c metav1.Condition, when time.Time) metav1.Condition {
		c.LastTransitionTime = metav1.NewTime(when)
		return c
	}
	tests := []struct {
		name        string
		have        []gatewayv1.RouteParentStatus
		st          *model.RouteStatus
		want        []gatewayv1.RouteParentStatus
		wantChanged bool
	}{
		{name: "first status", st: st(ours(echo, acc)), want: []gatewayv1.RouteParentStatus{ours(echo, at(acc, now))}, wantChanged: true},
		{name: "unchanged", have: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then))}, st: st(ours(echo, acc)),
			want: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then))}},
		{name: "a flip gets a new transition time", have: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then))}, st: st(ours(echo, rej)),
			want: []gatewayv1.RouteParentStatus{ours(echo, at(rej, now))}, wantChanged: true},
		{name: "other controllers' parents kept, first; order alone is no change", have: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then)), theirs},
			st: st(ours(echo, acc)), want: []gatewayv1.RouteParentStatus{theirs, ours(echo, at(acc, then))}},
		{name: "other controllers' parents kept when ours change", have: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then)), theirs},
			st: st(ours(echo, rej)), want: []gatewayv1.RouteParentStatus{theirs, ours(echo, at(rej, now))}, wantChanged: true},
		{name: "a parent no longer reported is removed", have: []gatewayv1.RouteParentStatus{theirs, ours(echo, at(acc, then)), ours(other, at(acc, then))},
			st: st(ours(other, acc)), want: []gatewayv1.RouteParentStatus{theirs, ours(other, at(acc, then))}, wantChanged: true},
		{name: "no status of ours: all of ours removed", have: []gatewayv1.RouteParentStatus{ours(echo, at(acc, then)), theirs},
			want: []gatewayv1.RouteParentStatus{theirs}, wantChanged: true},
		{name: "nothing to say", have: []gatewayv1.RouteParentStatus{theirs}, want: []gatewayv1.RouteParentStatus{theirs}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := RouteParents(tt.have, tt.st, now)
			if changed != tt.wantChanged {
				t.Errorf("RouteParents changed = %v, want %v", changed, tt.wantChanged)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("RouteParents (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRouteWriterAgainstAPIServer writes the status of an HTTPRoute, a
// GRPCRoute and a TCPRoute through a real API server (whose CRD
// validation checks what is written), keeps another controller's parent,
// and removes ours when the model stops reporting it.
func TestRouteWriterAgainstAPIServer(t *testing.T) {
	rc := kubetest.Start(t)
	scheme, err := kube.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	get := func(o client.Object) {
		t.Helper()
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
	}
	meta := metav1.ObjectMeta{Namespace: "demo", Name: "r"}
	parents := []gatewayv1.ParentReference{svcRef("echo"), {Name: "ingress"}}
	port := gatewayv1.BackendObjectReference{Name: "echo", Port: ptr.To[int32](80)}
	hr := &gatewayv1.HTTPRoute{ObjectMeta: meta, Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}}}
	gr := &gatewayv1.GRPCRoute{ObjectMeta: meta, Spec: gatewayv1.GRPCRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}}}
	tr := &gatewayv1.TCPRoute{ObjectMeta: meta, Spec: gatewayv1.TCPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents},
		Rules: []gatewayv1.TCPRouteRule{{BackendRefs: []gatewayv1.BackendRef{{BackendObjectReference: port}}}}}}
	for _, o := range []client.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, hr, gr, tr} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
	// Another controller's parent, written first.
	theirs := gatewayv1.RouteParentStatus{ParentRef: hr.Spec.ParentRefs[1], ControllerName: "example.com/gateway",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "theirs", LastTransitionTime: metav1.NewTime(then)}}}
	get(hr)
	hr.Status.Parents = []gatewayv1.RouteParentStatus{theirs}
	if err := c.Status().Update(ctx, hr); err != nil {
		t.Fatal(err)
	}
	get(hr)
	theirs = hr.Status.Parents[0] // as the API server stores it

	w, err := New(Config{Client: c, Now: func() time.Time { return then }})
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[string]*model.RouteStatus{}
	for _, o := range []client.Object{hr, gr, tr} {
		get(o)
		kind := map[client.Object]string{hr: model.KindHTTPRoute, gr: model.KindGRPCRoute, tr: model.KindTCPRoute}[o]
		ref := hr.Spec.ParentRefs[0] // defaulted by the API server alike for every kind
		st := &model.RouteStatus{Kind: kind, Namespace: "demo", Name: "r", Generation: o.GetGeneration(), Parents: []gatewayv1.RouteParentStatus{{
			ParentRef: ref, ControllerName: model.RouteControllerName, Conditions: []metav1.Condition{
				{Type: "Accepted", Status: metav1.ConditionFalse, Reason: model.ReasonMissingUseWaypointLabel, Message: "no waypoint", ObservedGeneration: o.GetGeneration()},
				{Type: "ResolvedRefs", Status: metav1.ConditionTrue, Reason: "ResolvedRefs", Message: "All references resolved", ObservedGeneration: o.GetGeneration()},
			}}}}
		statuses[st.Key()] = st
	}
	w.UpdateRoutes(statuses)
	if err := w.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.Writes(); got != 3 {
		t.Errorf("Writes() = %d after the first Sync, want 3 (one per route kind)", got)
	}
	for _, o := range []client.Object{hr, gr, tr} {
		get(o)
	}
	wantOurs := func(st *model.RouteStatus) gatewayv1.RouteParentStatus {
		p := *st.Parents[0].DeepCopy()
		for i := range p.Conditions {
			p.Conditions[i].LastTransitionTime = metav1.NewTime(then)
		}
		return p
	}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{theirs, wantOurs(statuses["HTTPRoute/demo/r"])}, hr.Status.Parents); diff != "" {
		t.Errorf("HTTPRoute parents (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{wantOurs(statuses["GRPCRoute/demo/r"])}, gr.Status.Parents); diff != "" {
		t.Errorf("GRPCRoute parents (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{wantOurs(statuses["TCPRoute/demo/r"])}, tr.Status.Parents); diff != "" {
		t.Errorf("TCPRoute parents (-want +got):\n%s", diff)
	}

	// Nothing differs: nothing written.
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.Writes(); got != 3 {
		t.Errorf("Writes() = %d after a Sync with nothing new, want 3", got)
	}

	// The model reports nothing any more: ours go, theirs stay.
	w.UpdateRoutes(map[string]*model.RouteStatus{})
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	get(hr)
	get(gr)
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{theirs}, hr.Status.Parents); diff != "" {
		t.Errorf("HTTPRoute parents after the model dropped it (-want +got):\n%s", diff)
	}
	if len(gr.Status.Parents) != 0 {
		t.Errorf("GRPCRoute parents = %v after the model dropped it, want none", gr.Status.Parents)
	}
}
