package status

import (
	"context"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// TestConflictEvents: a pod the model does not serve because of an IP
// conflict gets one Warning Event per conflict, not one per sync.
// (controller-runtime's in-memory client: no API server binaries here;
// tests/kube runs the Writer against a real one.)
func TestConflictEvents(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := securityv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "impostor", UID: "u1"}}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(pod).Build()
	w, err := New(Config{Client: c, Now: func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	conflict := func(msg string) map[string]*model.PolicyStatus {
		st := &model.PolicyStatus{Kind: model.KindPod, Namespace: "demo", Name: "impostor", Conditions: []model.PolicyCondition{{
			Type: model.ConditionZtunnelAccepted, Status: "False", Reason: model.ReasonAddressConflict, Message: msg,
		}}}
		gone := &model.PolicyStatus{Kind: model.KindPod, Namespace: "demo", Name: "deleted", Conditions: st.Conditions}
		return map[string]*model.PolicyStatus{st.Key(): st, gone.Key(): gone}
	}
	events := func() []corev1.Event {
		var l corev1.EventList
		if err := c.List(context.Background(), &l); err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	ctx := context.Background()
	for i, step := range []struct {
		statuses map[string]*model.PolicyStatus
		want     int
	}{
		{conflict("address 10.0.0.1 is also claimed by demo/echo-0, which is served"), 1},
		{conflict("address 10.0.0.1 is also claimed by demo/echo-0, which is served"), 1}, // same: no new event
		{conflict("address 10.0.0.1 is also claimed by demo/echo-1, which is served"), 2},
		{map[string]*model.PolicyStatus{}, 2},                                             // resolved
		{conflict("address 10.0.0.1 is also claimed by demo/echo-1, which is served"), 3}, // again after it was resolved
	} {
		w.Update(step.statuses)
		if err := w.Sync(ctx); err != nil {
			t.Fatalf("step %d: Sync: %v", i, err)
		}
		evs := events()
		if len(evs) != step.want {
			t.Fatalf("step %d: %d events, want %d: %+v", i, len(evs), step.want, evs)
		}
	}
	ev := events()[0]
	if ev.InvolvedObject.Kind != "Pod" || ev.InvolvedObject.Name != "impostor" || ev.InvolvedObject.UID != "u1" ||
		ev.Type != corev1.EventTypeWarning || ev.Reason != model.ReasonAddressConflict || ev.Namespace != "demo" {
		t.Errorf("event = %+v, want a Warning AddressConflict on Pod demo/impostor", ev)
	}
}
