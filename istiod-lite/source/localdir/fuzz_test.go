package localdir

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// fuzzFile is the name every fuzzed input is parsed under.
const fuzzFile = "name.yaml"

// maxFuzzFile bounds the input so that one input stays fast; the YAML
// parser's cost grows with the document.
const maxFuzzFile = 16 << 10

// FuzzParse feeds arbitrary bytes to parseFile as one file of the config
// directory. Property: no panic; either objects and no error, or an error
// and no objects (a half-parsed file yields nothing); every error is a
// *ParseError of the file whose position ("name.yaml:<line>: ") is a line
// of the file or the end of the file (1 ≤ line ≤ lines in the file + 1,
// lines counted as YAML counts them);
// every object has a kind, a
// name and a document line within the file, and every decoded namespaced
// kind has a namespace; parsing again with the documents of the first parse
// as the cache gives the same objects.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{
		"../../../examples/local/*.yaml",
		"testdata/example/*.yaml",
		"testdata/example/*/*.yaml",
		"testdata/example/*/*.json",
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, name := range files {
			data, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	for _, s := range []string{
		// A Namespace, a Pod with status.podIP, a Service, multi-document
		// with comments and empty documents.
		"# leading comment\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns1\n  labels: {istio.io/dataplane-mode: ambient}\n---\n---   # empty document\n" +
			podA + "--- \napiVersion: v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: ns1}\n",
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\nstatus:\n  phase: Running\n  podIP: 10.0.0.7\n  podIPs:\n  - ip: 10.0.0.7\n  - ip: fd00::7\n",
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nstatus:\n  podIP: 999.1.1.1\n",
		`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "ns2"}}`,
		// Broken YAML and bad indentation in a later document.
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n  labels: [unclosed\n",
		"apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n spec: {}\n",
		// Unknown, duplicate and mistyped fields.
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app\n    portz:\n    - containerPort: 80\n",
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  name: q\n",
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    ports:\n    - containerPort: eighty\n",
		// Missing kind, apiVersion, name; not an object.
		"apiVersion: v1\nmetadata: {name: x}\n",
		"kind: Pod\nmetadata: {name: x}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {}\n",
		"- a\n- b\n",
		// Raw kinds.
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: ns1}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\n",
		// Gateway API kinds, valid and not.
		waypointYAML,
		routesYAML,
		"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules: [{backendRefs: [{name: x, weight: ten}]}]\n",
		"apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 0, protocol: HBONE}\n",
		// A Secret with node tokens.
		"apiVersion: v1\nkind: Secret\nmetadata:\n  name: ztunnel-node-tokens\n  namespace: istio-system\ndata:\n  node-1: dG9rZW4tMQ==\nstringData:\n  node-2: token-2\n  node-5: \"\"\n",
		"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  node-1: not base64!\n",
		// An AuthorizationPolicy and a PeerAuthentication, valid and not.
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-foo\n  namespace: demo\n  annotations:\n    istio.io/dry-run: \"false\"\nspec:\n  selector:\n    matchLabels:\n      app: echo\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"foo\"]\n        ipBlocks: [\"10.0.0.0/8\"]\n    to:\n    - operation:\n        ports: [\"8080\"]\n    when:\n    - key: source.ip\n      values: [\"10.1.0.0/16\"]\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad-action\nspec:\n  action: FORBID\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad-cidr\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks:\n        - 10.0.0.0/8\n        - 10.0.0.300/33\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: typo\nspec:\n  action: DENY\n  rulez: []\n",
		"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: pa\nspec:\n  selector:\n    matchLabels: {app: echo}\n  portLevelMtls:\n    \"8080\":\n      mode: DISABLE\n    \"70000\":\n      mode: STRICTER\n",
		"\r\n\r\n---\r\napiVersion: v1\r\nkind: Node\r\nmetadata: {name: n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzFile {
			t.Skip("input too large")
		}
		objs, err := parseFile(fuzzFile, data)
		lines := yamlLines(data)
		if err != nil {
			if objs != nil {
				t.Fatalf("parseFile() = %d objects and error %v, want no objects with an error", len(objs), err)
			}
			checkParseError(t, err, lines)
			return
		}
		for _, o := range objs {
			checkObject(t, o, lines)
		}

		// The cache of a parse reproduces it.
		_, cache, _ := parseFileCached(fuzzFile, data, nil)
		again, _, err := parseFileCached(fuzzFile, data, cache)
		if err != nil {
			t.Fatalf("parseFileCached() with its own cache: %v, want no error", err)
		}
		if got, want := objectSummary(again), objectSummary(objs); got != want {
			t.Fatalf("parseFileCached() with its own cache = %s, want %s", got, want)
		}
	})
}

// checkParseError checks that err is positional within a file of lines
// lines.
func checkParseError(t *testing.T, err error, lines int) {
	t.Helper()
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("parseFile() error %T %v, want a *ParseError", err, err)
	}
	if pe.File != fuzzFile {
		t.Fatalf("ParseError.File = %q, want %q", pe.File, fuzzFile)
	}
	// The YAML parser places an unexpected end of stream on the line after
	// the last one.
	if pe.Line < 1 || pe.Line > lines+1 {
		t.Fatalf("ParseError.Line = %d, want within the file's lines 1..%d or the end (%v)", pe.Line, lines, err)
	}
	if prefix := fmt.Sprintf("%s:%d: ", fuzzFile, pe.Line); !strings.HasPrefix(err.Error(), prefix) {
		t.Fatalf("parseFile() error = %q, want prefix %q", err, prefix)
	}
	if pe.Err == nil || pe.Err.Error() == "" {
		t.Fatalf("ParseError %q has no message", err)
	}
}

// checkObject checks one parsed object of a file of lines lines.
func checkObject(t *testing.T, o object, lines int) {
	t.Helper()
	if o.key.kind == "" || o.key.apiVersion == "" || o.key.name == "" {
		t.Fatalf("object %+v lacks a kind, apiVersion or name", o.key)
	}
	if o.line < 1 || o.line > lines {
		t.Fatalf("object %v at line %d, want within 1..%d", o.key, o.line, lines)
	}
	switch obj := o.obj.(type) {
	case nil:
		t.Fatalf("object %v has no value", o.key)
	case *RawObject:
		if obj.Kind != o.key.kind || obj.Name != o.key.name || obj.File != fuzzFile || obj.Line != o.line || len(obj.JSON) == 0 {
			t.Fatalf("raw object %+v does not match its key %v at line %d", obj, o.key, o.line)
		}
	case *corev1.Namespace, *corev1.Node, *gatewayv1.GatewayClass:
		if o.key.namespace != "" {
			t.Fatalf("cluster-scoped %v has namespace %q", o.key, o.key.namespace)
		}
	case *corev1.Pod:
		if obj.Namespace == "" || obj.Namespace != o.key.namespace {
			t.Fatalf("pod %v has namespace %q", o.key, obj.Namespace)
		}
		if err := validatePodIPs(obj); err != nil {
			t.Fatalf("pod %v accepted with %v", o.key, err)
		}
	default:
		if o.key.namespace == "" {
			t.Fatalf("namespaced %v (%T) has no namespace", o.key, o.obj)
		}
	}
}

// yamlLines counts the lines of data as the YAML parser does: it breaks
// lines on "\r\n", "\n", a lone "\r", NEL, LS and PS, where the document
// splitter breaks on "\n" only; an error may name a line of either count.
func yamlLines(data []byte) int {
	n := 1
	for i := 0; i < len(data); i++ {
		switch {
		case data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n':
			n++
			i++
		case data[i] == '\r' || data[i] == '\n':
			n++
		case bytes.HasPrefix(data[i:], []byte("\u0085")), bytes.HasPrefix(data[i:], []byte("\u2028")), bytes.HasPrefix(data[i:], []byte("\u2029")):
			n++
		}
	}
	return n
}

func objectSummary(objs []object) string {
	var b strings.Builder
	for _, o := range objs {
		fmt.Fprintf(&b, "%v@%d:%T;", o.key, o.line, o.obj)
	}
	return b.String()
}
