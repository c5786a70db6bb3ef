package authz

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

const (
	echoSvc = "demo/echo.demo.svc.cluster.local"
	echoGW  = "demo/waypoint"
)

// l7Rules parses rules written in protobuf text format, one per argument.
func l7Rules(t testing.TB, rules ...string) []*waypoint.Rule {
	t.Helper()
	var out []*waypoint.Rule
	for _, r := range rules {
		m := &waypoint.Rule{}
		if err := prototext.Unmarshal([]byte(r), m); err != nil {
			t.Fatalf("rule %q: %v", r, err)
		}
		out = append(out, m)
	}
	return out
}

// l7Policy builds a policy demo/<name> targeting the echo Service.
func newL7Policy(t testing.TB, name string, action waypoint.Action, rules ...string) *waypoint.Authorization {
	t.Helper()
	return &waypoint.Authorization{
		Name: name, Namespace: "demo", Action: action,
		Targets: []*waypoint.Target{{Kind: &waypoint.Target_Service{Service: echoSvc}}},
		Rules:   l7Rules(t, rules...),
	}
}

// baseRequest is a GET from foo/client to the echo Service through the
// demo/waypoint waypoint.
func baseRequest() *Request {
	return &Request{
		Peer:     netip.MustParseAddr("10.0.1.5"),
		Remote:   netip.MustParseAddr("192.0.2.9"),
		Identity: "spiffe://cluster.local/ns/foo/sa/client",
		Method:   "GET",
		Host:     "echo.demo.svc.cluster.local:8080",
		Path:     "/api/v1?x=1",
		Header:   http.Header{"X-Env": {"prod"}, "X-Multi": {"a", "b"}},
		DestIP:   netip.MustParseAddr("10.96.0.10"),
		Port:     8080,
		Service:  echoSvc,
		Gateway:  echoGW,
	}
}

// TestL7Fields checks each field, positive and not_, by whether a policy
// holding one rule matches the request: an ALLOW policy must then allow
// it and a DENY policy deny it, and the reverse when it does not match.
func TestL7Fields(t *testing.T) {
	plain := func(r *Request) { r.Identity = "" }
	path := func(p string) func(*Request) { return func(r *Request) { r.Path = p } }
	tests := []struct {
		name  string
		rule  string
		req   func(*Request)
		match bool
	}{
		{"empty rule matches everything", ``, nil, true},
		{"methods", `to: {methods: "GET"}`, nil, true},
		{"methods other", `to: {methods: "POST"}`, nil, false},
		{"methods are case-sensitive", `to: {methods: "get"}`, nil, false},
		{"methods prefix", `to: {methods: "G*"}`, nil, true},
		{"notMethods", `to: {not_methods: "GET"}`, nil, false},
		{"notMethods other", `to: {not_methods: "POST"}`, nil, true},
		{"paths exact without query", `to: {paths: "/api/v1"}`, nil, true},
		{"paths prefix", `to: {paths: "/api/*"}`, nil, true},
		{"paths suffix", `to: {paths: "*/v1"}`, nil, true},
		{"paths presence", `to: {paths: "*"}`, nil, true},
		{"paths other", `to: {paths: "/api"}`, nil, false},
		{"paths query is not path", `to: {paths: "*x=1"}`, nil, false},
		{"notPaths", `to: {not_paths: "/api/v1"}`, nil, false},
		{"notPaths other", `to: {not_paths: "/admin"}`, nil, true},
		{"paths template one segment", `to: {paths: "/api/{*}"}`, nil, true},
		{"paths template one segment only", `to: {paths: "/{*}"}`, nil, false},
		{"paths template any segments", `to: {paths: "/{**}"}`, nil, true},
		{"paths template literal after", `to: {paths: "/{*}/v1"}`, nil, true},
		{"paths of CONNECT", `to: {paths: "*"}`, path(""), false},
		{"notPaths of CONNECT", `to: {not_paths: "/admin"}`, path(""), true},
		{"hosts exact, any case", `to: {hosts: "ECHO.demo.svc.cluster.local:8080"}`, nil, true},
		{"hosts keep the port", `to: {hosts: "echo.demo.svc.cluster.local"}`, nil, false},
		{"hosts suffix any case", `to: {hosts: "*.CLUSTER.local:8080"}`, nil, true},
		{"hosts prefix", `to: {hosts: "echo.*"}`, nil, true},
		{"hosts presence", `to: {hosts: "*"}`, nil, true},
		{"notHosts", `to: {not_hosts: "echo.demo.svc.cluster.local:8080"}`, nil, false},
		{"ports", `to: {ports: "8080"}`, nil, true},
		{"ports other", `to: {ports: "9090"}`, nil, false},
		{"notPorts", `to: {not_ports: "8080"}`, nil, false},
		{"operation fields AND", `to: {methods: "GET" paths: "/admin"}`, nil, false},
		{"operations OR", `to: {methods: "POST"} to: {paths: "/api/v1"}`, nil, true},
		{"principals", `from: {principals: "cluster.local/ns/foo/sa/client"}`, nil, true},
		{"principals with spiffe:// do not match", `from: {principals: "spiffe://cluster.local/ns/foo/sa/client"}`, nil, false},
		{"principals prefix", `from: {principals: "cluster.local/ns/foo/*"}`, nil, true},
		{"principals suffix", `from: {principals: "*/sa/client"}`, nil, true},
		{"principals presence", `from: {principals: "*"}`, nil, true},
		{"principals presence plaintext", `from: {principals: "*"}`, plain, false},
		{"notPrincipals presence plaintext", `from: {not_principals: "*"}`, plain, true},
		{"notPrincipals", `from: {not_principals: "cluster.local/ns/foo/sa/client"}`, nil, false},
		{"namespaces", `from: {namespaces: "foo"}`, nil, true},
		{"namespaces other", `from: {namespaces: "fo"}`, nil, false},
		{"namespaces wildcard", `from: {namespaces: "f*"}`, nil, true},
		{"namespaces inner wildcard", `from: {namespaces: "f*o"}`, nil, true},
		{"namespaces presence plaintext", `from: {namespaces: "*"}`, plain, false},
		{"notNamespaces", `from: {not_namespaces: "foo"}`, nil, false},
		{"notNamespaces plaintext", `from: {not_namespaces: "foo"}`, plain, true},
		{"serviceAccounts", `from: {service_accounts: "foo/client"}`, nil, true},
		{"serviceAccounts default to the policy namespace", `from: {service_accounts: "client"}`, nil, false},
		{"serviceAccounts other", `from: {service_accounts: "foo/clien"}`, nil, false},
		{"notServiceAccounts", `from: {not_service_accounts: "foo/client"}`, nil, false},
		{"ipBlocks peer", `from: {ip_blocks: "10.0.1.0/24"}`, nil, true},
		{"ipBlocks single IP", `from: {ip_blocks: "10.0.1.5"}`, nil, true},
		{"ipBlocks are not the remote", `from: {ip_blocks: "192.0.2.0/24"}`, nil, false},
		{"notIpBlocks", `from: {not_ip_blocks: "10.0.0.0/8"}`, nil, false},
		{"remoteIpBlocks", `from: {remote_ip_blocks: "192.0.2.0/24"}`, nil, true},
		{"remoteIpBlocks are not the peer", `from: {remote_ip_blocks: "10.0.1.5"}`, nil, false},
		{"notRemoteIpBlocks", `from: {not_remote_ip_blocks: "192.0.2.9"}`, nil, false},
		{"source fields AND", `from: {namespaces: "foo" ip_blocks: "192.0.2.9"}`, nil, false},
		{"sources OR", `from: {namespaces: "bar"} from: {ip_blocks: "10.0.1.5"}`, nil, true},
		{"from AND to", `from: {namespaces: "foo"} to: {methods: "POST"}`, nil, false},
		{"when header", `when: {key: "request.headers[x-env]" values: "prod"}`, nil, true},
		{"when header name any case", `when: {key: "request.headers[X-ENV]" values: "prod"}`, nil, true},
		{"when header value case-sensitive", `when: {key: "request.headers[x-env]" values: "PROD"}`, nil, false},
		{"when header prefix", `when: {key: "request.headers[x-env]" values: "pr*"}`, nil, true},
		{"when header presence", `when: {key: "request.headers[x-env]" values: "*"}`, nil, true},
		{"when header absent", `when: {key: "request.headers[x-none]" values: "*"}`, nil, false},
		{"when header notValues", `when: {key: "request.headers[x-env]" not_values: "prod"}`, nil, false},
		{"when absent header notValues", `when: {key: "request.headers[x-none]" not_values: "prod"}`, nil, true},
		{"when header repeated is joined", `when: {key: "request.headers[x-multi]" values: "a,b"}`, nil, true},
		{"when header repeated, one value", `when: {key: "request.headers[x-multi]" values: "a"}`, nil, false},
		{"when :authority", `when: {key: "request.headers[:authority]" values: "echo.*"}`, nil, true},
		{"when host", `when: {key: "request.headers[host]" values: "echo.*"}`, nil, true},
		{"when :method", `when: {key: "request.headers[:method]" values: "GET"}`, nil, true},
		{"when source.ip", `when: {key: "source.ip" values: "10.0.1.0/24"}`, nil, true},
		{"when remote.ip", `when: {key: "remote.ip" values: "192.0.2.9"}`, nil, true},
		{"when remote.ip not", `when: {key: "remote.ip" not_values: "192.0.2.9"}`, nil, false},
		{"when source.namespace", `when: {key: "source.namespace" values: "foo"}`, nil, true},
		{"when source.principal", `when: {key: "source.principal" values: "cluster.local/ns/foo/sa/client"}`, nil, true},
		{"when source.serviceAccount", `when: {key: "source.serviceAccount" values: "foo/client"}`, nil, true},
		{"when source.trustDomain", `when: {key: "source.trustDomain" values: "cluster.local"}`, nil, true},
		{"when source.trustDomain suffix", `when: {key: "source.trustDomain" values: "*.local"}`, nil, true},
		{"when source.trustDomain other", `when: {key: "source.trustDomain" values: "example.org"}`, nil, false},
		{"when destination.ip", `when: {key: "destination.ip" values: "10.96.0.0/16"}`, nil, true},
		{"when destination.port", `when: {key: "destination.port" values: "8080"}`, nil, true},
		{"when destination.port not", `when: {key: "destination.port" not_values: "8080"}`, nil, false},
		{"when conditions AND", `when: {key: "source.namespace" values: "foo"} when: {key: "destination.port" values: "9090"}`, nil, false},
		{"when values OR", `when: {key: "destination.port" values: "9090" values: "8080"}`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := baseRequest()
			if tt.req != nil {
				tt.req(r)
			}
			allow := CompileL7([]*waypoint.Authorization{newL7Policy(t, "p", waypoint.Action_ALLOW, tt.rule)})
			if got := allow.Evaluate(r); got.Allow != tt.match {
				t.Errorf("ALLOW{%s}.Evaluate() = %+v, want Allow %v", tt.rule, got, tt.match)
			}
			deny := CompileL7([]*waypoint.Authorization{newL7Policy(t, "p", waypoint.Action_DENY, tt.rule)})
			if got := deny.Evaluate(r); got.Allow == tt.match {
				t.Errorf("DENY{%s}.Evaluate() = %+v, want Allow %v", tt.rule, got, !tt.match)
			}
		})
	}
}

// TestL7FailClosed checks that a policy the evaluator cannot compile allows
// nothing as ALLOW and denies everything as DENY.
func TestL7FailClosed(t *testing.T) {
	for _, rule := range []string{
		`when: {key: "request.auth.claims[iss]" values: "x"}`,
		`when: {key: "connection.sni" values: "x"}`,
		`when: {key: "request.headers[]" values: "x"}`,
		`from: {ip_blocks: "10.0.0.300"}`,
		`to: {ports: "http"}`,
		`to: {paths: "/a/{**}/{*}"}`,
		`from: {service_accounts: "a/b/c"}`,
	} {
		t.Run(rule, func(t *testing.T) {
			// A second rule that would match the request on its own.
			allow := CompileL7([]*waypoint.Authorization{newL7Policy(t, "p", waypoint.Action_ALLOW, rule, ``)})
			if got := allow.Evaluate(baseRequest()); got.Allow || got.Reason != NoAllowMatched {
				t.Errorf("ALLOW.Evaluate() = %+v, want denied, %v", got, NoAllowMatched)
			}
			deny := CompileL7([]*waypoint.Authorization{newL7Policy(t, "p", waypoint.Action_DENY, rule, `to: {methods: "NONE"}`)})
			if got := deny.Evaluate(baseRequest()); got.Allow || got.Reason != DenyMatched {
				t.Errorf("DENY.Evaluate() = %+v, want denied, %v", got, DenyMatched)
			}
			if got := deny.EvaluateTCP(baseRequest()); got.Allow {
				t.Errorf("DENY.EvaluateTCP() = %+v, want denied", got)
			}
		})
	}
	unknown := newL7Policy(t, "p", waypoint.Action(7), ``)
	unknown.Rules = nil
	if got := CompileL7([]*waypoint.Authorization{unknown}).Evaluate(baseRequest()); got.Allow {
		t.Errorf("unknown action: Evaluate() = %+v, want denied", got)
	}
}

// TestL7PathNormalization checks that paths are matched as Istio's
// waypoints match them after Envoy's default normalization.
func TestL7PathNormalization(t *testing.T) {
	deny := CompileL7([]*waypoint.Authorization{newL7Policy(t, "admin", waypoint.Action_DENY, `to: {paths: "/admin"}`)})
	tests := []struct {
		path   string
		denied bool
	}{
		{"/admin", true},
		{"/admin?x=1", true},
		{"/admin/../admin", true},
		{"/x/../admin", true},
		{"/./admin", true},
		{"/%2e%2e/admin", true},
		{"/x/%2E%2e/admin", true},
		{"/adm%69n", true},
		{"\\admin", true},
		{"admin", true},
		{"/admin/", false},
		{"/ADMIN", false},    // Istio matches paths case-sensitively
		{"//admin", false},   // BASE does not merge slashes
		{"/admin%2F", false}, // escaped slashes are kept
		{"/x/..%2Fadmin", false},
		{"/admin%00", true}, // invalid (Envoy answers 400): denied
	}
	for _, tt := range tests {
		r := baseRequest()
		r.Path = tt.path
		if got := deny.Evaluate(r); got.Allow == tt.denied {
			t.Errorf("DENY /admin: Evaluate(path %q) = %+v, want denied %v", tt.path, got, tt.denied)
		}
	}
	r := baseRequest()
	r.Path = "/a%00"
	if got := deny.Evaluate(r); got.Allow || got.Reason != InvalidPath {
		t.Errorf("Evaluate(path %q) = %+v, want denied, %v", r.Path, got, InvalidPath)
	}
}

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"/a/b", "/a/b", true},
		{"", "/", true},
		{"a/b", "/a/b", true},
		{"/a/./b", "/a/b", true},
		{"/a/../b", "/b", true},
		{"/../a", "/a", true},
		{"/a/..", "/", true},
		{"/a/.", "/a/", true},
		{"/a/b/../../c", "/c", true},
		{"/a//../b", "/a/b", true},
		{"//a", "//a", true},
		{"/a/.b/..c/c.", "/a/.b/..c/c.", true},
		{"/.%2e/x", "/x", true},
		{"/a/%2E", "/a/", true},
		{"/a%2e/b", "/a./b", true},
		{"/a%2fb%5Cc", "/a%2fb%5Cc", true},
		{"/%41%7e%2D%5f%30", "/A~-_0", true},
		{"/%25", "/%25", true},
		{"/a%zz%4", "/a%zz%4", true},
		{"/a\\b", "/a/b", true},
		{"/a b\"<>^`{|}", "/a%20b%22%3C%3E%5E%60%7B%7C%7D", true},
		{"/a#b", "/a%23b", true},
		{"/\xc3\xa9\x7f\x01", "/%C3%A9%7F%01", true},
		{"/!$&'()*+,;=:@[]", "/!$&'()*+,;=:@[]", true},
		{"/a/../b?x=/../y#z", "/b?x=/../y#z", true},
		{"/%%30%30", "/%2500", true},
		{"/a%00", "/a%00", false},
		{"/a\x00", "/a%00", false},
	}
	for _, tt := range tests {
		got, ok := NormalizePath(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NormalizePath(%q) = %q, %v, want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestL7Precedence checks Istio's order of evaluation, targets, dry-run
// and AUDIT.
func TestL7Precedence(t *testing.T) {
	const (
		A = waypoint.Action_ALLOW
		D = waypoint.Action_DENY
		U = waypoint.Action_AUDIT
	)
	match, miss := `to: {methods: "GET"}`, `to: {methods: "POST"}`
	p := func(name string, action waypoint.Action, rule string) *waypoint.Authorization {
		return newL7Policy(t, name, action, rule)
	}
	dry := func(a *waypoint.Authorization) *waypoint.Authorization { a.DryRun = true; return a }
	target := func(a *waypoint.Authorization, ts ...*waypoint.Target) *waypoint.Authorization {
		a.Targets = ts
		return a
	}
	svc := func(s string) *waypoint.Target { return &waypoint.Target{Kind: &waypoint.Target_Service{Service: s}} }
	gw := func(s string) *waypoint.Target { return &waypoint.Target{Kind: &waypoint.Target_Gateway{Gateway: s}} }
	allWP := &waypoint.Target{Kind: &waypoint.Target_AllWaypoints{AllWaypoints: true}}
	noRules := func(a *waypoint.Authorization) *waypoint.Authorization { a.Rules = nil; return a }

	tests := []struct {
		name     string
		policies []*waypoint.Authorization
		want     L7Decision
	}{
		{"no policy", nil, L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"deny beats allow", []*waypoint.Authorization{p("a", A, match), p("d", D, match)},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}}},
		{"deny not matching", []*waypoint.Authorization{p("d", D, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"one allow of two matches", []*waypoint.Authorization{p("a1", A, miss), p("a2", A, match)},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: AllowMatched, Policy: "demo/a2"}}}},
		{"allow not matching", []*waypoint.Authorization{p("a", A, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: NoAllowMatched}}}},
		{"allow without rules", []*waypoint.Authorization{noRules(p("a", A, ""))},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: NoAllowMatched}}}},
		{"deny without rules", []*waypoint.Authorization{noRules(p("d", D, ""))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"allow of another service does not apply", []*waypoint.Authorization{target(p("a", A, miss), svc("demo/other.demo.svc.cluster.local"))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"gateway target", []*waypoint.Authorization{target(p("d", D, match), gw(echoGW))},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}}},
		{"other gateway", []*waypoint.Authorization{target(p("d", D, match), gw("demo/other"))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"all waypoints", []*waypoint.Authorization{target(p("d", D, match), allWP)},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: DenyMatched, Policy: "demo/d"}}}},
		{"no target applies nowhere", []*waypoint.Authorization{target(p("d", D, match))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"dry-run deny never decides", []*waypoint.Authorization{dry(p("d", D, match))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}, DryRun: true,
				Shadow: Verdict{Reason: DenyMatched, Policy: "demo/d"}}}},
		{"dry-run allow never decides", []*waypoint.Authorization{dry(p("a", A, miss)), p("d", D, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}, DryRun: true,
				Shadow: Verdict{Reason: NoAllowMatched}}}},
		{"dry-run allow beside an enforced one", []*waypoint.Authorization{dry(p("a1", A, match)), p("a2", A, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: NoAllowMatched}, DryRun: true,
				Shadow: Verdict{Allow: true, Reason: AllowMatched, Policy: "demo/a1"}}}},
		{"audit never decides", []*waypoint.Authorization{p("u", U, match), p("a", A, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Reason: NoAllowMatched}}, Audit: []string{"demo/u"}}},
		{"audit not matching", []*waypoint.Authorization{p("u", U, miss)},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"dry-run audit is not reported", []*waypoint.Authorization{dry(p("u", U, match))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}}},
		{"audit with two matching targets is reported once", []*waypoint.Authorization{target(p("u", U, match), svc(echoSvc), gw(echoGW))},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}, Audit: []string{"demo/u"}}},
		{"audits of all kinds of targets", []*waypoint.Authorization{target(p("u1", U, match), allWP), target(p("u2", U, match), gw(echoGW)), p("u3", U, match)},
			L7Decision{Decision: Decision{Verdict: Verdict{Allow: true, Reason: NoPolicy}}, Audit: []string{"demo/u1", "demo/u2", "demo/u3"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CompileL7(tt.policies).Evaluate(baseRequest())
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestL7TCP checks EvaluateTCP: ALLOW rules with HTTP fields are dropped,
// DENY policies are enforced without those fields.
func TestL7TCP(t *testing.T) {
	port := func(p uint16) func(*Request) { return func(r *Request) { r.Port = p } }
	tests := []struct {
		name   string
		action waypoint.Action
		rules  []string
		req    func(*Request)
		allow  bool
	}{
		{"allow with paths only is dropped", waypoint.Action_ALLOW, []string{`to: {paths: "/api/v1"}`}, nil, false},
		{"allow keeps rules without HTTP fields", waypoint.Action_ALLOW, []string{`to: {paths: "/api/v1"}`, `to: {ports: "8080"}`}, nil, true},
		{"allow rule with a header condition is dropped", waypoint.Action_ALLOW,
			[]string{`from: {namespaces: "foo"} when: {key: "request.headers[x-env]" values: "prod"}`}, nil, false},
		{"allow without HTTP fields", waypoint.Action_ALLOW, []string{`from: {namespaces: "foo"} to: {ports: "8080"}`}, nil, true},
		{"deny enforced without paths", waypoint.Action_DENY, []string{`to: {paths: "/admin" ports: "8080"}`}, nil, false},
		{"deny enforced without paths, other port", waypoint.Action_DENY, []string{`to: {paths: "/admin" ports: "8080"}`}, port(9090), true},
		{"deny with paths only denies all", waypoint.Action_DENY, []string{`to: {paths: "/admin"}`}, nil, false},
		{"deny with notMethods only denies all", waypoint.Action_DENY, []string{`to: {not_methods: "GET"}`}, nil, false},
		{"deny enforced without header condition", waypoint.Action_DENY,
			[]string{`from: {namespaces: "bar"} when: {key: "request.headers[x-env]" values: "none"}`}, nil, true},
		{"deny enforced without header condition, matching source", waypoint.Action_DENY,
			[]string{`from: {namespaces: "foo"} when: {key: "request.headers[x-env]" values: "none"}`}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := baseRequest()
			r.Method, r.Path, r.Host, r.Header = "", "", "", nil
			if tt.req != nil {
				tt.req(r)
			}
			ps := CompileL7([]*waypoint.Authorization{newL7Policy(t, "p", tt.action, tt.rules...)})
			if got := ps.EvaluateTCP(r); got.Allow != tt.allow {
				t.Errorf("EvaluateTCP() = %+v, want Allow %v", got, tt.allow)
			}
		})
	}
}

// TestL7IdentityMatchersAsIstio compares the namespace and service account
// matchers with the regular expressions Istio gives Envoy, on random
// identities.
func TestL7IdentityMatchersAsIstio(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := []string{"a", "b", "ns", "sa", "/", "/", "x", "."}
	word := func(n int, slash bool) string {
		var b strings.Builder
		for range 1 + rng.IntN(n) {
			tok := tokens[rng.IntN(len(tokens))]
			if tok == "/" && !slash {
				continue
			}
			b.WriteString(tok)
		}
		return b.String()
	}
	for range 20000 {
		id := "spiffe://" + word(12, true)
		ns, sa := word(2, false), word(2, false)
		if ns == "" || sa == "" {
			continue
		}
		saRE := regexp.MustCompile(fmt.Sprintf(`^spiffe://.+/ns/%s/(.+/|)sa/%s(/.+)?$`, regexp.QuoteMeta(ns), regexp.QuoteMeta(sa)))
		if got, want := serviceAccountMatches(id, "/ns/"+ns+"/", "sa/"+sa), saRE.MatchString(id); got != want {
			t.Fatalf("serviceAccountMatches(%q, %s/%s) = %v, want %v", id, ns, sa, got, want)
		}
		nsRE := regexp.MustCompile(`^.*/ns/` + regexp.QuoteMeta(ns) + `/.*$`)
		if got, want := strings.Contains(id, "/ns/"+ns+"/"), nsRE.MatchString(id); got != want {
			t.Fatalf("namespace %q in %q = %v, want %v", ns, id, got, want)
		}
	}
}

func TestL7NilAndLen(t *testing.T) {
	var p *L7Policies
	if got := p.Evaluate(baseRequest()); !got.Allow || got.Reason != NoPolicy {
		t.Errorf("nil.Evaluate() = %+v, want allowed", got)
	}
	if got := p.EvaluateTCP(baseRequest()); !got.Allow {
		t.Errorf("nil.EvaluateTCP() = %+v, want allowed", got)
	}
	ps := CompileL7([]*waypoint.Authorization{nil, newL7Policy(t, "a", waypoint.Action_ALLOW), newL7Policy(t, "a", waypoint.Action_DENY)})
	if ps.Len() != 1 || p.Len() != 0 {
		t.Errorf("Len() = %d, %d; want 1 (the later of two same-named policies), 0", ps.Len(), p.Len())
	}
}

// TestL7EvaluateAllocations checks that a request with a clean path costs
// no allocation.
func TestL7EvaluateAllocations(t *testing.T) {
	ps := CompileL7([]*waypoint.Authorization{
		newL7Policy(t, "allow", waypoint.Action_ALLOW, `from: {namespaces: "foo" principals: "*/sa/client"} to: {methods: "GET" paths: "/api/*" hosts: "echo.*"}`),
		newL7Policy(t, "deny", waypoint.Action_DENY, `to: {paths: "/admin"}`, `when: {key: "request.headers[x-env]" values: "test"}`),
	})
	r := baseRequest()
	if got := ps.Evaluate(r); !got.Allow || got.Reason != AllowMatched {
		t.Fatalf("Evaluate() = %+v, want allowed by demo/allow", got)
	}
	if n := testing.AllocsPerRun(100, func() { ps.Evaluate(r) }); n != 0 {
		t.Errorf("Evaluate() allocates %v times per request, want 0", n)
	}
}

func BenchmarkL7Evaluate(b *testing.B) {
	ps := CompileL7([]*waypoint.Authorization{
		newL7Policy(b, "allow", waypoint.Action_ALLOW, `from: {namespaces: "foo" principals: "*/sa/client"} to: {methods: "GET" paths: "/api/*" hosts: "echo.*"}`),
		newL7Policy(b, "deny", waypoint.Action_DENY, `to: {paths: "/admin"}`, `when: {key: "request.headers[x-env]" values: "test"}`),
	})
	r := baseRequest()
	b.ReportAllocs()
	for b.Loop() {
		ps.Evaluate(r)
	}
}
