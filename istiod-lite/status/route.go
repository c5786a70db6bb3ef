package status

import (
	"context"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// Route status: every HTTPRoute, GRPCRoute and TCPRoute gets, in
// .status.parents, one entry per parentRef the model reports on (kind
// Service, or a waypoint Gateway), with controllerName
// model.RouteControllerName. Entries of other controllers are kept as they
// are; entries of ours the model no longer reports are removed.

// UpdateRoutes records the latest route statuses computed by the model
// (keyed as Output.RouteStatuses) and wakes the writer. It never blocks.
func (w *Writer) UpdateRoutes(statuses map[string]*model.RouteStatus) {
	w.mu.Lock()
	w.routes = statuses
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// routeObject is a route of any kind with its status' parents.
type routeObject struct {
	obj     client.Object
	parents *[]gatewayv1.RouteParentStatus
}

// routeKinds lists each route kind with how to list it.
var routeKinds = []struct {
	kind string
	list func() (client.ObjectList, func() []routeObject)
}{
	{model.KindHTTPRoute, func() (client.ObjectList, func() []routeObject) {
		l := &gatewayv1.HTTPRouteList{}
		return l, func() []routeObject {
			out := make([]routeObject, len(l.Items))
			for i := range l.Items {
				out[i] = routeObject{&l.Items[i], &l.Items[i].Status.Parents}
			}
			return out
		}
	}},
	{model.KindGRPCRoute, func() (client.ObjectList, func() []routeObject) {
		l := &gatewayv1.GRPCRouteList{}
		return l, func() []routeObject {
			out := make([]routeObject, len(l.Items))
			for i := range l.Items {
				out[i] = routeObject{&l.Items[i], &l.Items[i].Status.Parents}
			}
			return out
		}
	}},
	{model.KindTCPRoute, func() (client.ObjectList, func() []routeObject) {
		l := &gatewayv1.TCPRouteList{}
		return l, func() []routeObject {
			out := make([]routeObject, len(l.Items))
			for i := range l.Items {
				out[i] = routeObject{&l.Items[i], &l.Items[i].Status.Parents}
			}
			return out
		}
	}},
}

// syncRoutes writes the status of every route whose parents of ours
// differ from what the model computed.
func (w *Writer) syncRoutes(ctx context.Context, statuses map[string]*model.RouteStatus) error {
	var first error
	for _, k := range routeKinds {
		if w.skip(k.kind) {
			continue
		}
		l, items := k.list()
		if err := w.cfg.Client.List(ctx, l); err != nil {
			if first == nil {
				first = fmt.Errorf("status: list %ss: %w", k.kind, err)
			}
			continue
		}
		for _, r := range items() {
			st := statuses[k.kind+"/"+r.obj.GetNamespace()+"/"+r.obj.GetName()]
			if st != nil && st.Generation != r.obj.GetGeneration() {
				continue // a generation the model has not seen yet
			}
			next, changed := RouteParents(*r.parents, st, w.cfg.Now())
			if !changed {
				continue
			}
			*r.parents = next
			if err := w.cfg.Client.Status().Update(ctx, r.obj); err != nil {
				if apierrors.IsNotFound(err) {
					continue
				}
				if first == nil {
					first = fmt.Errorf("status: %s %s/%s: %w", k.kind, r.obj.GetNamespace(), r.obj.GetName(), err)
				}
				continue
			}
			w.wrote()
			w.log.Info("route status written", "kind", k.kind, "namespace", r.obj.GetNamespace(), "name", r.obj.GetName(), "parents", len(next))
		}
	}
	return first
}

// RouteParents returns the parents of a route's status to write: have's
// entries of other controllers, in their order, then st's (nil: none),
// each condition keeping the lastTransitionTime of have's entry for the
// same parentRef while its status does not change. changed is false when
// have already says the same.
func RouteParents(have []gatewayv1.RouteParentStatus, st *model.RouteStatus, now time.Time) ([]gatewayv1.RouteParentStatus, bool) {
	out := []gatewayv1.RouteParentStatus{} // never null: the CRD requires parents
	var ours []gatewayv1.RouteParentStatus
	for _, p := range have {
		if p.ControllerName == model.RouteControllerName {
			ours = append(ours, p)
		} else {
			out = append(out, p)
		}
	}
	var want []gatewayv1.RouteParentStatus
	if st != nil {
		want = st.Parents
	}
	changed := len(ours) != len(want)
	for i, w := range want {
		var prev gatewayv1.RouteParentStatus
		if j := slices.IndexFunc(ours, func(p gatewayv1.RouteParentStatus) bool { return equality.Semantic.DeepEqual(p.ParentRef, w.ParentRef) }); j >= 0 {
			prev = ours[j]
			if j != i {
				changed = true
			}
		} else {
			changed = true
		}
		conds, c := mergeConditions(prev.Conditions, w.Conditions, func(string) bool { return true }, now)
		changed = changed || c
		out = append(out, gatewayv1.RouteParentStatus{ParentRef: w.ParentRef, ControllerName: w.ControllerName, Conditions: conds})
	}
	return out, changed
}
