package status

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// syncServices writes the istio.io/WaypointBound condition of every
// Service whose condition differs from the model's (or that has one the
// model no longer computes).
func (w *Writer) syncServices(ctx context.Context, statuses map[string]*model.PolicyStatus) error {
	var l corev1.ServiceList
	if err := w.cfg.Client.List(ctx, &l); err != nil {
		return fmt.Errorf("status: list Services: %w", err)
	}
	var first error
	for i := range l.Items {
		svc := &l.Items[i]
		st := statuses[model.KindService+"/"+svc.Namespace+"/"+svc.Name]
		if st == nil && !hasCondition(svc.Status.Conditions, model.ConditionWaypointBound) {
			continue // the common case: nothing to say, nothing said
		}
		if st != nil && st.Generation != 0 && st.Generation != svc.Generation {
			continue // the model has not seen this generation yet
		}
		conds, changed := ServiceConditions(svc.Status.Conditions, st, svc.Generation, w.cfg.Now())
		if !changed {
			continue
		}
		svc.Status.Conditions = conds
		if err := w.cfg.Client.Status().Update(ctx, svc); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			if first == nil {
				first = fmt.Errorf("status: Service %s/%s: %w", svc.Namespace, svc.Name, err)
			}
			continue
		}
		w.wrote()
		attrs := []any{"namespace", svc.Namespace, "name", svc.Name, "condition", model.ConditionWaypointBound}
		if st != nil && len(st.Conditions) > 0 {
			attrs = append(attrs, "status", st.Conditions[0].Status, "reason", st.Conditions[0].Reason)
		} else {
			attrs = append(attrs, "status", "removed")
		}
		w.log.Info("service status written", attrs...)
	}
	return first
}

// ServiceConditions returns the conditions of a Service to write: have
// with its istio.io/WaypointBound condition replaced by st's (nil: removed),
// stamped with generation and, when the status changes, lastTransitionTime
// now. Conditions of other types are kept. changed is false when have
// already says the same.
func ServiceConditions(have []metav1.Condition, st *model.PolicyStatus, generation int64, now time.Time) ([]metav1.Condition, bool) {
	var want []metav1.Condition
	if st != nil {
		for _, c := range st.Conditions {
			want = append(want, metav1.Condition{
				Type: c.Type, Status: metav1.ConditionStatus(c.Status), Reason: c.Reason, Message: c.Message,
				ObservedGeneration: generation,
			})
		}
	}
	return mergeConditions(have, want, func(t string) bool { return t == model.ConditionWaypointBound }, now)
}

func hasCondition(conds []metav1.Condition, typ string) bool {
	for _, c := range conds {
		if c.Type == typ {
			return true
		}
	}
	return false
}
