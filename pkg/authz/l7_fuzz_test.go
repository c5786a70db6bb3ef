package authz

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// FuzzL7 compiles a random waypoint policy (protobuf bytes, as a waypoint
// receives it over xDS) and evaluates a random request against it: no
// panic, and the invariants of the decision hold.
func FuzzL7(f *testing.F) {
	for _, rule := range []string{
		``,
		`to: {methods: "GET" paths: "/api/*" hosts: "echo.*" ports: "8080"}`,
		`to: {not_paths: "/admin" paths: "/{*}/v1/{**}"}`,
		`from: {principals: "*/sa/client" namespaces: "f*o" service_accounts: "foo/client" ip_blocks: "10.0.0.0/8" remote_ip_blocks: "::1"}`,
		`from: {not_principals: "*" not_namespaces: "bar" not_service_accounts: "x" not_ip_blocks: "1.2.3.4" not_remote_ip_blocks: "10.0.0.1/32"}`,
		`when: {key: "request.headers[x-env]" values: "prod" not_values: "p*"} when: {key: "source.trustDomain" values: "*.local"}`,
		`when: {key: "destination.port" values: "8080"} when: {key: "destination.ip" not_values: "10.0.0.0/8"} when: {key: "remote.ip" values: "192.0.2.9"}`,
		`when: {key: "request.auth.claims[iss]" values: "x"}`,
	} {
		for _, action := range []waypoint.Action{waypoint.Action_ALLOW, waypoint.Action_DENY, waypoint.Action_AUDIT} {
			a := newL7Policy(f, "p", action, rule)
			a.Targets = append(a.Targets, &waypoint.Target{Kind: &waypoint.Target_AllWaypoints{AllWaypoints: true}})
			b, err := proto.Marshal(a)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b, "spiffe://cluster.local/ns/foo/sa/client", "GET", "echo.demo:8080", "/api/v1/x?y", "prod", uint16(8080))
		}
	}
	f.Add([]byte{}, "", "POST", "", "/a/../%2e%2e/%%30%30", "a", uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, identity, method, host, path, header string, port uint16) {
		a := &waypoint.Authorization{}
		if err := proto.Unmarshal(data, a); err != nil {
			return
		}
		a.Targets = append(a.Targets, &waypoint.Target{Kind: &waypoint.Target_Service{Service: echoSvc}})
		ps := CompileL7([]*waypoint.Authorization{a})
		r := &Request{
			Peer: netip.MustParseAddr("10.0.1.5"), Remote: netip.MustParseAddr("192.0.2.9"), Identity: identity,
			Method: method, Host: host, Path: path, Header: http.Header{"X-Env": {header}, "X-Multi": {header, header}},
			DestIP: netip.MustParseAddr("10.96.0.10"), Port: port, Service: echoSvc, Gateway: echoGW,
		}
		d := ps.Evaluate(r)
		if d2 := ps.Evaluate(r); d2.Verdict != d.Verdict || d2.DryRun != d.DryRun || len(d2.Audit) != len(d.Audit) {
			t.Fatalf("Evaluate() is not deterministic: %+v then %+v", d, d2)
		}
		checkL7Decision(t, a, d)
		checkL7Decision(t, a, ps.EvaluateTCP(r))

		np, ok := NormalizePath(path)
		p := stripQuery(np)
		in, _, _ := strings.Cut(path, "?")
		if ok != (!strings.Contains(in, "\x00") && !strings.Contains(in, "%00")) {
			t.Fatalf("NormalizePath(%q) = %q, %v: valid exactly when the path has no NUL", path, np, ok)
		}
		if !strings.HasPrefix(p, "/") {
			t.Fatalf("NormalizePath(%q) = %q: no leading slash", path, np)
		}
		for i := 0; i < len(p); i++ {
			if c := p[i]; c <= ' ' || c >= 0x7f || c == '\\' {
				t.Fatalf("NormalizePath(%q) = %q: unescaped byte %#x", path, np, c)
			}
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q) = %q: dot segment left", path, np)
			}
		}
	})
}

// checkL7Decision checks what one policy can decide.
func checkL7Decision(t *testing.T, a *waypoint.Authorization, d L7Decision) {
	t.Helper()
	key := L7Key(a)
	if d.Reason == InvalidPath {
		if d.Allow {
			t.Fatalf("decision %+v allows an invalid path", d)
		}
		return
	}
	if d.Allow != (d.Reason == NoPolicy || d.Reason == AllowMatched) {
		t.Fatalf("decision %+v: Allow does not agree with Reason", d)
	}
	if (d.Reason == DenyMatched || d.Reason == AllowMatched) != (d.Policy == key) {
		t.Fatalf("decision %+v: names policy %q, want %q exactly when a policy matched", d, d.Policy, key)
	}
	if a.GetDryRun() || a.GetAction() == waypoint.Action_AUDIT {
		if !d.Allow || d.Reason != NoPolicy {
			t.Fatalf("dry-run or AUDIT policy %v decided %+v", a, d)
		}
	}
	if len(d.Audit) > 1 || len(d.Audit) == 1 && (d.Audit[0] != key || a.GetAction() != waypoint.Action_AUDIT) {
		t.Fatalf("decision %+v: audit list for policy %v", d, a)
	}
}
