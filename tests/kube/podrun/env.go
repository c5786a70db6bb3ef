package podrun

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/tests/kube"
)

// errOptionalMissing marks an optional ConfigMap, Secret or key that is
// absent: the variable or file is left out.
var errOptionalMissing = errors.New("optional source missing")

// objects reads the ConfigMaps and Secrets a container refers to; an
// absent object is an error wrapping errNotFound.
type objects interface {
	configMap(ctx context.Context, namespace, name string) (map[string]string, error)
	secret(ctx context.Context, namespace, name string) (map[string][]byte, error)
}

var errNotFound = errors.New("not found")

// command is the process's argv as Kubernetes derives it from the image
// and the container: the container's command replaces the image's
// Entrypoint and drops its Cmd; the container's args replace Cmd. $(VAR)
// references are expanded with vars.
func command(ctr corev1.Container, entrypoint, cmd []string, vars map[string]string) ([]string, error) {
	var argv []string
	switch {
	case len(ctr.Command) > 0:
		argv = append(slices.Clone(ctr.Command), ctr.Args...)
	case len(ctr.Args) > 0:
		argv = append(slices.Clone(entrypoint), ctr.Args...)
	default:
		argv = append(slices.Clone(entrypoint), cmd...)
	}
	if len(argv) == 0 {
		return nil, errors.New("no command: the image has no Entrypoint or Cmd and the container sets none")
	}
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = kube.ExpandVars(a, vars)
	}
	return out, nil
}

// fieldValues are the downward API fields a variable may reference.
func fieldValues(pod *corev1.Pod, podIP, hostIP string) map[string]string {
	f := map[string]string{
		"metadata.name":           pod.Name,
		"metadata.namespace":      pod.Namespace,
		"metadata.uid":            string(pod.UID),
		"spec.nodeName":           pod.Spec.NodeName,
		"spec.serviceAccountName": pod.Spec.ServiceAccountName,
		"status.podIP":            podIP,
		"status.hostIP":           hostIP,
	}
	for k, v := range pod.Labels {
		f["metadata.labels['"+k+"']"] = v
	}
	for k, v := range pod.Annotations {
		f["metadata.annotations['"+k+"']"] = v
	}
	return f
}

// containerEnv is the container's environment as the kubelet computes it,
// in order: the image's variables, the kubelet's (HOSTNAME, the API
// server's service variables), envFrom, then env (whose $(VAR) references
// see every variable before them). A later variable of the same name
// replaces an earlier one in place.
func containerEnv(ctx context.Context, pod *corev1.Pod, ctr corev1.Container, image []string, base map[string]string, fields map[string]string, objs objects) ([]string, map[string]string, error) {
	var order []string
	vars := map[string]string{}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, e := range image {
		k, v, _ := strings.Cut(e, "=")
		set(k, v)
	}
	for _, k := range sortedKeys(base) {
		set(k, base[k])
	}
	for _, from := range ctr.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			data, err := objs.configMap(ctx, pod.Namespace, from.ConfigMapRef.Name)
			if errors.Is(err, errNotFound) && optional(from.ConfigMapRef.Optional) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("envFrom ConfigMap %s: %w", from.ConfigMapRef.Name, err)
			}
			for _, k := range sortedKeys(data) {
				set(from.Prefix+k, data[k])
			}
		case from.SecretRef != nil:
			data, err := objs.secret(ctx, pod.Namespace, from.SecretRef.Name)
			if errors.Is(err, errNotFound) && optional(from.SecretRef.Optional) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("envFrom Secret %s: %w", from.SecretRef.Name, err)
			}
			for _, k := range sortedKeys(data) {
				set(from.Prefix+k, string(data[k]))
			}
		}
	}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			set(e.Name, kube.ExpandVars(e.Value, vars))
			continue
		}
		v, err := valueFrom(ctx, pod.Namespace, e.ValueFrom, fields, objs)
		if errors.Is(err, errOptionalMissing) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, v)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, vars, nil
}

func valueFrom(ctx context.Context, namespace string, src *corev1.EnvVarSource, fields map[string]string, objs objects) (string, error) {
	switch {
	case src.FieldRef != nil:
		v, ok := fields[src.FieldRef.FieldPath]
		if !ok {
			return "", fmt.Errorf("field %s is not supported", src.FieldRef.FieldPath)
		}
		return v, nil
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		data, err := objs.configMap(ctx, namespace, ref.Name)
		if errors.Is(err, errNotFound) && optional(ref.Optional) {
			return "", errOptionalMissing
		}
		if err != nil {
			return "", fmt.Errorf("ConfigMap %s: %w", ref.Name, err)
		}
		v, ok := data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", errOptionalMissing
			}
			return "", fmt.Errorf("ConfigMap %s has no key %q", ref.Name, ref.Key)
		}
		return v, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		data, err := objs.secret(ctx, namespace, ref.Name)
		if errors.Is(err, errNotFound) && optional(ref.Optional) {
			return "", errOptionalMissing
		}
		if err != nil {
			return "", fmt.Errorf("Secret %s: %w", ref.Name, err)
		}
		v, ok := data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", errOptionalMissing
			}
			return "", fmt.Errorf("Secret %s has no key %q", ref.Name, ref.Key)
		}
		return string(v), nil
	default:
		return "", errors.New("only fieldRef, configMapKeyRef and secretKeyRef are supported")
	}
}

func optional(b *bool) bool { return b != nil && *b }

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
