package localdir

import (
	"bytes"
	"encoding/json"
	"fmt"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Gateway API routing objects the model reads (model/route.go):
// HTTPRoute, GRPCRoute and TCPRoute of gateway.networking.k8s.io/v1 (a
// TCPRoute also as v1alpha2, its older version of the same schema) and
// ReferenceGrant (v1, or v1beta1), decoded strictly into the typed structs
// of sigs.k8s.io/gateway-api. Fields the CRD would default are left unset:
// the model applies the same defaults.

// isRouteKind reports whether apiVersion/kind is one of the routing kinds.
func isRouteKind(apiVersion, kind string) bool {
	switch kind {
	case "HTTPRoute", "GRPCRoute":
		return apiVersion == gatewayAPIVersion
	case "TCPRoute":
		return apiVersion == gatewayAPIVersion || apiVersion == "gateway.networking.k8s.io/v1alpha2"
	case "ReferenceGrant":
		return apiVersion == gatewayAPIVersion || apiVersion == "gateway.networking.k8s.io/v1beta1"
	}
	return false
}

// decodeRouteKind decodes one routing object strictly (unknown fields are
// errors). An object without a namespace is in DefaultNamespace.
func decodeRouteKind(js []byte, kind string) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var obj interface {
		GetNamespace() string
		SetNamespace(string)
	}
	switch kind {
	case "HTTPRoute":
		obj = &gatewayv1.HTTPRoute{}
	case "GRPCRoute":
		obj = &gatewayv1.GRPCRoute{}
	case "TCPRoute":
		obj = &gatewayv1.TCPRoute{}
	default:
		obj = &gatewayv1.ReferenceGrant{}
	}
	if err := dec.Decode(obj); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", kind, err)
	}
	if obj.GetNamespace() == "" {
		obj.SetNamespace(DefaultNamespace)
	}
	return obj, nil
}
