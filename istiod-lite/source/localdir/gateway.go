package localdir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Gateway API objects the model reads: gateway.networking.k8s.io/v1
// Gateway (waypoints are those of class istio-waypoint) and GatewayClass
// (its istio.io/waypoint-for label), decoded into the typed structs of
// sigs.k8s.io/gateway-api.

const gatewayAPIVersion = "gateway.networking.k8s.io/v1"

func isGatewayKind(apiVersion, kind string) bool {
	return apiVersion == gatewayAPIVersion && (kind == "Gateway" || kind == "GatewayClass")
}

// decodeGatewayKind decodes a Gateway or GatewayClass strictly (unknown
// fields are errors) and checks what the model relies on and the CRD's
// schema would have refused: a Gateway names its class and its listeners
// have a name, a port in 1..65535 and a protocol; a GatewayClass names its
// controller. A Gateway without a namespace is in DefaultNamespace.
func decodeGatewayKind(js []byte, kind string) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	switch kind {
	case "Gateway":
		gw := &gatewayv1.Gateway{}
		if err := dec.Decode(gw); err != nil {
			return nil, fmt.Errorf("decoding Gateway: %w", err)
		}
		if gw.Namespace == "" {
			gw.Namespace = DefaultNamespace
		}
		if err := validateGateway(gw); err != nil {
			return nil, fmt.Errorf("invalid Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
		}
		return gw, nil
	default:
		gc := &gatewayv1.GatewayClass{}
		if err := dec.Decode(gc); err != nil {
			return nil, fmt.Errorf("decoding GatewayClass: %w", err)
		}
		gc.Namespace = ""
		if gc.Spec.ControllerName == "" {
			return nil, fmt.Errorf("invalid GatewayClass %s: spec.controllerName is required", gc.Name)
		}
		return gc, nil
	}
}

func validateGateway(gw *gatewayv1.Gateway) error {
	var errs []error
	if gw.Spec.GatewayClassName == "" {
		errs = append(errs, errors.New("spec.gatewayClassName is required"))
	}
	for i, l := range gw.Spec.Listeners {
		if l.Name == "" {
			errs = append(errs, fmt.Errorf("spec.listeners[%d].name is required", i))
		}
		if l.Port < 1 || l.Port > 65535 {
			errs = append(errs, fmt.Errorf("spec.listeners[%d].port: \"%d\" is not in 1..65535", i, l.Port))
		}
		if l.Protocol == "" {
			errs = append(errs, fmt.Errorf("spec.listeners[%d].protocol is required", i))
		}
		if ar := l.AllowedRoutes; ar != nil && ar.Namespaces != nil && ar.Namespaces.Selector != nil {
			if _, err := metav1.LabelSelectorAsSelector(ar.Namespaces.Selector); err != nil {
				errs = append(errs, fmt.Errorf("spec.listeners[%d].allowedRoutes.namespaces.selector: %w", i, err))
			}
		}
	}
	return errors.Join(errs...)
}
