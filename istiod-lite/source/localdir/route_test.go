package localdir

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const routesYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: demo}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - headers: [{name: x-canary, value: "1"}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: pkg.Svc, method: Get}}]
    backendRefs: [{name: echo-v1, port: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: tcp, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: db}]
  rules:
  - backendRefs: [{name: db-v2, port: 5432}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-demo, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: demo}]
  to: [{group: "", kind: Service}]
`

// TestLoadRoutes checks that HTTPRoutes, GRPCRoutes, TCPRoutes (v1 and
// v1alpha2) and ReferenceGrants (v1 and v1beta1) are decoded into the
// typed Inputs, in the default namespace when they name none, and that a
// misspelt field is an error at its file and line.
func TestLoadRoutes(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a-routes.yaml": routesYAML,
		"b-typo.yaml": `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo}
spec:
  rules:
  - backendRefz: []
`,
	})
	snap, errs := Load(dir)
	if len(errs) != 1 {
		t.Fatalf("Load() errors = %v, want 1", errs)
	}
	if pe, ok := errs[0].(*ParseError); !ok || filepath.Base(pe.File) != "b-typo.yaml" || !strings.Contains(pe.Error(), `unknown field "backendRefz"`) {
		t.Errorf("Load() error = %v, want b-typo.yaml's unknown field backendRefz", errs[0])
	}
	svc, svcKind := ptr.To[gatewayv1.Group](""), ptr.To[gatewayv1.Kind]("Service")
	wantHTTP := []*gatewayv1.HTTPRoute{{
		TypeMeta:   metav1.TypeMeta{APIVersion: "gateway.networking.k8s.io/v1", Kind: "HTTPRoute"},
		ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: "demo"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: svc, Kind: svcKind, Name: "echo", Port: ptr.To[int32](80)}}},
			Rules: []gatewayv1.HTTPRouteRule{
				{
					Matches:     []gatewayv1.HTTPRouteMatch{{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x-canary", Value: "1"}}}},
					BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "echo-v2", Port: ptr.To[int32](80)}}}},
				},
				{BackendRefs: []gatewayv1.HTTPBackendRef{
					{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "echo-v1", Port: ptr.To[int32](80)}, Weight: ptr.To[int32](90)}},
					{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "echo-v2", Port: ptr.To[int32](80)}, Weight: ptr.To[int32](10)}},
				}},
			},
		},
	}}
	if diff := cmp.Diff(wantHTTP, snap.Inputs.HTTPRoutes); diff != "" {
		t.Errorf("Load() Inputs.HTTPRoutes (-want +got):\n%s", diff)
	}
	if len(snap.Inputs.GRPCRoutes) != 1 || snap.Inputs.GRPCRoutes[0].Namespace != DefaultNamespace ||
		*snap.Inputs.GRPCRoutes[0].Spec.Rules[0].Matches[0].Method.Method != "Get" {
		t.Errorf("Load() Inputs.GRPCRoutes = %+v, want grpc in %s matching method Get", snap.Inputs.GRPCRoutes, DefaultNamespace)
	}
	if len(snap.Inputs.TCPRoutes) != 1 || snap.Inputs.TCPRoutes[0].Spec.Rules[0].BackendRefs[0].Name != "db-v2" {
		t.Errorf("Load() Inputs.TCPRoutes = %+v, want tcp to db-v2", snap.Inputs.TCPRoutes)
	}
	if len(snap.Inputs.ReferenceGrants) != 1 || snap.Inputs.ReferenceGrants[0].Namespace != "other" ||
		snap.Inputs.ReferenceGrants[0].Spec.From[0].Namespace != "demo" {
		t.Errorf("Load() Inputs.ReferenceGrants = %+v, want other/from-demo", snap.Inputs.ReferenceGrants)
	}
	if len(snap.Raw) != 0 {
		t.Errorf("Load() Raw = %v, want none", snap.Raw)
	}
}
