package model

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// policyObjects decodes YAML documents of AuthorizationPolicies and
// PeerAuthentications (namespace "demo" unless given).
func policyObjects(t *testing.T, docs string) ([]*securityv1.AuthorizationPolicy, []*securityv1.PeerAuthentication) {
	t.Helper()
	var aps []*securityv1.AuthorizationPolicy
	var pas []*securityv1.PeerAuthentication
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatalf("policy %q: %v", doc, err)
		}
		var tm metav1.TypeMeta
		json.Unmarshal(js, &tm)
		switch tm.Kind {
		case KindAuthorizationPolicy:
			p := &securityv1.AuthorizationPolicy{}
			if err := json.Unmarshal(js, p); err != nil {
				t.Fatalf("policy %q: %v", doc, err)
			}
			if p.Namespace == "" {
				p.Namespace = "demo"
			}
			aps = append(aps, p)
		case KindPeerAuthentication:
			p := &securityv1.PeerAuthentication{}
			if err := json.Unmarshal(js, p); err != nil {
				t.Fatalf("policy %q: %v", doc, err)
			}
			if p.Namespace == "" {
				p.Namespace = "demo"
			}
			pas = append(pas, p)
		default:
			t.Fatalf("policy %q: unknown kind %q", doc, tm.Kind)
		}
	}
	return aps, pas
}

// Connections of the table: from foo/client, bar/admin, and plaintext.
var (
	connFoo    = authz.Conn{Src: netip.MustParseAddr("10.0.1.5"), Dst: netip.MustParseAddrPort("10.0.2.7:8080"), Identity: "spiffe://cluster.local/ns/foo/sa/client"}
	connBar    = authz.Conn{Src: netip.MustParseAddr("10.1.0.9"), Dst: netip.MustParseAddrPort("10.0.2.7:8080"), Identity: "spiffe://cluster.local/ns/bar/sa/admin"}
	connFoo9   = authz.Conn{Src: netip.MustParseAddr("10.0.1.5"), Dst: netip.MustParseAddrPort("10.0.2.7:9090"), Identity: "spiffe://cluster.local/ns/foo/sa/client"}
	connPlain  = authz.Conn{Src: netip.MustParseAddr("192.168.1.1"), Dst: netip.MustParseAddrPort("10.0.2.7:8080")}
	connPlain9 = authz.Conn{Src: netip.MustParseAddr("192.168.1.1"), Dst: netip.MustParseAddrPort("10.0.2.7:9090")}
)

// dstPod is the destination of every case: demo/echo-0, labels app=echo,
// 10.0.2.7.
func dstPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-0", Namespace: "demo", Labels: map[string]string{"app": "echo", "version": "v1"}},
		Spec:       corev1.PodSpec{NodeName: "node-b", ServiceAccountName: "echo"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.2.7"},
	}
}

func ap(name, body string) string {
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + "\n" + body
}

func pa(name, body string) string {
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: " + name + "\n" + body
}

// TestAuthorizationDecisions runs each case through translation (Build)
// and evaluation (pkg/authz), and checks the decision Istio's
// documentation gives.
func TestAuthorizationDecisions(t *testing.T) {
	const denyFoo = "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n"
	tests := []struct {
		name       string
		policies   string
		conn       authz.Conn
		allow      bool
		policy     string // the deciding policy, if any
		shadowDeny bool   // a dry-run policy would deny
	}{
		// Actions and the order of evaluation.
		{"no policy allows", "", connFoo, true, "", false},
		{"DENY namespace matches", ap("d", denyFoo), connFoo, false, "demo/d", false},
		{"DENY namespace other source", ap("d", denyFoo), connBar, true, "", false},
		{"ALLOW namespace matches", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n"), connFoo, true, "demo/a", false},
		{"ALLOW namespace others denied", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n"), connBar, false, "", false},
		{"DENY wins over ALLOW", ap("a", "spec:\n  rules:\n  - {}\n") + "\n---\n" + ap("d", denyFoo), connFoo, false, "demo/d", false},
		{"ALLOW with empty spec denies all", ap("a", "spec: {}\n"), connFoo, false, "", false},
		{"ALLOW with empty rule allows all", ap("a", "spec:\n  rules:\n  - {}\n"), connBar, true, "demo/a", false},
		{"DENY with empty rule denies all", ap("d", "spec:\n  action: DENY\n  rules:\n  - {}\n"), connBar, false, "demo/d", false},
		{"DENY without rules denies nothing", ap("d", "spec:\n  action: DENY\n"), connFoo, true, "", false},
		{"AUDIT never decides", ap("au", "spec:\n  action: AUDIT\n  rules:\n  - {}\n"), connFoo, true, "", true},
		{"CUSTOM is not enforced", ap("c", "spec:\n  action: CUSTOM\n  provider:\n    name: ext\n  rules:\n  - {}\n"), connFoo, true, "", false},
		{"dry-run DENY only logged", ap("d", "  annotations:\n    istio.io/dry-run: \"true\"\n"+denyFoo), connFoo, true, "", true},
		{"dry-run false is enforced", ap("d", "  annotations:\n    istio.io/dry-run: \"false\"\n"+denyFoo), connFoo, false, "demo/d", false},
		// Sources.
		{"principals exact", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/foo/sa/client]\n"), connFoo, true, "demo/a", false},
		{"principals exact other", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/foo/sa/client]\n"), connBar, false, "", false},
		{"principals prefix", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/bar/*]\n"), connBar, true, "demo/a", false},
		{"principals suffix", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"*/sa/admin\"]\n"), connBar, true, "demo/a", false},
		{"principals suffix other", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"*/sa/admin\"]\n"), connFoo, false, "", false},
		{"principals presence mTLS", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"*\"]\n"), connFoo, true, "demo/a", false},
		{"principals presence plaintext", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"*\"]\n"), connPlain, false, "", false},
		{"notPrincipals", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: [cluster.local/ns/bar/sa/admin]\n"), connFoo, false, "demo/d", false},
		{"notPrincipals excluded", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: [cluster.local/ns/bar/sa/admin]\n"), connBar, true, "", false},
		{"namespaces prefix", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"fo*\"]\n"), connFoo, false, "demo/d", false},
		{"namespaces suffix", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"*ar\"]\n"), connBar, false, "demo/d", false},
		{"namespaces presence plaintext", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"*\"]\n"), connPlain, true, "", false},
		{"notNamespaces", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n"), connBar, true, "demo/a", false},
		{"notNamespaces excluded", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n"), connFoo, false, "", false},
		{"serviceAccounts", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        serviceAccounts: [foo/client]\n"), connFoo, true, "demo/a", false},
		{"notServiceAccounts", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        notServiceAccounts: [foo/client]\n"), connFoo, false, "", false},
		{"ipBlocks CIDR", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/16]\n"), connFoo, true, "demo/a", false},
		{"ipBlocks single IP other", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.1.6]\n"), connFoo, false, "", false},
		{"notIpBlocks", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notIpBlocks: [10.0.0.0/8]\n"), connPlain, false, "demo/d", false},
		{"sources are OR'd", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        namespaces: [nope]\n    - source:\n        principals: [cluster.local/ns/bar/sa/admin]\n"), connBar, true, "demo/a", false},
		{"fields of a source are AND'd", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        namespaces: [bar]\n        ipBlocks: [10.0.0.0/16]\n"), connBar, false, "", false},
		// Operations.
		{"ports", ap("a", "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"8080\"]\n"), connFoo, true, "demo/a", false},
		{"ports other", ap("a", "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"8080\"]\n"), connFoo9, false, "", false},
		{"notPorts", ap("d", "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        notPorts: [\"8080\"]\n"), connFoo9, false, "demo/d", false},
		{"from and to are AND'd", ap("a", "spec:\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n    to:\n    - operation:\n        ports: [\"9090\"]\n"), connFoo, false, "", false},
		// Conditions.
		{"when source.ip", ap("a", "spec:\n  rules:\n  - when:\n    - key: source.ip\n      values: [10.1.0.0/16]\n"), connBar, true, "demo/a", false},
		{"when source.namespace notValues", ap("a", "spec:\n  rules:\n  - when:\n    - key: source.namespace\n      notValues: [foo]\n"), connFoo, false, "", false},
		{"when source.principal", ap("d", "spec:\n  action: DENY\n  rules:\n  - when:\n    - key: source.principal\n      values: [cluster.local/ns/foo/*]\n"), connFoo, false, "demo/d", false},
		{"when destination.ip", ap("a", "spec:\n  rules:\n  - when:\n    - key: destination.ip\n      values: [10.0.2.7]\n"), connFoo, true, "demo/a", false},
		{"when destination.port", ap("a", "spec:\n  rules:\n  - when:\n    - key: destination.port\n      values: [\"9090\"]\n"), connFoo9, true, "demo/a", false},
		// L7 attributes.
		{"ALLOW rule with methods is dropped", ap("a", "spec:\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n"), connFoo, false, "", false},
		{"ALLOW keeps its L4-only rules", ap("a", "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [/x]\n  - from:\n    - source:\n        namespaces: [foo]\n"), connFoo, true, "demo/a", false},
		{"DENY with paths enforced without them", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n    to:\n    - operation:\n        paths: [/admin]\n"), connFoo, false, "demo/d", false},
		{"DENY with request header when enforced without it", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n    when:\n    - key: request.headers[x-user]\n      values: [eve]\n"), connFoo, false, "demo/d", false},
		{"DENY with requestPrincipals keeps the rest", ap("d", "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [bar]\n        requestPrincipals: [\"*\"]\n"), connFoo, true, "", false},
		// Scopes.
		{"root namespace policy is global", ap("d", "  namespace: istio-system\n"+denyFoo), connFoo, false, "istio-system/d", false},
		{"other namespace does not apply", ap("d", "  namespace: other\n"+denyFoo), connFoo, true, "", false},
		{"selector matches", ap("d", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [foo]\n"), connFoo, false, "demo/d", false},
		{"selector does not match", ap("d", "spec:\n  selector:\n    matchLabels:\n      app: other\n  action: DENY\n  rules:\n  - {}\n"), connFoo, true, "", false},
		{"root namespace selector applies in every namespace", ap("d", "  namespace: istio-system\nspec:\n  selector:\n    matchLabels:\n      app: echo\n  action: DENY\n  rules:\n  - {}\n"), connFoo, false, "istio-system/d", false},
		{"targetRefs left to waypoints", ap("d", "spec:\n  targetRefs:\n  - kind: Service\n    group: \"\"\n    name: echo\n  action: DENY\n  rules:\n  - {}\n"), connFoo, true, "", false},
		// PeerAuthentication.
		{"mesh STRICT denies plaintext", pa("default", "  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n"), connPlain, false, "istio-system/istio_converted_static_strict", false},
		{"mesh STRICT allows mTLS", pa("default", "  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n"), connFoo, true, "", false},
		{"PERMISSIVE allows plaintext", pa("default", "spec:\n  mtls:\n    mode: PERMISSIVE\n"), connPlain, true, "", false},
		{"namespace PERMISSIVE overrides mesh STRICT", pa("mesh", "  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n") + "\n---\n" + pa("ns", "spec:\n  mtls:\n    mode: PERMISSIVE\n"), connPlain, true, "", false},
		{"workload STRICT overrides namespace PERMISSIVE", pa("ns", "spec:\n  mtls:\n    mode: PERMISSIVE\n") + "\n---\n" + pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  mtls:\n    mode: STRICT\n"), connPlain, false, "istio-system/istio_converted_static_strict", false},
		{"STRICT with a PERMISSIVE port: that port accepts plaintext", pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    9090:\n      mode: PERMISSIVE\n"), connPlain9, true, "", false},
		{"STRICT with a PERMISSIVE port: other ports deny plaintext", pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    9090:\n      mode: PERMISSIVE\n"), connPlain, false, "demo/istio_converted_peer_authentication_w", false},
		{"PERMISSIVE with a STRICT port: that port denies plaintext", pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  mtls:\n    mode: PERMISSIVE\n  portLevelMtls:\n    9090:\n      mode: STRICT\n"), connPlain9, false, "demo/istio_converted_peer_authentication_w", false},
		{"PERMISSIVE with a STRICT port: other ports accept plaintext", pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  mtls:\n    mode: PERMISSIVE\n  portLevelMtls:\n    9090:\n      mode: STRICT\n"), connPlain, true, "", false},
		{"inherited STRICT with a DISABLE port", pa("mesh", "  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n") + "\n---\n" + pa("w", "spec:\n  selector:\n    matchLabels:\n      app: echo\n  portLevelMtls:\n    9090:\n      mode: DISABLE\n"), connPlain9, true, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			aps, pas := policyObjects(t, tc.policies)
			out := Build(&Inputs{Pods: []*corev1.Pod{dstPod()}, AuthorizationPolicies: aps, PeerAuthentications: pas}, Options{})
			w := out.Addresses[WorkloadUID(DefaultClusterID, "demo", "echo-0")].GetWorkload()
			if w == nil {
				t.Fatal("no workload for the destination pod")
			}
			var list []*security.Authorization
			for _, a := range out.Authorizations {
				list = append(list, a)
			}
			d := authz.Compile(list).Evaluate(authz.Target{Namespace: w.Namespace, Policies: w.AuthorizationPolicies}, &tc.conn)
			if d.Allow != tc.allow || d.Policy != tc.policy {
				t.Errorf("Evaluate() = allow %v by %q (%s), want allow %v by %q; policies %v, workload's %v",
					d.Allow, d.Policy, d.Reason, tc.allow, tc.policy, keys(out.Authorizations), w.AuthorizationPolicies)
			}
			if shadowDeny := d.DryRun && !d.Shadow.Allow; shadowDeny != tc.shadowDeny {
				t.Errorf("dry-run would deny = %v, want %v (%+v)", shadowDeny, tc.shadowDeny, d)
			}
		})
	}
	if len(tests) < 40 {
		t.Errorf("the table has %d cases, want at least 40", len(tests))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestPolicyStatuses checks the conditions the translation reports.
func TestPolicyStatuses(t *testing.T) {
	aps, pas := policyObjects(t, strings.Join([]string{
		ap("ok", "spec:\n  rules:\n  - {}\n"),
		ap("audit", "spec:\n  action: AUDIT\n"),
		ap("custom", "spec:\n  action: CUSTOM\n  provider:\n    name: ext\n"),
		ap("l7", "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        paths: [/x]\n"),
		ap("badcidr", "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.300/8]\n"),
		ap("badport", "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [http]\n"),
		ap("waypoint", "spec:\n  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: wp\n"),
		pa("badpa", "spec:\n  portLevelMtls:\n    80:\n      mode: STRICT\n"),
	}, "\n---\n"))
	out := Build(&Inputs{AuthorizationPolicies: aps, PeerAuthentications: pas}, Options{})
	type short struct{ Status, Reason string }
	got := map[string]short{}
	for k, s := range out.PolicyStatuses {
		got[k] = short{s.Conditions[0].Status, s.Conditions[0].Reason}
	}
	want := map[string]short{
		"AuthorizationPolicy/demo/ok":      {"True", ReasonAccepted},
		"AuthorizationPolicy/demo/audit":   {"True", ReasonAccepted},
		"AuthorizationPolicy/demo/custom":  {"False", ReasonUnsupportedValue},
		"AuthorizationPolicy/demo/l7":      {"True", ReasonUnsupportedValue},
		"AuthorizationPolicy/demo/badcidr": {"False", ReasonInvalid},
		"AuthorizationPolicy/demo/badport": {"False", ReasonInvalid},
		// WaypointAccepted (l7authz.go): no Gateway demo/wp.
		"AuthorizationPolicy/demo/waypoint": {"False", WaypointPolicyReasonTargetNotFound},
		"PeerAuthentication/demo/badpa":     {"False", ReasonInvalid},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PolicyStatuses mismatch (-want +got):\n%s", diff)
	}
	for _, k := range []string{"demo/custom", "demo/badcidr", "demo/badport", "demo/waypoint"} {
		if _, ok := out.Authorizations[k]; ok {
			t.Errorf("Authorizations[%s] is served, want not", k)
		}
	}
	if a := out.Authorizations["demo/audit"]; !a.GetDryRun() {
		t.Errorf("AUDIT policy = %v, want dry-run", a)
	}
	if msg := out.PolicyStatuses["AuthorizationPolicy/demo/l7"].Conditions[0].Message; !strings.Contains(msg, "methods, paths") {
		t.Errorf("L7 condition message = %q, want it to name methods, paths", msg)
	}
}

// TestWorkloadPolicies checks Workload.authorization_policies.
func TestWorkloadPolicies(t *testing.T) {
	aps, pas := policyObjects(t, strings.Join([]string{
		ap("sel", "spec:\n  selector:\n    matchLabels:\n      app: echo\n"),
		ap("other", "spec:\n  selector:\n    matchLabels:\n      app: other\n"),
		ap("ns", "spec: {}\n"),
		ap("root-sel", "  namespace: istio-system\nspec:\n  selector:\n    matchLabels:\n      version: v1\n"),
		pa("mesh", "  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n"),
	}, "\n---\n"))
	out := Build(&Inputs{Pods: []*corev1.Pod{dstPod()}, AuthorizationPolicies: aps, PeerAuthentications: pas}, Options{})
	w := out.Addresses[WorkloadUID(DefaultClusterID, "demo", "echo-0")].GetWorkload()
	want := []string{"demo/sel", "istio-system/istio_converted_static_strict", "istio-system/root-sel"}
	if diff := cmp.Diff(want, w.GetAuthorizationPolicies()); diff != "" {
		t.Errorf("AuthorizationPolicies mismatch (-want +got):\n%s", diff)
	}
	var _ *workloadapi.Workload = w
}
