package deployer

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// classAcceptedMessage is the message of the class's Accepted condition,
// Istio's.
const classAcceptedMessage = "Handled by Istio controller"

// ensureClass creates the GatewayClass istio-waypoint when it is missing
// (as Istio does, it never changes an existing one: users may edit it, e.g.
// to label it istio.io/waypoint-for) and, when its controller is ours,
// marks it Accepted.
func (d *Deployer) ensureClass(ctx context.Context) error {
	var class gatewayv1.GatewayClass
	err := d.cfg.Client.Get(ctx, client.ObjectKey{Name: ClassName}, &class)
	if apierrors.IsNotFound(err) {
		desc := ClassDescription
		class = gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: ClassName},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: ControllerName, Description: &desc},
		}
		err = d.cfg.Client.Create(ctx, &class)
		if apierrors.IsAlreadyExists(err) {
			return nil // another replica, or a user; its event brings us back
		}
		if err == nil {
			d.log.Info("gateway class created", "name", ClassName, "controller", ControllerName)
		}
	}
	if err != nil {
		return fmt.Errorf("deployer: GatewayClass %s: %w", ClassName, err)
	}
	if class.Spec.ControllerName != ControllerName {
		return nil
	}
	conds := append([]metav1.Condition(nil), class.Status.Conditions...)
	changed := meta.SetStatusCondition(&conds, metav1.Condition{
		Type:               string(gatewayv1.GatewayClassConditionStatusAccepted),
		Status:             metav1.ConditionTrue,
		Reason:             string(gatewayv1.GatewayClassReasonAccepted),
		Message:            classAcceptedMessage,
		ObservedGeneration: class.Generation,
		LastTransitionTime: metav1.NewTime(d.cfg.Now()),
	})
	if !changed {
		return nil
	}
	class.Status.Conditions = conds
	if err := d.cfg.Client.Status().Update(ctx, &class); err != nil {
		if apierrors.IsConflict(err) {
			// The cache had not seen our last write yet; its event
			// brings us back.
			d.log.Debug("gateway class status conflict, retrying")
			return nil
		}
		return fmt.Errorf("deployer: GatewayClass %s status: %w", ClassName, err)
	}
	return nil
}
