package status

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	apisecurityv1beta1 "istio.io/api/security/v1beta1"
	apitypev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/kubetest"
	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/source/kube"
)

// TestWriterAgainstAPIServer writes Gateway, Service and
// AuthorizationPolicy status through a real API server (whose CRD
// validation checks what is written), writes nothing when nothing
// differs, and keeps conditions of types that are not its own.
func TestWriterAgainstAPIServer(t *testing.T) {
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
	create := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := c.Create(ctx, o); err != nil {
				t.Fatalf("create %T %s: %v", o, o.GetName(), err)
			}
		}
	}
	get := func(o client.Object) {
		t.Helper()
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
	}
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: model.WaypointGatewayClass,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}
	other := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "ingress"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio",
			Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType}}}}
	pol := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "deny-admin"}}
	pol.Spec.TargetRefs = []*apitypev1beta1.PolicyTargetReference{{Kind: "Service", Name: "echo"}}
	pol.Spec.Action = apisecurityv1beta1.AuthorizationPolicy_DENY
	pol.Spec.Rules = []*apisecurityv1beta1.Rule{{To: []*apisecurityv1beta1.Rule_To{{Operation: &apisecurityv1beta1.Operation{Paths: []string{"/admin"}}}}}}
	create(svc, gw, other, pol)
	otherBefore := other.DeepCopy()
	get(otherBefore)

	clock := then
	w, err := New(Config{Client: c, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	ip, host := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	gwStatus := func(programmed metav1.ConditionStatus, reason string, addrs bool) *model.GatewayStatus {
		st := &model.GatewayStatus{Namespace: "demo", Name: "waypoint", Generation: gw.Generation,
			Conditions: []metav1.Condition{
				{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "Resource accepted", ObservedGeneration: gw.Generation},
				{Type: "Programmed", Status: programmed, Reason: reason, Message: "Resource programmed", ObservedGeneration: gw.Generation},
			},
			Listeners: []gatewayv1.ListenerStatus{{Name: "mesh", Conditions: []metav1.Condition{
				{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "No errors found", ObservedGeneration: gw.Generation},
			}}},
		}
		if addrs {
			st.Addresses = []gatewayv1.GatewayStatusAddress{{Type: &ip, Value: "198.18.128.10"}, {Type: &host, Value: "waypoint.demo.svc.cluster.local"}}
		}
		return st
	}
	policies := map[string]*model.PolicyStatus{
		"AuthorizationPolicy/demo/deny-admin": {Kind: model.KindAuthorizationPolicy, Namespace: "demo", Name: "deny-admin", Generation: pol.Generation,
			Conditions: []model.PolicyCondition{{Type: model.ConditionWaypointAccepted, Status: "True", Reason: model.ReasonAccepted, Message: "bound to demo/waypoint"}}},
		"Service/demo/echo": {Kind: model.KindService, Namespace: "demo", Name: "echo", Generation: svc.Generation,
			Conditions: []model.PolicyCondition{{Type: model.ConditionWaypointBound, Status: "True", Reason: model.ReasonWaypointAccepted, Message: "Successfully attached to waypoint demo/waypoint"}}},
	}
	w.Update(policies)
	w.UpdateGateways(map[string]*model.GatewayStatus{"demo/waypoint": gwStatus(metav1.ConditionFalse, "AddressNotAssigned", false)})
	if err := w.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.Writes(); got != 3 {
		t.Errorf("Writes() = %d after the first Sync, want 3 (policy, service, gateway)", got)
	}

	t.Run("first statuses", func(t *testing.T) {
		get(pol)
		if len(pol.Status.Conditions) != 1 || pol.Status.Conditions[0].Type != model.ConditionWaypointAccepted ||
			pol.Status.Conditions[0].Status != "True" || pol.Status.Conditions[0].ObservedGeneration != pol.Generation {
			t.Errorf("policy conditions = %v, want WaypointAccepted True of generation %d", pol.Status.Conditions, pol.Generation)
		}
		get(svc)
		want := []metav1.Condition{{Type: model.ConditionWaypointBound, Status: metav1.ConditionTrue, Reason: model.ReasonWaypointAccepted,
			Message: "Successfully attached to waypoint demo/waypoint", ObservedGeneration: svc.Generation, LastTransitionTime: metav1.NewTime(then)}}
		if diff := cmp.Diff(want, svc.Status.Conditions); diff != "" {
			t.Errorf("service conditions (-want +got):\n%s", diff)
		}
		get(gw)
		if len(gw.Status.Addresses) != 0 || len(gw.Status.Listeners) != 1 || len(gw.Status.Conditions) != 2 ||
			gw.Status.Conditions[1].Reason != "AddressNotAssigned" {
			t.Errorf("gateway status = %+v, want no address, one listener, Accepted and Programmed=False", gw.Status)
		}
		get(other)
		if diff := cmp.Diff(otherBefore.Status, other.Status); diff != "" {
			t.Errorf("a Gateway the model has no status for was written (-before +after):\n%s", diff)
		}
	})

	t.Run("nothing differs, nothing is written", func(t *testing.T) {
		before := w.Writes()
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := w.Writes(); got != before {
			t.Errorf("Writes() = %d after a Sync with nothing new, want %d", got, before)
		}
	})

	t.Run("programmed: addresses and a new transition time for Programmed only", func(t *testing.T) {
		clock = now
		w.UpdateGateways(map[string]*model.GatewayStatus{"demo/waypoint": gwStatus(metav1.ConditionTrue, "Programmed", true)})
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		get(gw)
		if len(gw.Status.Addresses) != 2 || gw.Status.Addresses[0].Value != "198.18.128.10" {
			t.Errorf("addresses = %v, want the ClusterIP and the hostname", gw.Status.Addresses)
		}
		times := map[string]time.Time{}
		for _, cnd := range gw.Status.Conditions {
			times[cnd.Type] = cnd.LastTransitionTime.UTC()
		}
		if !times["Accepted"].Equal(then) || !times["Programmed"].Equal(now) {
			t.Errorf("transition times = %v, want Accepted at %v (unchanged) and Programmed at %v", times, then, now)
		}
	})

	t.Run("conditions of other types are kept; an unbound Service loses ours", func(t *testing.T) {
		get(svc)
		svc.Status.Conditions = append(svc.Status.Conditions, metav1.Condition{Type: "example.com/Exposed", Status: metav1.ConditionTrue,
			Reason: "Exposed", Message: "by someone else", LastTransitionTime: metav1.NewTime(then)})
		if err := c.Status().Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		w.Update(map[string]*model.PolicyStatus{}) // neither bound nor targeted any more
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		get(svc)
		if diff := cmp.Diff([]string{"example.com/Exposed"}, conditionTypes(svc.Status.Conditions), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("service condition types (-want +got):\n%s", diff)
		}
		get(pol)
		if len(pol.Status.Conditions) != 0 {
			t.Errorf("policy conditions = %v after it lost its status, want none of ours", pol.Status.Conditions)
		}
	})
}

func conditionTypes(cs []metav1.Condition) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Type)
	}
	return out
}
