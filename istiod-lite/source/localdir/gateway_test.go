package localdir

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const waypointYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: demo
  labels:
    istio.io/waypoint-for: all
  annotations:
    istio.io/for-service-account: echo
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels: {team: a}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: istio-waypoint
  labels:
    istio.io/waypoint-for: service
spec:
  controllerName: istio.io/mesh-controller
`

// TestLoadGateways checks that Gateways and GatewayClasses are decoded into
// the typed Inputs, and that a malformed one is an error at its file and
// line that leaves the other files served.
func TestLoadGateways(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a-good.yaml": waypointYAML,
		"b-noclass.yaml": `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: noclass}
spec:
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`,
		"c-typo.yaml": `apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: typo}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    portt: 15008
    protocol: HBONE
`,
		"d-port.yaml": `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: port}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    protocol: HBONE
    port: 70000
`,
		"e-class.yaml": `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nocontroller}
spec: {}
`,
		"f-wrongtype.yaml": `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wrongtype}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: fifteen
    protocol: HBONE
`,
	})
	snap, errs := Load(dir)

	wantErrs := map[string]struct {
		line int
		msg  string
	}{
		"b-noclass.yaml":   {1, "invalid Gateway default/noclass: spec.gatewayClassName is required"},
		"c-typo.yaml":      {12, `unknown field "portt"`},
		"d-port.yaml":      {9, `spec.listeners[0].port: "70000" is not in 1..65535`},
		"e-class.yaml":     {1, "invalid GatewayClass nocontroller: spec.controllerName is required"},
		"f-wrongtype.yaml": {8, "decoding Gateway"},
	}
	if len(errs) != len(wantErrs) {
		t.Fatalf("Load() errors = %v, want %d", errs, len(wantErrs))
	}
	for _, err := range errs {
		pe, ok := err.(*ParseError)
		if !ok {
			t.Errorf("Load() error %v (%T), want a *ParseError", err, err)
			continue
		}
		w, ok := wantErrs[filepath.Base(pe.File)]
		if !ok {
			t.Errorf("Load() unexpected error %v", err)
			continue
		}
		if pe.Line != w.line || !strings.Contains(pe.Error(), w.msg) {
			t.Errorf("Load() error = %v, want line %d and %q", err, w.line, w.msg)
		}
	}

	from := gatewayv1.NamespacesFromSelector
	wantGW := &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: "gateway.networking.k8s.io/v1", Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "waypoint", Namespace: "demo",
			Labels:      map[string]string{"istio.io/waypoint-for": "all"},
			Annotations: map[string]string{"istio.io/for-service-account": "echo"},
		},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{
				Name: "mesh", Port: 15008, Protocol: "HBONE",
				AllowedRoutes: &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{
					From: &from, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}},
				}},
			}},
		},
	}
	wantGC := &gatewayv1.GatewayClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: "gateway.networking.k8s.io/v1", Kind: "GatewayClass"},
		ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint", Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: "istio.io/mesh-controller"},
	}
	if diff := cmp.Diff([]*gatewayv1.Gateway{wantGW}, snap.Inputs.Gateways); diff != "" {
		t.Errorf("Load() Inputs.Gateways (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*gatewayv1.GatewayClass{wantGC}, snap.Inputs.GatewayClasses); diff != "" {
		t.Errorf("Load() Inputs.GatewayClasses (-want +got):\n%s", diff)
	}
	if len(snap.Raw) != 0 {
		t.Errorf("Load() Raw = %v, want none", snap.Raw)
	}
}
