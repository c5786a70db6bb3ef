package status

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// gatewayTypes are the Gateway condition types the Writer owns.
var gatewayTypes = []string{string(gatewayv1.GatewayConditionAccepted), string(gatewayv1.GatewayConditionProgrammed)}

// syncGateways writes the status of every Gateway the model computed one
// for (the waypoints) where it differs.
func (w *Writer) syncGateways(ctx context.Context, statuses map[string]*model.GatewayStatus) error {
	var l gatewayv1.GatewayList
	if err := w.cfg.Client.List(ctx, &l); err != nil {
		return fmt.Errorf("status: list Gateways: %w", err)
	}
	var first error
	for i := range l.Items {
		gw := &l.Items[i]
		st := statuses[gw.Namespace+"/"+gw.Name]
		if st == nil || st.Generation != gw.Generation {
			continue // not a waypoint, or a generation the model has not seen yet
		}
		next, changed := GatewayStatus(gw.Status, st, w.cfg.Now())
		if !changed {
			continue
		}
		gw.Status = next
		if err := w.cfg.Client.Status().Update(ctx, gw); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			if first == nil {
				first = fmt.Errorf("status: Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
			}
			continue
		}
		w.wrote()
		attrs := []any{"namespace", gw.Namespace, "name", gw.Name, "addresses", len(next.Addresses)}
		for _, c := range next.Conditions {
			if slices.Contains(gatewayTypes, c.Type) {
				attrs = append(attrs, c.Type, string(c.Status)+"/"+c.Reason)
			}
		}
		w.log.Info("gateway status written", attrs...)
	}
	return first
}

// GatewayStatus returns the status of a Gateway to write: have with st's
// addresses, st's conditions (Accepted and Programmed, replacing ours;
// other types kept) and st's listeners, every condition keeping its
// lastTransitionTime while its status does not change. changed is false
// when have already says the same.
func GatewayStatus(have gatewayv1.GatewayStatus, st *model.GatewayStatus, now time.Time) (gatewayv1.GatewayStatus, bool) {
	out := *have.DeepCopy()
	changed := false
	if !slices.EqualFunc(have.Addresses, st.Addresses, addressEqual) {
		out.Addresses = slices.Clone(st.Addresses)
		changed = true
	}
	conds, c := mergeConditions(have.Conditions, st.Conditions, func(t string) bool { return slices.Contains(gatewayTypes, t) }, now)
	out.Conditions = conds
	changed = changed || c

	// Listeners are all ours: st's, in st's order, each condition keeping
	// the transition time of the listener of the same name.
	prev := map[gatewayv1.SectionName]gatewayv1.ListenerStatus{}
	for _, l := range have.Listeners {
		prev[l.Name] = l
	}
	listeners := make([]gatewayv1.ListenerStatus, 0, len(st.Listeners))
	for _, l := range st.Listeners {
		p := prev[l.Name]
		conds, c := mergeConditions(p.Conditions, l.Conditions, func(string) bool { return true }, now)
		if conds == nil {
			conds = []metav1.Condition{} // required by the CRD
		}
		kinds := l.SupportedKinds
		if kinds == nil {
			kinds = []gatewayv1.RouteGroupKind{} // required by the CRD
		}
		next := gatewayv1.ListenerStatus{Name: l.Name, SupportedKinds: kinds, AttachedRoutes: l.AttachedRoutes, Conditions: conds}
		if _, ok := prev[l.Name]; !ok || c || p.AttachedRoutes != l.AttachedRoutes || !slices.EqualFunc(p.SupportedKinds, kinds, kindEqual) {
			changed = true
		}
		listeners = append(listeners, next)
	}
	if len(have.Listeners) != len(listeners) || !slices.EqualFunc(have.Listeners, listeners, func(a, b gatewayv1.ListenerStatus) bool { return a.Name == b.Name }) {
		changed = true
	}
	out.Listeners = listeners
	return out, changed
}

func addressEqual(a, b gatewayv1.GatewayStatusAddress) bool {
	return a.Value == b.Value && addressType(a.Type) == addressType(b.Type)
}

// addressType is t, or its default IPAddress.
func addressType(t *gatewayv1.AddressType) gatewayv1.AddressType {
	if t == nil {
		return gatewayv1.IPAddressType
	}
	return *t
}

func kindEqual(a, b gatewayv1.RouteGroupKind) bool {
	group := func(g *gatewayv1.Group) gatewayv1.Group {
		if g == nil {
			return gatewayv1.GroupName
		}
		return *g
	}
	return a.Kind == b.Kind && group(a.Group) == group(b.Group)
}
