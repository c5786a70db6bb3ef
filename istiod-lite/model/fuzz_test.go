package model

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// maxFuzzSpec bounds each spec so that one input stays fast.
const maxFuzzSpec = 4 << 10

// FuzzAuthorizationPolicy decodes arbitrary YAML or JSON into the spec of an
// AuthorizationPolicy and of a PeerAuthentication (inputs that are not a
// spec are skipped) and translates them, alone and through Build.
//
// Property: no panic, and
//   - ConvertAuthorizationPolicy returns an Authorization or a condition;
//     both are nil only for a policy left to waypoints (targetRefs without a
//     selector). A rejected (False) condition comes without an
//     Authorization, and an invalid policy is rejected as Invalid.
//   - Every Authorization it or Build returns is one ztunnel can use: a
//     name, namespace, scope and ALLOW or DENY action; every clause has
//     matches and no match is empty (an empty one would match anything);
//     every address is 4 or 16 bytes with a prefix length within it; every
//     port is in 0..65535. It marshals, and unmarshals to an equal proto.
//   - The translation is deterministic.
//   - Build gives every PeerAuthentication exactly one condition, False for
//     an invalid one; every policy a workload names is served.
func FuzzAuthorizationPolicy(f *testing.F) {
	for _, s := range []struct {
		ap, pa       string
		rootNS       bool
		dryRun       string
		selectorPods bool
	}{
		{ap: "{}", pa: "{}"},
		{ap: "rules:\n- {}\n", pa: "mtls:\n  mode: STRICT\n", rootNS: true},
		{ap: "action: AUDIT\n", pa: "mtls: {mode: PERMISSIVE}\n", dryRun: "true"},
		{ap: "action: CUSTOM\nprovider:\n  name: ext\n", pa: "mtls: {mode: DISABLE}\n"},
		{ap: "action: DENY\nrules:\n- to:\n  - operation:\n      methods: [GET]\n      paths: [/x]\n", pa: "{}", dryRun: "maybe"},
		{ap: "rules:\n- from:\n  - source:\n      ipBlocks: [10.0.0.300/8]\n", pa: "portLevelMtls:\n  80:\n    mode: STRICT\n"},
		{ap: "rules:\n- to:\n  - operation:\n      ports: [http, \"70000\", \"-1\"]\n", pa: "selector:\n  matchLabels: {app: echo}\nportLevelMtls:\n  0: {mode: STRICT}\n  70000: {mode: DISABLE}\n"},
		{ap: "targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n  name: wp\n", pa: "{}"},
		{ap: "selector:\n  matchLabels: {app: echo}\ntargetRef:\n  kind: Service\n  name: echo\n", pa: "{}"},
		{
			ap: `selector:
  matchLabels:
    app: echo
action: DENY
rules:
- from:
  - source:
      namespaces: ["foo", "*", "ba*", "*oo"]
      notNamespaces: [bar]
      principals: ["cluster.local/ns/foo/sa/client"]
      notPrincipals: ["*"]
      serviceAccounts: [sleep, other/sa]
      ipBlocks: ["10.0.0.0/8", "fd00::1", "192.168.1.1/32"]
      notIpBlocks: ["10.1.0.0/16"]
      requestPrincipals: ["*"]
      remoteIpBlocks: ["1.2.3.4"]
      trustDomains: [cluster.local]
  - source:
      requestPrincipals: [x]
  to:
  - operation:
      ports: ["8080", "0", "65535"]
      notPorts: ["9090"]
      hosts: [a.example]
  when:
  - key: source.ip
    values: ["10.0.0.1"]
    notValues: ["10.0.0.0/24"]
  - key: destination.port
    values: ["80"]
  - key: destination.ip
    notValues: ["::/0"]
  - key: source.namespace
    values: [foo]
  - key: source.principal
    notValues: ["*"]
  - key: request.headers[x]
    values: [y]
`,
			pa:           "selector:\n  matchLabels:\n    app: echo\nmtls:\n  mode: STRICT\nportLevelMtls:\n  8080:\n    mode: DISABLE\n  9090:\n    mode: PERMISSIVE\n",
			selectorPods: true,
		},
		{
			ap:           "selector:\n  matchLabels: {app: echo}\nrules:\n- from:\n  - source: {}\n  to:\n  - operation: {}\n  when:\n  - key: \"\"\n  - key: source.ip\n",
			pa:           "selector:\n  matchLabels: {app: echo}\nmtls: {mode: PERMISSIVE}\nportLevelMtls:\n  8080: {mode: STRICT}\n",
			selectorPods: true,
		},
		{ap: `{"action":"ALLOW","rules":[{"from":[{"source":{"ipBlocks":["fe80::1%eth0"]}}]}]}`, pa: `{"mtls":{"mode":"UNSET"}}`},
	} {
		f.Add([]byte(s.ap), []byte(s.pa), s.rootNS, s.dryRun, s.selectorPods)
	}
	f.Fuzz(func(t *testing.T, apSpec, paSpec []byte, rootNS bool, dryRun string, selectorPods bool) {
		if len(apSpec) > maxFuzzSpec || len(paSpec) > maxFuzzSpec {
			t.Skip("input too large")
		}
		ns := "demo"
		if rootNS {
			ns = DefaultRootNamespace
		}
		ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "fuzz", Namespace: ns, Generation: 3}}
		apOK := decodeSpec(apSpec, &ap.Spec)
		if dryRun != "" {
			ap.Annotations = map[string]string{AnnotationDryRun: dryRun}
		}
		pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "fuzz", Namespace: ns}}
		paOK := decodeSpec(paSpec, &pa.Spec)
		if !apOK && !paOK {
			t.Skip("neither input is a spec")
		}

		in := &Inputs{}
		if apOK {
			checkConvert(t, ap)
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, ap)
		}
		if paOK {
			in.PeerAuthentications = append(in.PeerAuthentications, pa)
		}
		// A pod the policies select (or not), in their namespace and in
		// another one.
		labels := map[string]string{"app": "echo"}
		if selectorPods {
			for k, v := range ap.Spec.GetSelector().GetMatchLabels() {
				labels[k] = v
			}
			for k, v := range pa.Spec.GetSelector().GetMatchLabels() {
				labels[k] = v
			}
		}
		for i, podNS := range []string{ns, "other"} {
			in.Pods = append(in.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "echo-0", Namespace: podNS, Labels: labels},
				Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "echo"},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: []string{"10.0.2.7", "10.0.2.8"}[i]},
			})
		}
		out := Build(in, Options{})
		for key, a := range out.Authorizations {
			if got := a.GetNamespace() + "/" + a.GetName(); got != key {
				t.Fatalf("Authorizations[%q] is named %q", key, got)
			}
			checkAuthorization(t, a)
		}
		if paOK {
			st := out.PolicyStatuses[KindPeerAuthentication+"/"+ns+"/fuzz"]
			if st == nil || len(st.Conditions) != 1 {
				t.Fatalf("PeerAuthentication status = %+v, want one condition", st)
			}
			checkCondition(t, &st.Conditions[0])
			if err := ValidatePeerAuthentication(pa); err != nil {
				if c := st.Conditions[0]; !c.Rejected() || c.Reason != ReasonInvalid {
					t.Fatalf("invalid PeerAuthentication (%v) has condition %+v, want False/%s", err, c, ReasonInvalid)
				}
				if _, ok := out.Authorizations[ns+"/"+convertedPeerAuthnPrefix+"fuzz"]; ok {
					t.Fatalf("invalid PeerAuthentication (%v) is served", err)
				}
			}
		}
		for uid, addr := range out.Addresses {
			for _, key := range addr.GetWorkload().GetAuthorizationPolicies() {
				if _, ok := out.Authorizations[key]; !ok {
					t.Fatalf("workload %s names policy %q, which is not served", uid, key)
				}
			}
		}
		if again := Build(in, Options{}); !outputsEqual(out, again) {
			t.Fatal("Build() twice on the same inputs gives different outputs")
		}
	})
}

// decodeSpec decodes YAML or JSON data into spec as the Kubernetes API would
// (protojson; unknown fields rejected). It reports whether data is a spec.
func decodeSpec(data []byte, spec proto.Message) bool {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return false
	}
	return protojson.Unmarshal(js, spec) == nil
}

// checkConvert checks ConvertAuthorizationPolicy on p.
func checkConvert(t *testing.T, p *securityv1.AuthorizationPolicy) {
	t.Helper()
	a, cond := ConvertAuthorizationPolicy(p, "")
	waypoint := p.Spec.GetSelector() == nil && (p.Spec.GetTargetRef() != nil || len(p.Spec.GetTargetRefs()) > 0)
	switch {
	case a == nil && cond == nil:
		if !waypoint {
			t.Fatalf("ConvertAuthorizationPolicy(%v) = nil, nil; want an Authorization or a condition", &p.Spec)
		}
		return
	case waypoint:
		t.Fatalf("ConvertAuthorizationPolicy(%v) = %v, %+v for a waypoint policy, want nil, nil", &p.Spec, a, cond)
	case cond == nil:
		t.Fatalf("ConvertAuthorizationPolicy(%v) = %v with no condition, want one", &p.Spec, a)
	}
	checkCondition(t, cond)
	if cond.Rejected() != (a == nil) {
		t.Fatalf("ConvertAuthorizationPolicy(%v) = %v, %+v; want an Authorization exactly when accepted", &p.Spec, a, cond)
	}
	if err := ValidateAuthorizationPolicy(p); err != nil && (a != nil || cond.Reason != ReasonInvalid) {
		t.Fatalf("ConvertAuthorizationPolicy() of an invalid policy (%v) = %v, %+v; want nil, %s", err, a, cond, ReasonInvalid)
	}
	if a != nil {
		if a.GetName() != p.Name || a.GetNamespace() != p.Namespace {
			t.Fatalf("Authorization %s/%s, want %s/%s", a.GetNamespace(), a.GetName(), p.Namespace, p.Name)
		}
		checkAuthorization(t, a)
	}
	a2, cond2 := ConvertAuthorizationPolicy(p, "")
	if !proto.Equal(a, a2) || (cond2 == nil) != (cond == nil) || (cond != nil && *cond != *cond2) {
		t.Fatalf("ConvertAuthorizationPolicy() is not deterministic: %v, %+v then %v, %+v", a, cond, a2, cond2)
	}
}

func checkCondition(t *testing.T, c *PolicyCondition) {
	t.Helper()
	if c.Type != ConditionZtunnelAccepted || (c.Status != "True" && c.Status != "False") || c.Message == "" {
		t.Fatalf("condition %+v, want type %s, status True or False and a message", c, ConditionZtunnelAccepted)
	}
	switch c.Reason {
	case ReasonAccepted, ReasonUnsupportedValue, ReasonInvalid:
	default:
		t.Fatalf("condition %+v has an unknown reason", c)
	}
}

// checkAuthorization checks that a is a well-formed Authorization that
// survives the wire.
func checkAuthorization(t *testing.T, a *security.Authorization) {
	t.Helper()
	if a.GetName() == "" || a.GetNamespace() == "" {
		t.Fatalf("Authorization %v has no name or namespace", a)
	}
	if _, ok := security.Scope_name[int32(a.GetScope())]; !ok {
		t.Fatalf("Authorization %v has scope %d", a, a.GetScope())
	}
	if act := a.GetAction(); act != security.Action_ALLOW && act != security.Action_DENY {
		t.Fatalf("Authorization %v has action %v", a, act)
	}
	for _, r := range a.GetRules() {
		if r == nil {
			t.Fatalf("Authorization %v has a nil rule", a)
		}
		for _, c := range r.GetClauses() {
			if len(c.GetMatches()) == 0 {
				t.Fatalf("Authorization %v has a clause without matches", a)
			}
			for _, m := range c.GetMatches() {
				if matchEmpty(m) {
					t.Fatalf("Authorization %v has an empty match (matches anything)", a)
				}
				for _, addrs := range [][]*security.Address{m.GetSourceIps(), m.GetNotSourceIps(), m.GetDestinationIps(), m.GetNotDestinationIps()} {
					for _, ad := range addrs {
						if n := len(ad.GetAddress()); (n != 4 && n != 16) || ad.GetLength() > uint32(8*n) {
							t.Fatalf("Authorization %v has address %x/%d, want a valid prefix", a, ad.GetAddress(), ad.GetLength())
						}
					}
				}
				for _, ports := range [][]uint32{m.GetDestinationPorts(), m.GetNotDestinationPorts()} {
					for _, port := range ports {
						if port > 65535 {
							t.Fatalf("Authorization %v has port %d", a, port)
						}
					}
				}
				for _, sms := range [][]*security.StringMatch{m.GetNamespaces(), m.GetNotNamespaces(), m.GetPrincipals(), m.GetNotPrincipals()} {
					for _, sm := range sms {
						if sm.GetMatchType() == nil {
							t.Fatalf("Authorization %v has a string match without a type", a)
						}
					}
				}
			}
		}
	}
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatalf("proto.Marshal(%v): %v", a, err)
	}
	var back security.Authorization
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatalf("proto.Unmarshal(Marshal(%v)): %v", a, err)
	}
	if !proto.Equal(a, &back) {
		t.Fatalf("Authorization does not survive the wire:\nsent %v\ngot  %v", a, &back)
	}
}

func outputsEqual(a, b *Output) bool {
	if len(a.Authorizations) != len(b.Authorizations) || len(a.Addresses) != len(b.Addresses) || len(a.PolicyStatuses) != len(b.PolicyStatuses) {
		return false
	}
	for k, v := range a.Authorizations {
		if !proto.Equal(v, b.Authorizations[k]) {
			return false
		}
	}
	for k, v := range a.Addresses {
		if !proto.Equal(v, b.Addresses[k]) {
			return false
		}
	}
	for k, v := range a.PolicyStatuses {
		w := b.PolicyStatuses[k]
		if w == nil || len(v.Conditions) != len(w.Conditions) || strings.Join(condStrings(v), "|") != strings.Join(condStrings(w), "|") {
			return false
		}
	}
	return true
}

func condStrings(s *PolicyStatus) []string {
	var out []string
	for _, c := range s.Conditions {
		out = append(out, c.Status+"/"+c.Reason+"/"+c.Message)
	}
	return out
}
