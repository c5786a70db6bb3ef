package cli

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/pkg/state"
)

// labelSource reads the labels of the objects that choose a waypoint.
type labelSource interface {
	// labels returns the labels of kind (Namespace, Service, Pod)
	// namespace/name; ok is false when the object cannot be read.
	labels(ctx context.Context, kind, namespace, name string) (map[string]string, bool)
}

// noLabels is the source when no objects are readable.
type noLabels struct{}

func (noLabels) labels(context.Context, string, string, string) (map[string]string, bool) {
	return nil, false
}

type kubeLabels struct{ kc *kubeClient }

func (k *kubeLabels) labels(ctx context.Context, kind, namespace, name string) (map[string]string, bool) {
	var (
		m   metav1.Object
		err error
	)
	switch kind {
	case "Namespace":
		m, err = k.kc.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	case "Service":
		m, err = k.kc.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	case "Pod":
		m, err = k.kc.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	default:
		return nil, false
	}
	if err != nil {
		return nil, false
	}
	return m.GetLabels(), true
}

// dirLabels are the labels of the objects of a local config directory.
type dirLabels map[string]map[string]string // kind/namespace/name → labels

func (d dirLabels) labels(_ context.Context, kind, namespace, name string) (map[string]string, bool) {
	if kind == "Namespace" {
		namespace = ""
	}
	l, ok := d[kind+"/"+namespace+"/"+name]
	return l, ok
}

// loadDirLabels reads every YAML document under dir (as istiod-lite's
// local mode does, recursively) and keeps the labels of Namespaces,
// Services and Pods.
func loadDirLabels(dir string) (dirLabels, error) {
	out := dirLabels{}
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var obj struct {
				Kind     string            `json:"kind"`
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if yaml.Unmarshal(doc, &obj) != nil {
				continue // istiod-lite reports broken files; explain reads what it can
			}
			switch obj.Kind {
			case "Namespace", "Service", "Pod":
				ns := obj.Metadata.Namespace
				if obj.Kind == "Namespace" {
					ns = ""
				} else if ns == "" {
					ns = "default"
				}
				out[obj.Kind+"/"+ns+"/"+obj.Metadata.Name] = obj.Metadata.Labels
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading --config-dir: %w", err)
	}
	return out, nil
}

// whyWaypoint names the label that gave kind namespace/name (a Service or
// a Pod) its waypoint ref: the object's own istio.io/use-waypoint wins over
// its namespace's, as in Istio.
func whyWaypoint(ctx context.Context, src labelSource, kind, namespace, name string, ref *state.GatewayAddress) string {
	describe := func(objKind, objName string, l map[string]string) string {
		s := fmt.Sprintf("label %s=%s on %s %s", labelUseWaypoint, l[labelUseWaypoint], objKind, objName)
		if ns := l[labelUseWaypointNS]; ns != "" {
			s += fmt.Sprintf(" (with %s=%s)", labelUseWaypointNS, ns)
		}
		return s
	}
	if l, ok := src.labels(ctx, kind, namespace, name); ok {
		if l[labelUseWaypoint] != "" {
			return describe(kind, namespace+"/"+name, l)
		}
		if nl, ok := src.labels(ctx, "Namespace", "", namespace); ok && nl[labelUseWaypoint] != "" {
			return describe("Namespace", namespace, nl)
		}
	}
	return fmt.Sprintf("istiod-lite gave %s %s/%s the waypoint %s (from %s on the %s or its Namespace; the objects are not readable here: in local mode give --config-dir)", kind, namespace, name, ref, labelUseWaypoint, kind)
}
