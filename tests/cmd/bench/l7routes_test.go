package main

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// TestL7RoutesYAML: every object of the routed variants parses strictly,
// and each HTTPRoute has its number of rules, the rule the bench's
// requests match first (istiod-lite sorts it last).
func TestL7RoutesYAML(t *testing.T) {
	rules := map[string]int{}
	for i, doc := range strings.Split(l7RoutesYAML(), "\n---\n") {
		doc = strings.TrimPrefix(doc, "---\n")
		switch {
		case strings.Contains(doc, "\nkind: Service\n"):
			var s corev1.Service
			if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
				t.Fatalf("document %d: %v", i, err)
			}
		case strings.Contains(doc, "\nkind: HTTPRoute\n"):
			var r gatewayv1.HTTPRoute
			if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
				t.Fatalf("document %d: %v", i, err)
			}
			rules[r.Name] = len(r.Spec.Rules)
			first := r.Spec.Rules[0]
			if len(first.BackendRefs) != 1 || len(first.Matches) != 1 || first.Matches[0].Path == nil ||
				*first.Matches[0].Path.Value != routePrefix || len(first.Matches[0].Headers) != 0 {
				t.Errorf("%s: the first rule is %+v, want PathPrefix %s to the Service", r.Name, first, routePrefix)
			}
			for j, rule := range r.Spec.Rules[1:] {
				if len(rule.BackendRefs) != 0 || len(rule.Filters) != 1 || rule.Filters[0].Type != gatewayv1.HTTPRouteFilterRequestRedirect {
					t.Errorf("%s: rule %d does not only redirect", r.Name, j+1)
				}
			}
		default:
			t.Fatalf("document %d: neither a Service nor an HTTPRoute:\n%s", i, doc)
		}
	}
	for _, rt := range l7Routes {
		if rules[rt.route] != rt.rules {
			t.Errorf("%s has %d rules, want %d", rt.route, rules[rt.route], rt.rules)
		}
	}
}

// TestRouteHeld checks the reading of the waypoint's config dump.
func TestRouteHeld(t *testing.T) {
	rt := l7Route{service: "svc", route: "r", rules: 3}
	key := "bench-mesh/svc.bench-mesh.svc.cluster.local"
	entry := func(rule int, path, extra string) string {
		return fmt.Sprintf(`{"route":"bench-mesh/r","rule":%d,"match":{"path":%s%s}}`, rule, path, extra)
	}
	exact := `{"value":"/other/1"}`
	prefix := `{"type":"PREFIX","value":"` + routePrefix + `"}`
	header := `,"headers":[{"name":"x-bench-route","value":{"value":"r2"}}]`
	dump := func(entries ...string) string {
		return `{"waypointRoutes":[{"service":"other","http":[]},{"service":"` + key + `","http":[` + strings.Join(entries, ",") + `]}]}`
	}
	for _, tc := range []struct {
		name, dump string
		ok         bool
	}{
		{"matching rule last", dump(entry(1, exact, ""), entry(2, prefix, header), entry(0, prefix, "")), true},
		{"matching rule first", dump(entry(0, prefix, ""), entry(1, exact, ""), entry(2, prefix, header)), false},
		{"header rule last", dump(entry(1, exact, ""), entry(0, prefix, ""), entry(2, prefix, header)), false},
		{"too few entries", dump(entry(1, exact, ""), entry(0, prefix, "")), false},
		{"an invalid entry", dump(`{"route":"bench-mesh/r","rule":1,"invalid":"no","match":{"path":`+exact+`}}`, entry(2, prefix, header), entry(0, prefix, "")), false},
		{"no routes for the Service", `{"waypointRoutes":[]}`, false},
		{"not JSON", `{`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := routeHeld([]byte(tc.dump), key, rt)
			if (err == nil) != tc.ok {
				t.Errorf("routeHeld = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
