package model

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// waypointPolicyWorld is newWorld's namespace "app" labelled to use its
// waypoint "wp", plus a waypoint "wp2" that never came up, a Service of
// another namespace without waypoint, and the policies of docs.
func waypointPolicyWorld(t *testing.T, docs ...string) *Inputs {
	t.Helper()
	in := newWorld(map[string]string{LabelUseWaypoint: "wp"}, func(w *world) {
		w.gateways = append(w.gateways, waypointGateway("app", "wp2"))
		w.namespaces = append(w.namespaces, namespace("plain", nil))
		w.services = append(w.services, service("plain", "web", map[string]string{"app": "web"}, []string{"10.96.0.9"}, port(80, intstr.FromInt32(8080))))
	})
	in.AuthorizationPolicies, _ = policyObjects(t, strings.Join(docs, "\n---\n"))
	return in
}

// wpPolicy is an AuthorizationPolicy document of namespace app (unless
// meta sets another) with the given spec.
func wpPolicy(name, meta, spec string) string {
	if !strings.Contains(meta, "namespace:") {
		meta += "\n  namespace: app"
	}
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + meta + "\nspec:\n" + spec
}

const (
	refEcho = "  targetRefs:\n  - {kind: Service, group: \"\", name: echo}\n"
	refWP   = "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n"
)

func svcTarget(s string) *waypoint.Target {
	return &waypoint.Target{Kind: &waypoint.Target_Service{Service: s}}
}
func gwTarget(s string) *waypoint.Target {
	return &waypoint.Target{Kind: &waypoint.Target_Gateway{Gateway: s}}
}

var allWaypointsTarget = &waypoint.Target{Kind: &waypoint.Target_AllWaypoints{AllWaypoints: true}}

func TestWaypointAuthorizations(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   *waypoint.Authorization // nil: not served
		cond   PolicyCondition
	}{
		{
			name:   "service target, bound through the namespace label",
			policy: wpPolicy("p", "", refEcho+"  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin], methods: [GET, POST]}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Action: waypoint.Action_DENY, Targets: []*waypoint.Target{svcTarget(echoSvc)},
				Rules: []*waypoint.Rule{{To: []*waypoint.Operation{{Paths: []string{"/admin"}, Methods: []string{"GET", "POST"}}}}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonAccepted, "bound to app/wp"},
		},
		{
			name: "gateway target (deprecated targetRef), every field",
			policy: wpPolicy("p", "", "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n  rules:\n"+
				"  - from:\n    - source: {principals: [\"*/sa/client\"], notNamespaces: [bar], ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16], remoteIpBlocks: [192.0.2.1], notRemoteIpBlocks: [192.0.2.2]}\n"+
				"    - source: {serviceAccounts: [client, other/sa], notServiceAccounts: [bad]}\n"+
				"    to:\n    - operation: {hosts: [\"echo.*\"], notHosts: [x], ports: [\"80\"], notPorts: [\"81\"], notMethods: [DELETE], notPaths: [\"/internal/*\"]}\n"+
				"    when:\n    - {key: \"request.headers[x-env]\", values: [prod]}\n    - {key: source.serviceAccount, notValues: [client]}\n    - {key: destination.port, values: [\"80\"]}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Action: waypoint.Action_ALLOW, Targets: []*waypoint.Target{gwTarget("app/wp")},
				Rules: []*waypoint.Rule{{
					From: []*waypoint.Source{
						{Principals: []string{"*/sa/client"}, NotNamespaces: []string{"bar"}, IpBlocks: []string{"10.0.0.0/8"}, NotIpBlocks: []string{"10.9.0.0/16"},
							RemoteIpBlocks: []string{"192.0.2.1"}, NotRemoteIpBlocks: []string{"192.0.2.2"}},
						{ServiceAccounts: []string{"app/client", "other/sa"}, NotServiceAccounts: []string{"app/bad"}},
					},
					To: []*waypoint.Operation{{Hosts: []string{"echo.*"}, NotHosts: []string{"x"}, Ports: []string{"80"}, NotPorts: []string{"81"},
						NotMethods: []string{"DELETE"}, NotPaths: []string{"/internal/*"}}},
					When: []*waypoint.Condition{
						{Key: "request.headers[x-env]", Values: []string{"prod"}},
						{Key: "source.serviceAccount", NotValues: []string{"app/client"}},
						{Key: "destination.port", Values: []string{"80"}},
					},
				}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonAccepted, "bound to app/wp"},
		},
		{
			name:   "GatewayClass in the root namespace: every waypoint",
			policy: wpPolicy("p", "\n  namespace: istio-system", "  targetRefs:\n  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}\n  action: AUDIT\n  rules:\n  - {}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "istio-system", Action: waypoint.Action_AUDIT, Targets: []*waypoint.Target{allWaypointsTarget},
				Rules: []*waypoint.Rule{{}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonAccepted, "bound to istio-waypoint"},
		},
		{
			name:   "GatewayClass outside the root namespace",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}\n"),
			cond: PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid,
				"AuthorizationPolicy must be in the root namespace `istio-system` when referencing a GatewayClass"},
		},
		{
			name:   "GatewayClass that is not a waypoint class",
			policy: wpPolicy("p", "\n  namespace: istio-system", "  targetRefs:\n  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: other}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", WaypointPolicyReasonTargetNotFound, "not bound"},
		},
		{
			name:   "missing Service",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Service, name: nope}\n  rules:\n  - {}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", WaypointPolicyReasonTargetNotFound, "Service app/nope was not found"},
		},
		{
			name:   "Service without waypoint",
			policy: wpPolicy("p", "\n  namespace: plain", "  targetRefs:\n  - {kind: Service, name: web}\n  rules:\n  - {}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "plain", Targets: []*waypoint.Target{svcTarget("plain/web.plain.svc.cluster.local")},
				Rules: []*waypoint.Rule{{}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "False", WaypointPolicyReasonAncestorNotBound, "Service plain/web is not bound to a waypoint"},
		},
		{
			name:   "missing Gateway",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: nope}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", WaypointPolicyReasonTargetNotFound, "not bound"},
		},
		{
			name:   "Gateway that never came up: served, not bound",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp2}\n"),
			want:   &waypoint.Authorization{Name: "p", Namespace: "app", Targets: []*waypoint.Target{gwTarget("app/wp2")}},
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", WaypointPolicyReasonTargetNotFound, "not bound"},
		},
		{
			name: "one target of two found",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Service, name: echo}\n  - {kind: Service, name: nope}\n"+
				"  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n  - {kind: Service, name: echo}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Targets: []*waypoint.Target{svcTarget(echoSvc), gwTarget("app/wp")}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", WaypointPolicyReasonPartiallyInvalid, "Invalid targetRefs: Service.core:app/nope"},
		},
		{
			name:   "all targets found",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Service, name: echo}\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n"),
			want:   &waypoint.Authorization{Name: "p", Namespace: "app", Targets: []*waypoint.Target{svcTarget(echoSvc), gwTarget("app/wp")}},
			cond:   PolicyCondition{ConditionWaypointAccepted, "True", ReasonAccepted, ""},
		},
		{
			name:   "no target found",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Service, name: nope}\n  - {kind: ServiceEntry, group: networking.istio.io, name: se}\n"),
			cond: PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid,
				"Invalid targetRefs: Service.core:app/nope, ServiceEntry.networking.istio.io:app/se"},
		},
		{
			name:   "CUSTOM is served as a DENY of its rules",
			policy: wpPolicy("p", "", refEcho+"  action: CUSTOM\n  provider: {name: ext}\n  rules:\n  - to:\n    - operation: {paths: [/admin]}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Action: waypoint.Action_DENY, Targets: []*waypoint.Target{svcTarget(echoSvc)},
				Rules: []*waypoint.Rule{{To: []*waypoint.Operation{{Paths: []string{"/admin"}}}}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "False", ReasonUnsupportedValue, waypointCustomMsg},
		},
		{
			name: "ALLOW drops the rules holding what a waypoint cannot check",
			policy: wpPolicy("p", "", refEcho+"  rules:\n  - from:\n    - source: {requestPrincipals: [\"*\"]}\n  - to:\n    - operation: {methods: [GET]}\n"+
				"  - when:\n    - {key: \"request.auth.claims[iss]\", values: [x]}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Targets: []*waypoint.Target{svcTarget(echoSvc)},
				Rules: []*waypoint.Rule{{To: []*waypoint.Operation{{Methods: []string{"GET"}}}}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonUnsupportedValue,
				"waypoint does not support request.auth.claims[iss], requestPrincipals. " + waypointAllowDropped},
		},
		{
			name: "DENY is enforced without what a waypoint cannot check",
			policy: wpPolicy("p", "", refEcho+"  action: DENY\n  rules:\n  - from:\n    - source: {notRequestPrincipals: [\"*\"], trustDomains: [td]}\n"+
				"    when:\n    - {key: connection.sni, values: [x]}\n    - {key: source.ip, values: [10.0.0.1]}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Action: waypoint.Action_DENY, Targets: []*waypoint.Target{svcTarget(echoSvc)},
				Rules: []*waypoint.Rule{{From: []*waypoint.Source{{}}, When: []*waypoint.Condition{{Key: "source.ip", Values: []string{"10.0.0.1"}}}}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonUnsupportedValue,
				"waypoint does not support connection.sni, notRequestPrincipals, trustDomains. " + waypointDenyWidened},
		},
		{
			name:   "dry-run",
			policy: wpPolicy("p", "\n  annotations: {istio.io/dry-run: \"true\"}", refWP+"  action: DENY\n  rules:\n  - {}\n"),
			want: &waypoint.Authorization{Name: "p", Namespace: "app", Action: waypoint.Action_DENY, DryRun: true, Targets: []*waypoint.Target{gwTarget("app/wp")},
				Rules: []*waypoint.Rule{{}}},
			cond: PolicyCondition{ConditionWaypointAccepted, "True", ReasonAccepted, "bound to app/wp"},
		},
		{
			name:   "invalid: cross-namespace targetRef",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Service, name: echo, namespace: other}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid, "targetRefs[0]: namespace must not be set; cross namespace referencing is not supported"},
		},
		{
			name:   "invalid: kind",
			policy: wpPolicy("p", "", "  targetRefs:\n  - {kind: Gateway, name: wp}\n"),
			cond: PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid,
				"targetRefs[0]: must be to a core Service, a networking.istio.io ServiceEntry, or a gateway.networking.k8s.io Gateway or GatewayClass, but was /Gateway"},
		},
		{
			name:   "invalid: unknown when key",
			policy: wpPolicy("p", "", refEcho+"  rules:\n  - when:\n    - {key: destination.name, values: [x]}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid, "rules[0].when[0] (destination.name): unknown attribute"},
		},
		{
			name:   "invalid: path template",
			policy: wpPolicy("p", "", refEcho+"  rules:\n  - to:\n    - operation: {paths: [\"/a/{**}/{*}\"]}\n"),
			cond:   PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid, "rules[0].to[0].operation.paths: invalid path \"/a/{**}/{*}\": {**} is not the last operator"},
		},
		{
			name:   "invalid: DENY without rules",
			policy: wpPolicy("p", "", refEcho+"  action: DENY\n"),
			cond: PolicyCondition{ConditionWaypointAccepted, "False", ReasonInvalid,
				"DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(waypointPolicyWorld(t, tt.policy), Options{})
			p := out.WaypointAuthorizations
			key := "app/p"
			if strings.Contains(tt.policy, "namespace: istio-system") {
				key = "istio-system/p"
			} else if strings.Contains(tt.policy, "namespace: plain") {
				key = "plain/p"
			}
			want := map[string]*waypoint.Authorization{}
			if tt.want != nil {
				want[key] = tt.want
			}
			if diff := cmp.Diff(want, p, protocmp.Transform()); diff != "" {
				t.Errorf("WaypointAuthorizations mismatch (-want +got):\n%s", diff)
			}
			st := out.PolicyStatuses[KindAuthorizationPolicy+"/"+key]
			if st == nil {
				t.Fatalf("PolicyStatuses[%s] missing", key)
			}
			if diff := cmp.Diff([]PolicyCondition{tt.cond}, st.Conditions); diff != "" {
				t.Errorf("conditions mismatch (-want +got):\n%s", diff)
			}
			if _, ok := out.Authorizations[key]; ok {
				t.Errorf("Authorizations[%s] (ztunnel) is served, want only the waypoint's", key)
			}
		})
	}
}

// TestWaypointAuthorizationsLeaveSelectorPolicies checks that policies with
// a selector, namespace-wide and mesh-wide ones never reach waypoints and
// keep their ztunnel meaning.
func TestWaypointAuthorizationsLeaveSelectorPolicies(t *testing.T) {
	in := waypointPolicyWorld(t,
		wpPolicy("sel", "", "  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}\n"),
		wpPolicy("ns", "", "  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"80\"]}\n"),
		wpPolicy("mesh", "\n  namespace: istio-system", "  rules:\n  - {}\n"),
		wpPolicy("both", "", "  selector: {matchLabels: {app: echo}}\n"+refEcho),
	)
	out := Build(in, Options{})
	if len(out.WaypointAuthorizations) != 0 {
		t.Errorf("WaypointAuthorizations = %v, want none", out.WaypointAuthorizations)
	}
	for _, k := range []string{"app/sel", "app/ns", "istio-system/mesh", "app/both"} {
		st := out.PolicyStatuses[KindAuthorizationPolicy+"/"+k]
		if st == nil || len(st.Conditions) != 1 || st.Conditions[0].Type != ConditionZtunnelAccepted {
			t.Errorf("PolicyStatuses[%s] = %+v, want one %s condition", k, st, ConditionZtunnelAccepted)
		}
	}
	for _, k := range []string{"app/sel", "app/ns", "istio-system/mesh"} {
		if out.Authorizations[k] == nil {
			t.Errorf("Authorizations[%s] (ztunnel) missing", k)
		}
	}
}

// TestWaypointAuthorizationsFollowBinding checks that the condition follows
// the Service's binding: removing the namespace label unbinds it.
func TestWaypointAuthorizationsFollowBinding(t *testing.T) {
	doc := wpPolicy("p", "", refEcho+"  action: DENY\n  rules:\n  - {}\n")
	in := waypointPolicyWorld(t, doc)
	for _, ns := range in.Namespaces {
		if ns.Name == "app" {
			ns.Labels = nil
		}
	}
	st := Build(in, Options{}).PolicyStatuses[KindAuthorizationPolicy+"/app/p"]
	want := []PolicyCondition{{ConditionWaypointAccepted, "False", WaypointPolicyReasonAncestorNotBound, "Service app/echo is not bound to a waypoint"}}
	if diff := cmp.Diff(want, st.Conditions); diff != "" {
		t.Errorf("conditions mismatch (-want +got):\n%s", diff)
	}
	// The Service's own label binds it again.
	in = waypointPolicyWorld(t, doc)
	in.Namespaces[0].Labels = nil
	for _, s := range in.Services {
		if s.Name == "echo" {
			s.Labels = map[string]string{LabelUseWaypoint: "wp"}
		}
	}
	st = Build(in, Options{}).PolicyStatuses[KindAuthorizationPolicy+"/app/p"]
	if c := st.Conditions[0]; c.Status != "True" || c.Message != "bound to app/wp" {
		t.Errorf("condition = %+v, want True, bound to app/wp", c)
	}
	var _ []*gatewayv1.Gateway = in.Gateways
	var _ []*corev1.Service = in.Services
}

// TestWaypointAuthorizationsEnforced evaluates what the translation serves:
// a path DENY bound to the Service answers /admin (also written
// /x/../admin) with a deny and lets / through, for every client.
func TestWaypointAuthorizationsEnforced(t *testing.T) {
	out := Build(waypointPolicyWorld(t,
		wpPolicy("deny-admin", "", refEcho+"  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}\n"),
		wpPolicy("jwt", "", refWP+"  rules:\n  - from:\n    - source: {requestPrincipals: [\"*\"]}\n  - from:\n    - source: {namespaces: [app, client]}\n"),
	), Options{})
	var pols []*waypoint.Authorization
	for _, a := range out.WaypointAuthorizations {
		pols = append(pols, a)
	}
	ps := authz.CompileL7(pols)
	req := func(path, identity string) *authz.Request {
		return &authz.Request{
			Peer: netip.MustParseAddr("10.0.0.7"), Remote: netip.MustParseAddr("10.0.0.7"), Identity: identity,
			Method: "GET", Host: "echo.app.svc.cluster.local", Path: path,
			DestIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Service: echoSvc, Gateway: "app/wp",
		}
	}
	client := "spiffe://cluster.local/ns/client/sa/default"
	tests := []struct {
		path, identity string
		allow          bool
		reason         authz.Reason
	}{
		{"/", client, true, authz.AllowMatched},
		{"/admin", client, false, authz.DenyMatched},
		{"/x/../admin?q", client, false, authz.DenyMatched},
		{"/", "spiffe://cluster.local/ns/other/sa/default", false, authz.NoAllowMatched}, // the JWT rule was dropped
	}
	for _, tt := range tests {
		if got := ps.Evaluate(req(tt.path, tt.identity)); got.Allow != tt.allow || got.Reason != tt.reason {
			t.Errorf("Evaluate(%s from %s) = %+v, want Allow %v, %v", tt.path, tt.identity, got, tt.allow, tt.reason)
		}
	}
}
