package status

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// policyTypes are the AuthorizationPolicy condition types the Writer owns:
// a policy whose status lacks one loses it (a policy that left ztunnel's
// scope for waypoints loses ZtunnelAccepted, one that lost its targetRefs
// loses WaypointAccepted).
var policyTypes = []string{model.ConditionZtunnelAccepted, model.ConditionWaypointAccepted}

// syncPolicies writes the status of every AuthorizationPolicy whose
// conditions differ from the model's.
func (w *Writer) syncPolicies(ctx context.Context, statuses map[string]*model.PolicyStatus) error {
	var l securityv1.AuthorizationPolicyList
	if err := w.cfg.Client.List(ctx, &l); err != nil {
		return fmt.Errorf("status: list AuthorizationPolicies: %w", err)
	}
	var first error
	for _, p := range l.Items {
		st := statuses[model.KindAuthorizationPolicy+"/"+p.Namespace+"/"+p.Name]
		if st != nil && st.Generation != p.Generation {
			continue // the model has not seen this generation yet; a later update will bring it
		}
		conds, changed := Conditions(p.Status.Conditions, st, p.Generation, w.cfg.Now())
		if !changed {
			continue
		}
		p.Status.Conditions = conds
		if err := w.cfg.Client.Status().Update(ctx, p); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			if first == nil {
				first = fmt.Errorf("status: AuthorizationPolicy %s/%s: %w", p.Namespace, p.Name, err)
			}
			continue
		}
		w.wrote()
		for _, c := range conds {
			if slices.Contains(policyTypes, c.Type) {
				w.log.Info("policy status written", "namespace", p.Namespace, "name", p.Name,
					"condition", c.Type, "status", c.Status, "reason", c.Reason)
			}
		}
	}
	return first
}

// Conditions returns the conditions to write: have with the conditions
// of st (nil: none of ours) replacing those of the same types, stamped with
// generation and, when a condition's status changes, lastTransitionTime
// now. changed is false when have already says the same.
func Conditions(have []*metav1alpha1.IstioCondition, st *model.PolicyStatus, generation int64, now time.Time) (conds []*metav1alpha1.IstioCondition, changed bool) {
	want := map[string]model.PolicyCondition{}
	if st != nil {
		for _, c := range st.Conditions {
			want[c.Type] = c
		}
	}
	// Ours are the policyTypes, whether or not st has them: a policy that
	// left ztunnel's scope loses ZtunnelAccepted.
	ours := func(t string) bool {
		_, ok := want[t]
		return ok || slices.Contains(policyTypes, t)
	}
	seen := map[string]bool{}
	for _, c := range have {
		if c == nil {
			continue
		}
		if !ours(c.Type) {
			conds = append(conds, c)
			continue
		}
		w, ok := want[c.Type]
		if !ok || seen[c.Type] {
			changed = true // dropped
			continue
		}
		seen[c.Type] = true
		if c.Status == w.Status && c.Reason == w.Reason && c.Message == w.Message && c.ObservedGeneration == generation {
			conds = append(conds, c)
			continue
		}
		changed = true
		nc := &metav1alpha1.IstioCondition{
			Type: w.Type, Status: w.Status, Reason: w.Reason, Message: w.Message,
			ObservedGeneration: generation, LastTransitionTime: c.LastTransitionTime,
		}
		if c.Status != w.Status || nc.LastTransitionTime == nil {
			nc.LastTransitionTime = timestamppb.New(now)
		}
		conds = append(conds, nc)
	}
	types := make([]string, 0, len(want))
	for t := range want {
		if !seen[t] {
			types = append(types, t)
		}
	}
	slices.Sort(types)
	for _, t := range types {
		w := want[t]
		changed = true
		conds = append(conds, &metav1alpha1.IstioCondition{
			Type: w.Type, Status: w.Status, Reason: w.Reason, Message: w.Message,
			ObservedGeneration: generation, LastTransitionTime: timestamppb.New(now),
		})
	}
	return conds, changed
}
