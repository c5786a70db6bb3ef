package status

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// recordConflicts records a Warning Event on each pod whose address
// conflict is new or changed since the last Event.
func (w *Writer) recordConflicts(ctx context.Context, statuses map[string]*model.PolicyStatus) error {
	w.mu.Lock()
	if w.evented == nil {
		w.evented = map[string]string{}
	}
	for k := range w.evented {
		if _, ok := statuses[k]; !ok {
			delete(w.evented, k)
		}
	}
	w.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(statuses)) {
		st := statuses[k]
		if st.Kind != model.KindPod || len(st.Conditions) == 0 {
			continue
		}
		msg := st.Conditions[0].Message
		w.mu.Lock()
		done := w.evented[k] == msg
		w.mu.Unlock()
		if done {
			continue
		}
		var pod corev1.Pod
		if err := w.cfg.Client.Get(ctx, client.ObjectKey{Namespace: st.Namespace, Name: st.Name}, &pod); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("status: Pod %s/%s: %w", st.Namespace, st.Name, err)
		}
		now := metav1.NewTime(w.cfg.Now())
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + ".", Namespace: pod.Namespace},
			InvolvedObject: corev1.ObjectReference{
				APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name,
				UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			},
			Reason: st.Conditions[0].Reason, Message: msg, Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: EventComponent},
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
			ReportingController: EventComponent, ReportingInstance: EventComponent,
		}
		if err := w.cfg.Client.Create(ctx, ev); err != nil {
			return fmt.Errorf("status: event on Pod %s/%s: %w", st.Namespace, st.Name, err)
		}
		w.mu.Lock()
		w.evented[k] = msg
		w.mu.Unlock()
		w.log.Warn("pod not served: address conflict", "namespace", pod.Namespace, "name", pod.Name, "message", msg)
	}
	return nil
}

// EventComponent is the source of the Events the Writer records.
const EventComponent = "istiod-lite"
