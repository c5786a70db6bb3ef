package localdir

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/yaml"
)

// ParseError is a file that could not be read as Kubernetes objects. Line is
// 1-based: the line the parser reports, or the line where the failing
// document starts when the parser gives none.
type ParseError struct {
	File string
	Line int
	Err  error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// RawObject is an object of a kind this package does not decode yet (for
// example a TLSRoute), kept as JSON for the readers of later kinds.
type RawObject struct {
	APIVersion string
	Kind       string
	Namespace  string // as written; not defaulted, since the scope of the kind is unknown
	Name       string
	File       string
	Line       int    // line where the object's document starts
	JSON       []byte // the whole object
}

// object is one decoded document of a file.
type object struct {
	key  objectKey
	line int
	obj  any // *corev1.Namespace, *corev1.Pod, ..., or *RawObject
}

// objectKey identifies an object for duplicate detection.
type objectKey struct {
	apiVersion, kind, namespace, name string
}

func (k objectKey) String() string {
	if k.namespace == "" {
		return k.kind + " " + k.name
	}
	return k.kind + " " + k.namespace + "/" + k.name
}

// decoder turns the JSON of a core/v1 object into its typed struct,
// rejecting unknown and duplicate fields.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err) // static registration; cannot fail
	}
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		panic(err) // static registration; cannot fail
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Strict: true})
}()

// clusterScoped are the decoded kinds that have no namespace.
var clusterScoped = map[string]bool{"Namespace": true, "Node": true}

// decodedKinds are the core/v1 kinds this package decodes into typed structs.
var decodedKinds = map[string]bool{
	"Namespace": true, "ServiceAccount": true, "Pod": true, "Service": true, "Node": true, "Secret": true,
}

// parseFile splits data into YAML documents and decodes each. Any failing
// document fails the whole file, so that a half-written file never yields
// part of its objects.
func parseFile(file string, data []byte) ([]object, error) {
	objs, _, err := parseFileCached(file, data, nil)
	return objs, err
}

// docSum identifies a document's content.
type docSum [sha256.Size]byte

// parseFileCached is parseFile reusing the decoded objects of documents
// whose content is in prev (the documents of the file's previous good
// version), so that an edit decodes only the documents it changed. It
// returns the documents of this version for the next call. Decoded objects
// are shared between versions and must be treated as read-only.
func parseFileCached(file string, data []byte, prev map[docSum]object) ([]object, map[docSum]object, error) {
	var objs []object
	docs := splitDocuments(data)
	next := make(map[docSum]object, len(docs))
	for _, doc := range docs {
		sum := docSum(sha256.Sum256(doc.data))
		if o, ok := prev[sum]; ok {
			if raw, isRaw := o.obj.(*RawObject); !isRaw || raw.Line == doc.line {
				o.line = doc.line
				next[sum] = o
				objs = append(objs, o)
				continue
			}
		}
		o, err := parseDocument(file, doc)
		if err != nil {
			return nil, nil, err
		}
		if o != nil {
			next[sum] = *o
			objs = append(objs, *o)
		}
	}
	return objs, next, nil
}

// document is one YAML document of a file and the file line it starts on.
type document struct {
	line int
	data []byte
}

// splitDocuments splits a stream on "---" separator lines.
func splitDocuments(data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start, n := 1, 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if isSeparator(line) {
			docs = append(docs, document{line: start, data: bytes.Clone(cur.Bytes())})
			cur.Reset()
			start = n + 1
			continue
		}
		cur.Write(line)
		cur.WriteByte('\n')
	}
	return append(docs, document{line: start, data: cur.Bytes()})
}

func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(line[3:])
	return len(rest) == 0 || rest[0] == '#'
}

// typeAndMeta are the fields read before choosing how to decode an object.
type typeAndMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// parseDocument decodes one document; it returns nil for an empty one.
func parseDocument(file string, doc document) (*object, error) {
	js, err := yaml.YAMLToJSONStrict(doc.data)
	if err != nil {
		line, msg := yamlErrorLine(err)
		return nil, &ParseError{File: file, Line: doc.line + max(line, 1) - 1, Err: errors.New(msg)}
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil // empty document or only comments
	}
	fail := func(err error) error {
		return &ParseError{File: file, Line: fieldLine(doc, err), Err: err}
	}
	if !bytes.HasPrefix(bytes.TrimSpace(js), []byte("{")) {
		return nil, fail(errors.New("document is not an object"))
	}
	var tm typeAndMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, fail(fmt.Errorf("reading apiVersion, kind and metadata: %w", err))
	}
	switch {
	case tm.Kind == "":
		return nil, fail(errors.New("object has no kind"))
	case tm.APIVersion == "":
		return nil, fail(errors.New("object has no apiVersion"))
	case tm.Metadata.Name == "":
		return nil, fail(fmt.Errorf("%s has no metadata.name", tm.Kind))
	}
	key := objectKey{apiVersion: tm.APIVersion, kind: tm.Kind, namespace: tm.Metadata.Namespace, name: tm.Metadata.Name}

	if isPolicy(tm.APIVersion, tm.Kind) {
		obj, err := decodePolicy(doc, js, tm.Kind)
		if err != nil {
			return nil, &ParseError{File: file, Line: policyErrorLine(doc, err), Err: err}
		}
		if key.namespace == "" {
			key.namespace = DefaultNamespace
		}
		return &object{key: key, line: doc.line, obj: obj}, nil
	}
	if isGatewayKind(tm.APIVersion, tm.Kind) {
		obj, err := decodeGatewayKind(js, tm.Kind)
		if err != nil {
			return nil, &ParseError{File: file, Line: policyErrorLine(doc, err), Err: err}
		}
		if tm.Kind == "GatewayClass" {
			key.namespace = ""
		} else if key.namespace == "" {
			key.namespace = DefaultNamespace
		}
		return &object{key: key, line: doc.line, obj: obj}, nil
	}
	if isRouteKind(tm.APIVersion, tm.Kind) {
		obj, err := decodeRouteKind(js, tm.Kind)
		if err != nil {
			return nil, &ParseError{File: file, Line: policyErrorLine(doc, err), Err: err}
		}
		if key.namespace == "" {
			key.namespace = DefaultNamespace
		}
		return &object{key: key, line: doc.line, obj: obj}, nil
	}
	gvk := schema.GroupVersionKind{Version: "v1", Kind: tm.Kind}
	if tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice" {
		gvk.Group = "discovery.k8s.io" // Services without selector (model/endpointslice.go)
	} else if tm.APIVersion != "v1" || !decodedKinds[tm.Kind] {
		return &object{key: key, line: doc.line, obj: &RawObject{
			APIVersion: tm.APIVersion, Kind: tm.Kind, Namespace: tm.Metadata.Namespace, Name: tm.Metadata.Name,
			File: file, Line: doc.line, JSON: js,
		}}, nil
	}
	obj, _, err := decoder.Decode(js, &gvk, nil)
	if err != nil {
		return nil, fail(fmt.Errorf("decoding %s %s: %w", tm.Kind, tm.Metadata.Name, err))
	}
	if clusterScoped[tm.Kind] {
		key.namespace = ""
	} else if key.namespace == "" {
		key.namespace = DefaultNamespace
	}
	m, ok := obj.(interface{ SetNamespace(string) })
	if !ok {
		return nil, fail(fmt.Errorf("decoding %s %s: unexpected type %T", tm.Kind, tm.Metadata.Name, obj))
	}
	m.SetNamespace(key.namespace)
	if pod, ok := obj.(*corev1.Pod); ok {
		if err := validatePodIPs(pod); err != nil {
			return nil, &ParseError{File: file, Line: policyErrorLine(doc, err), Err: err}
		}
	}
	return &object{key: key, line: doc.line, obj: obj}, nil
}

// validatePodIPs checks that a pod's status.podIP and status.podIPs are IP
// addresses: the model would otherwise leave the pod out of the mesh
// without a word. The error quotes the value, for policyErrorLine.
func validatePodIPs(pod *corev1.Pod) error {
	bad := func(field, ip string) error {
		return fmt.Errorf("pod %s/%s: %s %q is not an IP address", pod.Namespace, pod.Name, field, ip)
	}
	if ip := pod.Status.PodIP; ip != "" {
		if _, err := netip.ParseAddr(ip); err != nil {
			return bad("status.podIP", ip)
		}
	}
	for i, p := range pod.Status.PodIPs {
		if _, err := netip.ParseAddr(p.IP); err != nil {
			return bad(fmt.Sprintf("status.podIPs[%d].ip", i), p.IP)
		}
	}
	return nil
}

// DefaultNamespace is the namespace of namespaced objects written without one.
const DefaultNamespace = "default"

var yamlLine = regexp.MustCompile(`line (\d+): `)

// yamlErrorLine extracts the document-relative line of a YAML error (0 when
// the error names none) and the message without line numbers, which would
// be relative to the document rather than the file.
func yamlErrorLine(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	msg = yamlLine.ReplaceAllString(msg, "")
	return line, strings.Join(strings.Fields(msg), " ")
}

var (
	unknownField = regexp.MustCompile(`unknown field "(?:[^"]*\.)?([^".\[\]]+)(?:\[\d+\])*"`)
	typeField    = regexp.MustCompile(`Go struct field [^ ]*?\.?([A-Za-z0-9_-]+) of type`)
)

// fieldLine guesses the line of a decoding error: the first line of the
// document that defines the field the error names, else the document's
// first line.
func fieldLine(doc document, err error) int {
	var field string
	if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
		field = m[1]
	} else if m := typeField.FindStringSubmatch(err.Error()); m != nil {
		field = m[1]
	}
	if field != "" {
		def := regexp.MustCompile(`^\s*(?:-\s+)?["']?` + regexp.QuoteMeta(field) + `["']?\s*:`)
		for i, line := range strings.Split(string(doc.data), "\n") {
			if def.MatchString(line) {
				return doc.line + i
			}
		}
	}
	return doc.line
}
