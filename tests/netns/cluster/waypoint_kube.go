package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/tests/kube"
)

// Bounds of the kubelet's work for a waypoint pod.
const (
	// volumeTimeout bounds the wait for a ConfigMap a volume mounts (the
	// kubelet keeps the pod ContainerCreating until it exists).
	volumeTimeout = 30 * time.Second
	// startupTimeout bounds the wait for the readiness endpoint (Istio's
	// start-up probe allows 30 failures a second apart).
	startupTimeout = 30 * time.Second
)

// RunWaypointPod runs, on the node, the pod of a waypoint Deployment that
// istiod-lite's deployer wrote (Options.Kube), as a kubelet and its
// container runtime would; it is meant to be called from kube.Config.RunPod
// for pods labelled gateway.networking.k8s.io/gateway-name. It:
//
//   - creates the pod's sandbox (Node.NewSandbox), publishes its address
//     with the pod unready, and hands it to the CNI plugin (Pod.Attach;
//     the node's ztunnel leaves it alone: the pod template says
//     istio.io/dataplane-mode: none);
//   - routes the pod to istiod-lite in the underlay (Pod.RouteUnderlay);
//   - materializes the pod's volumes in a directory of the host: a
//     projected ServiceAccount token is made with `kubectl create token
//     <sa> --audience <aud> --bound-object-kind Pod --bound-object-name
//     <pod>` (the projection's audience and expiry), a ConfigMap volume
//     holds the ConfigMap's keys (istio-ca-root-cert: the mesh root);
//   - runs the waypoint binary in the pod's namespace with the container's
//     arguments and environment: downward API values (pod name, namespace,
//     IP, service account, node) and $(VAR) references expanded as the
//     kubelet does, and each volume mount's path replaced by the volume's
//     directory (the only rewrite: the process has no mount namespace of
//     its own); the xDS address is the Deployment's, which istiod-lite
//     writes as its underlay address in this topology;
//   - polls the container's startup (else readiness) probe from inside the
//     pod and, once it answers 200, sets the pod Ready.
//
// A container command, a volume or a field reference it does not know is
// an error, so that a Deployment the harness cannot run faithfully fails
// the test rather than running something else. On error, what was made is
// removed. The Waypoint is among the cluster's (its teardown stops it);
// call Delete when the API server deletes the pod (kube.Config.StopPod).
func (n *Node) RunWaypointPod(ctx context.Context, kc *kube.Cluster, pod *corev1.Pod) (*Waypoint, error) {
	c := n.c
	if c.opts.Kube == nil {
		return nil, errors.New("RunWaypointPod: cluster mode only (Options.Kube)")
	}
	gw := pod.Labels[model.LabelGatewayName]
	if gw == "" {
		return nil, fmt.Errorf("RunWaypointPod: pod %s/%s has no %s label", pod.Namespace, pod.Name, model.LabelGatewayName)
	}
	if len(pod.Spec.Containers) != 1 {
		return nil, fmt.Errorf("RunWaypointPod: pod %s/%s has %d containers, want the waypoint's one", pod.Namespace, pod.Name, len(pod.Spec.Containers))
	}
	if len(pod.Spec.Containers[0].Command) > 0 {
		return nil, fmt.Errorf("RunWaypointPod: pod %s/%s overrides the image's command (%q)", pod.Namespace, pod.Name, pod.Spec.Containers[0].Command)
	}
	bin, err := WaypointBinary()
	if err != nil {
		return nil, err
	}
	p, err := n.NewSandbox(PodSpec{
		Namespace: pod.Namespace, Name: pod.Name, ServiceAccount: pod.Spec.ServiceAccountName, Labels: pod.Labels, Unready: true,
	}, string(pod.UID))
	if err != nil {
		return nil, err
	}
	if err := kc.SetPodStatus(ctx, pod.Namespace, pod.Name, kube.PodStatus{IPs: []netip.Addr{p.IP}}); err != nil {
		return nil, errors.Join(fmt.Errorf("publishing the address of %s: %w", p.Key(), err), p.RemoveSandbox())
	}
	if err := p.Attach(); err != nil {
		return nil, err
	}
	w := &Waypoint{Spec: WaypointSpec{Namespace: pod.Namespace, Name: gw}, Pod: p, c: c}
	c.wpMu.Lock()
	c.waypoints = append(c.waypoints, w)
	c.wpMu.Unlock()
	if err := w.run(ctx, kc, pod, bin); err != nil {
		return nil, errors.Join(fmt.Errorf("waypoint pod %s: %w", p.Key(), err), w.Delete())
	}
	return w, nil
}

func (w *Waypoint) run(ctx context.Context, kc *kube.Cluster, pod *corev1.Pod, bin string) error {
	p, ctr := w.Pod, pod.Spec.Containers[0]
	if err := p.RouteUnderlay(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "waypoint-pod-")
	if err != nil {
		return err
	}
	w.volumes = dir
	volumes, err := materializeVolumes(ctx, kc, pod, dir)
	if err != nil {
		return err
	}
	mounts := map[string]string{} // mount path → host directory
	for _, m := range ctr.VolumeMounts {
		host, ok := volumes[m.Name]
		if !ok {
			return fmt.Errorf("volume mount %s: no volume %q", m.MountPath, m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			return fmt.Errorf("volume mount %s: subPath is not supported", m.MountPath)
		}
		mounts[m.MountPath] = host
	}
	env, err := containerEnv(pod, ctr, p.IP, p.NodeOf().Name)
	if err != nil {
		return err
	}
	vars := map[string]string{}
	var environ []string
	for _, e := range env {
		v := rewriteMounts(e.value, mounts)
		vars[e.name] = v
		environ = append(environ, e.name+"="+v)
	}
	args := make([]string, len(ctr.Args))
	for i, a := range ctr.Args {
		args[i] = rewriteMounts(kube.ExpandVars(a, vars), mounts)
	}
	url, err := probeURL(ctr, p.IP)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = environ
	proc, err := startProcess(p.NS, "waypoint "+p.Key(), cmd)
	if err != nil {
		return err
	}
	w.process = proc
	if err := proc.waitReady(p.NS, url, startupTimeout); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return kc.SetPodReady(sctx, pod.Namespace, pod.Name, true)
}

// removeVolumes removes the directory of the pod's volumes, if any.
func (w *Waypoint) removeVolumes() error {
	if w.volumes == "" {
		return nil
	}
	return os.RemoveAll(w.volumes)
}

// materializeVolumes writes each volume of the pod under dir/<volume> and
// returns the directories by volume name.
func materializeVolumes(ctx context.Context, kc *kube.Cluster, pod *corev1.Pod, dir string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		vdir := filepath.Join(dir, v.Name)
		if err := os.MkdirAll(vdir, 0o700); err != nil {
			return nil, err
		}
		files := map[string]string{}
		switch {
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				sat := src.ServiceAccountToken
				if sat == nil {
					return nil, fmt.Errorf("volume %s: only ServiceAccount token projections are supported", v.Name)
				}
				tok, err := projectedToken(ctx, kc, pod, sat)
				if err != nil {
					return nil, fmt.Errorf("volume %s: %w", v.Name, err)
				}
				files[sat.Path] = tok
			}
		case v.ConfigMap != nil:
			data, err := configMapData(ctx, kc, pod.Namespace, v.ConfigMap.Name)
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if len(v.ConfigMap.Items) == 0 {
				files = data
			}
			for _, it := range v.ConfigMap.Items {
				val, ok := data[it.Key]
				if !ok {
					return nil, fmt.Errorf("volume %s: ConfigMap %s has no key %q", v.Name, v.ConfigMap.Name, it.Key)
				}
				files[it.Path] = val
			}
		default:
			return nil, fmt.Errorf("volume %s: only projected and ConfigMap volumes are supported", v.Name)
		}
		for name, val := range files {
			if !filepath.IsLocal(name) {
				return nil, fmt.Errorf("volume %s: path %q leaves the volume", v.Name, name)
			}
			f := filepath.Join(vdir, name)
			if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
				return nil, err
			}
			if err := os.WriteFile(f, []byte(val), 0o600); err != nil {
				return nil, err
			}
		}
		out[v.Name] = vdir
	}
	return out, nil
}

// projectedToken makes the token a projected ServiceAccount token volume
// holds, with kubectl, bound to the pod.
func projectedToken(ctx context.Context, kc *kube.Cluster, pod *corev1.Pod, sat *corev1.ServiceAccountTokenProjection) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args := []string{"create", "token", pod.Spec.ServiceAccountName, "-n", pod.Namespace,
		"--bound-object-kind", "Pod", "--bound-object-name", pod.Name, "--bound-object-uid", string(pod.UID)}
	if sat.Audience != "" {
		args = append(args, "--audience", sat.Audience)
	}
	if sat.ExpirationSeconds != nil {
		args = append(args, "--duration", strconv.FormatInt(*sat.ExpirationSeconds, 10)+"s")
	}
	out, err := kc.Kubectl(ctx, args...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// configMapData reads a ConfigMap with kubectl, waiting (volumeTimeout at
// most) for it to exist.
func configMapData(ctx context.Context, kc *kube.Cluster, namespace, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, volumeTimeout)
	defer cancel()
	for {
		out, err := kc.Kubectl(ctx, "get", "configmap", name, "-n", namespace, "-o", "json")
		if err == nil {
			var cm corev1.ConfigMap
			if err := json.Unmarshal([]byte(out), &cm); err != nil {
				return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, name, err)
			}
			return cm.Data, nil
		}
		if !strings.Contains(err.Error(), "NotFound") {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ConfigMap %s/%s: not there within %v: %w", namespace, name, volumeTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type envVar struct{ name, value string }

// containerEnv is the container's environment as the kubelet computes it:
// literal values ($(VAR) of earlier variables expanded) and downward API
// field references.
func containerEnv(pod *corev1.Pod, ctr corev1.Container, ip netip.Addr, node string) ([]envVar, error) {
	if len(ctr.EnvFrom) > 0 {
		return nil, errors.New("envFrom is not supported")
	}
	fields := map[string]string{
		"metadata.name":           pod.Name,
		"metadata.namespace":      pod.Namespace,
		"metadata.uid":            string(pod.UID),
		"spec.serviceAccountName": pod.Spec.ServiceAccountName,
		"spec.nodeName":           cmp.Or(pod.Spec.NodeName, node),
		"status.podIP":            ip.String(),
	}
	var env []envVar
	vars := map[string]string{}
	for _, e := range ctr.Env {
		v := kube.ExpandVars(e.Value, vars)
		if e.ValueFrom != nil {
			ref := e.ValueFrom.FieldRef
			if ref == nil {
				return nil, fmt.Errorf("env %s: only field references are supported", e.Name)
			}
			var ok bool
			if v, ok = fields[ref.FieldPath]; !ok {
				return nil, fmt.Errorf("env %s: field %s is not supported", e.Name, ref.FieldPath)
			}
		}
		vars[e.Name] = v
		env = append(env, envVar{e.Name, v})
	}
	return env, nil
}

// rewriteMounts replaces a mount path that starts a path in s (followed by
// / or ending s) with the volume's host directory, longest mount first.
func rewriteMounts(s string, mounts map[string]string) string {
	paths := make([]string, 0, len(mounts))
	for m := range mounts {
		paths = append(paths, m)
	}
	slices.SortFunc(paths, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	for _, m := range paths {
		s = strings.ReplaceAll(s, strings.TrimSuffix(m, "/")+"/", mounts[m]+"/")
		if strings.HasSuffix(s, m) {
			s = strings.TrimSuffix(s, m) + mounts[m]
		}
	}
	return s
}

// probeURL is the URL of the container's start-up probe, else its
// readiness probe (an HTTP GET), on the pod's address.
func probeURL(ctr corev1.Container, ip netip.Addr) (string, error) {
	probe := cmp.Or(ctr.StartupProbe, ctr.ReadinessProbe)
	if probe == nil || probe.HTTPGet == nil {
		return "", errors.New("the container has no HTTP start-up or readiness probe")
	}
	get := probe.HTTPGet
	if get.Scheme != "" && get.Scheme != corev1.URISchemeHTTP {
		return "", fmt.Errorf("probe scheme %s is not supported", get.Scheme)
	}
	port := int(get.Port.IntVal)
	if get.Port.Type == intstr.String {
		port = 0
		for _, cp := range ctr.Ports {
			if cp.Name == get.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
		if port == 0 {
			return "", fmt.Errorf("probe port %q is not a container port", get.Port.StrVal)
		}
	}
	return fmt.Sprintf("http://%s%s", netip.AddrPortFrom(ip, uint16(port)), get.Path), nil
}
