package localdir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// policyKinds are the security.istio.io kinds decoded into the typed
// istio.io/client-go structs. v1beta1 has the same schema as v1.
var policyKinds = map[string]bool{model.KindAuthorizationPolicy: true, model.KindPeerAuthentication: true}

func isPolicy(apiVersion, kind string) bool {
	return (apiVersion == "security.istio.io/v1" || apiVersion == "security.istio.io/v1beta1") && policyKinds[kind]
}

// policyEnvelope is a policy object with its spec kept raw, for strict
// decoding: the envelope with encoding/json (unknown fields rejected), the
// spec with protojson (unknown fields and enum values rejected).
type policyEnvelope struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       json.RawMessage   `json:"spec"`
	Status     json.RawMessage   `json:"status"`
}

var strictSpec = protojson.UnmarshalOptions{}

// decodePolicy decodes and validates an AuthorizationPolicy or
// PeerAuthentication; an invalid one is an error of its document, so its
// file keeps its last good version.
func decodePolicy(doc document, js []byte, kind string) (any, error) {
	var env policyEnvelope
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", kind, err)
	}
	if env.Metadata.Namespace == "" {
		env.Metadata.Namespace = DefaultNamespace
	}
	spec := []byte(env.Spec)
	if len(bytes.TrimSpace(spec)) == 0 || bytes.Equal(bytes.TrimSpace(spec), []byte("null")) {
		spec = []byte("{}")
	}
	var obj any
	var msg proto.Message
	switch kind {
	case model.KindAuthorizationPolicy:
		p := &securityv1.AuthorizationPolicy{TypeMeta: metav1.TypeMeta{APIVersion: env.APIVersion, Kind: kind}, ObjectMeta: env.Metadata}
		obj, msg = p, &p.Spec
	default:
		p := &securityv1.PeerAuthentication{TypeMeta: metav1.TypeMeta{APIVersion: env.APIVersion, Kind: kind}, ObjectMeta: env.Metadata}
		obj, msg = p, &p.Spec
	}
	if err := strictSpec.Unmarshal(spec, msg); err != nil {
		return nil, fmt.Errorf("%s %s spec: %s", kind, env.Metadata.Name, protoErrorMessage(err))
	}
	var err error
	switch p := obj.(type) {
	case *securityv1.AuthorizationPolicy:
		err = model.ValidateAuthorizationPolicy(p)
	case *securityv1.PeerAuthentication:
		err = model.ValidatePeerAuthentication(p)
	}
	if err != nil {
		return nil, fmt.Errorf("invalid %s %s: %w", kind, env.Metadata.Name, err)
	}
	return obj, nil
}

var protoPosition = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

// protoErrorMessage drops protojson's prefix and its JSON position, which
// would not match the YAML the user wrote.
func protoErrorMessage(err error) string {
	return protoPosition.ReplaceAllString(strings.ReplaceAll(err.Error(), "\u00a0", " "), "")
}

var (
	quotedValue = regexp.MustCompile(`"([^"]+)"`)
	enumField   = regexp.MustCompile(`enum (?:field )?(?:[\w.]+\.)?(\w+)`)
)

// policyErrorLine finds the line of a policy error: the first line holding
// a value the message quotes, else one defining the field it names, else
// the document's first line.
func policyErrorLine(doc document, err error) int {
	lines := strings.Split(string(doc.data), "\n")
	msg := err.Error()
	var ve interface{ Unwrap() []error }
	if errors.As(err, &ve) && len(ve.Unwrap()) > 0 {
		msg = ve.Unwrap()[0].Error()
	}
	for _, m := range quotedValue.FindAllStringSubmatch(msg, -1) {
		for i, l := range lines {
			if strings.Contains(l, m[1]) && !strings.HasPrefix(strings.TrimSpace(l), "#") {
				return doc.line + i
			}
		}
	}
	if m := enumField.FindStringSubmatch(msg); m != nil {
		def := regexp.MustCompile(`^\s*(?:-\s+)?["']?` + regexp.QuoteMeta(m[1]) + `["']?\s*:`)
		for i, l := range lines {
			if def.MatchString(l) {
				return doc.line + i
			}
		}
	}
	return fieldLine(doc, err)
}
