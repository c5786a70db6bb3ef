package localdir

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	securityapi "istio.io/api/security/v1beta1"
)

func TestLoadPolicies(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"good.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-foo
  namespace: demo
  annotations:
    istio.io/dry-run: "false"
spec:
  selector:
    matchLabels:
      app: echo
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["foo"]
        ipBlocks: ["10.0.0.0/8"]
    to:
    - operation:
        ports: ["8080"]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
`,
		"badaction.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-action
spec:
  action: FORBID
`,
		"badcidr.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-cidr
spec:
  rules:
  - from:
    - source:
        ipBlocks:
        - 10.0.0.0/8
        - 10.0.0.300/33
`,
		"unknownfield.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: typo
spec:
  action: DENY
  rulez: []
`,
		"badmode.yaml": `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: bad-mode
spec:
  mtls:
    mode: STRICTER
`,
	})
	snap, errs := Load(dir)
	got := summarize(snap)
	want := summary{AuthorizationPolicies: []string{"demo/deny-foo"}, PeerAuthentications: []string{"istio-system/default"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Load() objects mismatch (-want +got):\n%s", diff)
	}
	p := snap.Inputs.AuthorizationPolicies[0]
	if p.Spec.Action != securityapi.AuthorizationPolicy_DENY || p.Spec.Rules[0].From[0].Source.IpBlocks[0] != "10.0.0.0/8" || p.Spec.Selector.MatchLabels["app"] != "echo" {
		t.Errorf("deny-foo decoded as %v", &p.Spec)
	}
	wantErrs := map[string]struct {
		line int
		msg  string
	}{
		"badaction.yaml":    {6, "FORBID"},
		"badcidr.yaml":      {11, "10.0.0.300/33"},
		"unknownfield.yaml": {7, "rulez"},
		"badmode.yaml":      {7, "STRICTER"},
	}
	if len(errs) != len(wantErrs) {
		t.Fatalf("Load() errors = %v, want %d", errs, len(wantErrs))
	}
	for _, err := range errs {
		pe, ok := err.(*ParseError)
		if !ok {
			t.Errorf("error %v (%T), want a *ParseError", err, err)
			continue
		}
		w, ok := wantErrs[filepath.Base(pe.File)]
		if !ok {
			t.Errorf("unexpected error %v", err)
			continue
		}
		if pe.Line != w.line || !strings.Contains(pe.Error(), w.msg) {
			t.Errorf("error = %v, want line %d and %q", err, w.line, w.msg)
		}
	}
}
