package status

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// mergeConditions returns the conditions to write, of the Kubernetes kind
// (metav1.Condition): have with those whose type ours reports replaced by
// want's of the same type (dropped when want has none), want's new types
// appended in want's order, and the others kept as they are. A condition
// whose status does not change keeps its lastTransitionTime; a new or
// flipped one gets now. Each of want's carries its own ObservedGeneration.
// changed is false when have already says the same.
func mergeConditions(have, want []metav1.Condition, ours func(string) bool, now time.Time) (conds []metav1.Condition, changed bool) {
	byType := make(map[string]metav1.Condition, len(want))
	for _, c := range want {
		byType[c.Type] = c
	}
	isOurs := func(t string) bool {
		_, ok := byType[t]
		return ok || (ours != nil && ours(t))
	}
	seen := map[string]bool{}
	for _, c := range have {
		if !isOurs(c.Type) {
			conds = append(conds, c)
			continue
		}
		w, ok := byType[c.Type]
		if !ok || seen[c.Type] {
			changed = true // dropped
			continue
		}
		seen[c.Type] = true
		if c.Status == w.Status && c.Reason == w.Reason && c.Message == w.Message && c.ObservedGeneration == w.ObservedGeneration {
			conds = append(conds, c)
			continue
		}
		changed = true
		w.LastTransitionTime = c.LastTransitionTime
		if c.Status != w.Status || w.LastTransitionTime.IsZero() {
			w.LastTransitionTime = metav1.NewTime(now)
		}
		conds = append(conds, w)
	}
	for _, w := range want {
		if seen[w.Type] {
			continue
		}
		seen[w.Type] = true
		changed = true
		w.LastTransitionTime = metav1.NewTime(now)
		conds = append(conds, w)
	}
	return conds, changed
}
