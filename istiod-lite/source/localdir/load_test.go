package localdir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// writeFiles creates files (relative path → content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// summary is the comparable shape of a snapshot: "Kind ns/name" of every
// object, in snapshot order.
type summary struct {
	Namespaces, Pods, Services, ServiceAccounts, Nodes, Secrets, Raw []string
	AuthorizationPolicies, PeerAuthentications                       []string
	NodeTokens                                                       map[string]string
}

func summarize(s *Snapshot) summary {
	var out summary
	for _, o := range s.Inputs.Namespaces {
		out.Namespaces = append(out.Namespaces, o.Name)
	}
	for _, o := range s.Inputs.Pods {
		out.Pods = append(out.Pods, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Inputs.Services {
		out.Services = append(out.Services, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Inputs.ServiceAccounts {
		out.ServiceAccounts = append(out.ServiceAccounts, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Inputs.AuthorizationPolicies {
		out.AuthorizationPolicies = append(out.AuthorizationPolicies, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Inputs.PeerAuthentications {
		out.PeerAuthentications = append(out.PeerAuthentications, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Nodes {
		out.Nodes = append(out.Nodes, o.Name)
	}
	for _, o := range s.Secrets {
		out.Secrets = append(out.Secrets, o.Namespace+"/"+o.Name)
	}
	for _, o := range s.Raw {
		out.Raw = append(out.Raw, o.Kind+" "+o.Namespace+"/"+o.Name)
	}
	if len(s.NodeTokens) > 0 {
		out.NodeTokens = s.NodeTokens
	}
	return out
}

const podA = `apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: ns1
spec:
  containers:
  - name: app
    image: app
`

// wantErr describes an expected error: for a *ParseError its file (base
// name) and line, and a substring of the message.
type wantErr struct {
	file     string // empty for errors that are not *ParseError
	line     int
	contains string
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		want     summary
		wantErrs []wantErr
	}{
		{
			name: "multi-document file with comments, empty documents and a default namespace",
			files: map[string]string{"all.yaml": `# leading comment
apiVersion: v1
kind: Namespace
metadata:
  name: ns1
  labels: {istio.io/dataplane-mode: ambient}
---
---   # empty document
` + podA + `--- 
apiVersion: v1
kind: Service
metadata:
  name: svc
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns1}
`},
			want: summary{Namespaces: []string{"ns1"}, Pods: []string{"ns1/a"}, Services: []string{"default/svc"}, ServiceAccounts: []string{"ns1/sa"}},
		},
		{
			name: "subdirectories, JSON, other extensions and hidden files",
			files: map[string]string{
				"a/b/pod.yml":     podA,
				"c/pod.json":      `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "ns2"}}`,
				"notes.txt":       "not: [valid",
				".hidden.yaml":    "not: [valid",
				".git/x.yaml":     "not: [valid",
				"a/.swp/pod.yaml": "not: [valid",
			},
			want: summary{Pods: []string{"ns1/a", "ns2/j"}},
		},
		{
			name: "bad YAML reports the file line and skips the whole file",
			files: map[string]string{
				"good.yaml": podA,
				"bad.yaml": `apiVersion: v1
kind: Namespace
metadata:
  name: fine
---
apiVersion: v1
kind: Pod
metadata:
  name: broken
  labels: [unclosed
`,
			},
			want:     summary{Pods: []string{"ns1/a"}},
			wantErrs: []wantErr{{file: "bad.yaml", line: 10, contains: "yaml: did not find expected ',' or ']'"}},
		},
		{
			// The parser reports the last good line of the mapping it was
			// reading, offset here by the document's start.
			name: "bad indentation in a later document",
			files: map[string]string{"bad.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n" + `apiVersion: v1
kind: Pod
metadata:
  name: x
 spec: {}
`},
			wantErrs: []wantErr{{file: "bad.yaml", line: 8, contains: "yaml: did not find expected key"}},
		},
		{
			name: "unknown field names the field and its line",
			files: map[string]string{"pod.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: app
    image: app
    portz:
    - containerPort: 80
`},
			wantErrs: []wantErr{{file: "pod.yaml", line: 9, contains: `unknown field "spec.containers[0].portz"`}},
		},
		{
			name: "duplicate field",
			files: map[string]string{"pod.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: p
  name: q
`},
			wantErrs: []wantErr{{file: "pod.yaml", line: 5, contains: `key "name" already set in map`}},
		},
		{
			name: "wrong type names the field",
			files: map[string]string{"pod.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: app
    ports:
    - containerPort: eighty
`},
			wantErrs: []wantErr{{file: "pod.yaml", line: 9, contains: "containerPort"}},
		},
		{
			// Issue 9 item 3: an IP that is no IP is an error of its file,
			// not a pod silently left out of the mesh.
			name: "invalid pod IPs name the value and its line",
			files: map[string]string{
				"good.yaml": podA,
				"podip.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: ns1
status:
  phase: Running
  podIP: 999.1.1.1
`,
				"podips.yaml": `apiVersion: v1
kind: Namespace
metadata: {name: fine}
---
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: ns1}
status:
  podIP: 10.0.0.7
  podIPs:
  - ip: 10.0.0.7
  - ip: fd00::zz
`,
			},
			want: summary{Pods: []string{"ns1/a"}},
			wantErrs: []wantErr{
				{file: "podip.yaml", line: 8, contains: `pod ns1/p: status.podIP "999.1.1.1" is not an IP address`},
				{file: "podips.yaml", line: 12, contains: `pod ns1/q: status.podIPs[1].ip "fd00::zz" is not an IP address`},
			},
		},
		{
			name: "missing kind, apiVersion and name",
			files: map[string]string{
				"nokind.yaml":    "apiVersion: v1\nmetadata: {name: x}\n",
				"noversion.yaml": "kind: Pod\nmetadata: {name: x}\n",
				"noname.yaml":    "podA: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
				"pod.yaml":       "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
				"list.yaml":      "- a\n- b\n",
			},
			wantErrs: []wantErr{
				{file: "list.yaml", line: 1, contains: "not an object"},
				{file: "nokind.yaml", line: 1, contains: "no kind"},
				{file: "noname.yaml", line: 1, contains: "no kind"},
				{file: "noversion.yaml", line: 1, contains: "no apiVersion"},
				{file: "pod.yaml", line: 5, contains: "Pod has no metadata.name"},
			},
		},
		{
			name: "unknown kinds are kept raw",
			files: map[string]string{"k.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: route}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
`},
			want: summary{Raw: []string{"Deployment ns1/d", "TLSRoute /route", "ConfigMap /cm"}},
		},
		{
			name: "duplicates across files name both; the first is kept",
			files: map[string]string{
				"a.yaml": podA,
				"b.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n" + podA,
				"c.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: d}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: default}\n",
			},
			want: summary{Pods: []string{"ns1/a", "default/d"}, Namespaces: []string{"x"}},
			wantErrs: []wantErr{
				{contains: "duplicate Pod ns1/a: defined in "},
				{contains: "duplicate Pod default/d: defined in "},
			},
		},
		{
			name: "node tokens from data (base64) and stringData",
			files: map[string]string{"tokens.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: ztunnel-node-tokens
  namespace: istio-system
data:
  node-1: dG9rZW4tMQ==
  node-3: c2hhcmVk
stringData:
  node-2: token-2
  node-4: shared
  node-5: ""
---
apiVersion: v1
kind: Secret
metadata:
  name: other
stringData:
  node-9: token-9
`},
			want: summary{
				Secrets:    []string{"istio-system/ztunnel-node-tokens", "default/other"},
				NodeTokens: map[string]string{"token-1": "node-1", "token-2": "node-2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			snap, errs := Load(dir)
			if diff := cmp.Diff(tt.want, summarize(snap)); diff != "" {
				t.Errorf("Load() snapshot mismatch (-want +got):\n%s", diff)
			}
			checkErrors(t, errs, tt.wantErrs)
		})
	}
}

func checkErrors(t *testing.T, errs []error, want []wantErr) {
	t.Helper()
	if len(errs) != len(want) {
		t.Fatalf("got %d errors %v, want %d", len(errs), errs, len(want))
	}
	for i, w := range want {
		err := errs[i]
		if !strings.Contains(err.Error(), w.contains) {
			t.Errorf("error %d = %q, want it to contain %q", i, err, w.contains)
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			if w.file != "" {
				t.Errorf("error %d = %v (%T), want a *ParseError", i, err, err)
			}
			continue
		}
		if got := filepath.Base(pe.File); got != w.file || pe.Line != w.line {
			t.Errorf("error %d at %s:%d, want %s:%d (%v)", i, got, pe.Line, w.file, w.line, err)
		}
	}
}

func TestLoadExample(t *testing.T) {
	snap, errs := Load("testdata/example")
	if len(errs) != 0 {
		t.Fatalf("Load(testdata/example) errors: %v", errs)
	}
	want := summary{
		Namespaces:            []string{"istio-system", "demo"},
		Pods:                  []string{"demo/echo-5d8f7c9b4-x2x9q", "default/sleep"},
		Services:              []string{"demo/echo"},
		ServiceAccounts:       []string{"demo/echo"},
		Nodes:                 []string{"node-1", "node-2"},
		Secrets:               []string{"istio-system/ztunnel-node-tokens"},
		AuthorizationPolicies: []string{"demo/echo-allow-demo"},
		NodeTokens:            map[string]string{"node-1-token": "node-1", "node-2-token": "node-2"},
	}
	if diff := cmp.Diff(want, summarize(snap)); diff != "" {
		t.Errorf("Load(testdata/example) mismatch (-want +got):\n%s", diff)
	}
	// Typed fields survive decoding.
	echo := snap.Inputs.Pods[0]
	if echo.Status.PodIPs[0].IP != "127.0.10.1" || echo.Spec.Containers[0].Ports[0].ContainerPort != 8080 {
		t.Errorf("echo pod decoded as %+v", echo)
	}
	if got := snap.Inputs.Services[0].Spec.Ports[0].TargetPort.StrVal; got != "http" {
		t.Errorf("echo service targetPort = %q, want %q", got, "http")
	}
}

func TestLoadMissingDir(t *testing.T) {
	snap, errs := Load(filepath.Join(t.TempDir(), "missing"))
	if len(errs) != 1 || !errors.Is(errs[0], os.ErrNotExist) {
		t.Errorf("Load(missing) errors = %v, want one wrapping os.ErrNotExist", errs)
	}
	if snap == nil || snap.Inputs == nil {
		t.Errorf("Load(missing) snapshot = %v, want an empty one", snap)
	}
}
