package model

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// Labels read from Namespaces and Pods, the same as Istio's.
const (
	LabelDataplaneMode     = "istio.io/dataplane-mode"
	DataplaneModeAmbient   = "ambient"
	DataplaneModeNone      = "none"
	labelCanonicalName     = "service.istio.io/canonical-name"
	labelCanonicalRevision = "service.istio.io/canonical-revision"
	labelK8sName           = "app.kubernetes.io/name"
	labelK8sVersion        = "app.kubernetes.io/version"
	labelApp               = "app"
	labelVersion           = "version"
	labelPodTemplateHash   = "pod-template-hash"
)

// WorkloadUID returns the uid of a pod's workload in Istio's format
// "<cluster>/<group>/<kind>/<namespace>/<name>", with the core group empty:
// "<cluster>//Pod/<namespace>/<name>".
func WorkloadUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// SPIFFEID returns the identity of a service account:
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// Ambient reports whether a pod is enrolled in the ambient mesh: the pod is
// labelled istio.io/dataplane-mode=ambient, or its namespace is and the pod is
// not labelled istio.io/dataplane-mode=none. ns may be nil.
func Ambient(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if pod == nil {
		return false
	}
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneModeAmbient:
		return true
	case DataplaneModeNone:
		return false
	}
	return ns != nil && ns.Labels[LabelDataplaneMode] == DataplaneModeAmbient
}

// NodeIdentities returns, per node name, the SPIFFE IDs of the pods scheduled
// on it (spec.nodeName), for the CA's rule that a node may only obtain
// identities of pods on that node. Pods without an IP yet are included (a
// starting pod needs its certificate); terminal pods and pods being deleted
// are not. in may be nil.
func NodeIdentities(in *Inputs, opt Options) map[string]map[string]struct{} {
	opt = opt.withDefaults()
	out := map[string]map[string]struct{}{}
	if in == nil {
		return out
	}
	for _, pod := range in.Pods {
		if pod == nil || pod.Spec.NodeName == "" || terminal(pod) || pod.DeletionTimestamp != nil {
			continue
		}
		ids := out[pod.Spec.NodeName]
		if ids == nil {
			ids = map[string]struct{}{}
			out[pod.Spec.NodeName] = ids
		}
		ids[SPIFFEID(opt.TrustDomain, pod.Namespace, serviceAccount(pod))] = struct{}{}
	}
	return out
}

// buildWorkload translates a pod, or returns nil when the pod is not a
// workload: it has terminated, or it has no IP and is not scheduled either.
// services are the services of the pod's namespace.
//
// A pod scheduled on a node (spec.nodeName) is published before it has an
// IP, without addresses and UNHEALTHY: the node's ztunnel waits for it
// during the pod's CNI ADD, which runs before the kubelet writes the IP, to
// decide whether to capture the pod, so that an ambient pod is captured
// from its first packet. The same resource (its name is the uid) gets the
// addresses when the IP arrives. A host-network pod has no sandbox to
// capture and is published only with its IP, as before.
func buildWorkload(pod *corev1.Pod, ns *corev1.Namespace, services *serviceIndex, opt Options) *workloadapi.Workload {
	if terminal(pod) {
		return nil
	}
	addrs := podAddresses(pod)
	if len(addrs) == 0 && (pod.Spec.NodeName == "" || pod.Spec.HostNetwork) {
		return nil
	}
	kind, workloadName := workloadNameAndType(pod)
	w := &workloadapi.Workload{
		Uid:               WorkloadUID(opt.ClusterID, pod.Namespace, pod.Name),
		Name:              pod.Name,
		Namespace:         pod.Namespace,
		Addresses:         addrs,
		Network:           opt.Network,
		TunnelProtocol:    workloadapi.TunnelProtocol_NONE,
		TrustDomain:       opt.TrustDomain,
		ServiceAccount:    serviceAccount(pod),
		Node:              pod.Spec.NodeName,
		ClusterId:         opt.ClusterID,
		CanonicalName:     firstLabel(pod.Labels, workloadName, labelCanonicalName, labelK8sName, labelApp),
		CanonicalRevision: firstLabel(pod.Labels, "latest", labelCanonicalRevision, labelK8sVersion, labelVersion),
		WorkloadType:      kind,
		WorkloadName:      workloadName,
		Services:          podServices(pod, services),
		Status:            workloadapi.WorkloadStatus_UNHEALTHY,
	}
	// A host-network pod shares its node's network namespace, which cannot be
	// captured: it never speaks HBONE, whatever its labels say.
	if pod.Spec.HostNetwork {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	} else if Ambient(ns, pod) {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if podReady(pod) && pod.DeletionTimestamp == nil && len(addrs) > 0 {
		w.Status = workloadapi.WorkloadStatus_HEALTHY
	}
	return w
}

// terminal reports whether the pod has finished and will not run again.
func terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// podAddresses returns the pod's IPs (status.podIPs, else status.podIP) as 4-
// or 16-byte slices, in the pod's order, without duplicates or unparsable
// entries.
func podAddresses(pod *corev1.Pod) [][]byte {
	ips := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	return addressBytes(ips)
}

// addressBytes parses IP strings into 4- or 16-byte slices, skipping invalid
// ones and duplicates.
func addressBytes(ips []string) [][]byte {
	var out [][]byte
	seen := map[netip.Addr]bool{}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap().WithZone("")
		if seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a.AsSlice())
	}
	return out
}

func firstLabel(l map[string]string, fallback string, keys ...string) string {
	for _, k := range keys {
		if v := l[k]; v != "" {
			return v
		}
	}
	return fallback
}

// cronJobName matches the name of a Job created by a CronJob:
// "<cronjob>-<scheduled time in minutes>".
var cronJobName = regexp.MustCompile(`^(.+)-[0-9]{8,10}$`)

// workloadNameAndType derives the workload a pod belongs to from its
// controller owner, as Istio does: a ReplicaSet "<deployment>-<hash>" whose
// hash matches the pod's pod-template-hash label is a Deployment; a Job named
// like a CronJob's job is that CronJob; another Job is a Job; any other
// controller (StatefulSet, DaemonSet, bare ReplicaSet, ...) is of type POD
// named after the controller; a pod without a controller is itself.
func workloadNameAndType(pod *corev1.Pod) (workloadapi.WorkloadType, string) {
	var owner *struct{ kind, name string }
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			owner = &struct{ kind, name string }{ref.Kind, ref.Name}
			break
		}
	}
	if owner == nil {
		return workloadapi.WorkloadType_POD, pod.Name
	}
	switch owner.kind {
	case "ReplicaSet":
		if hash := pod.Labels[labelPodTemplateHash]; hash != "" {
			if name, ok := strings.CutSuffix(owner.name, "-"+hash); ok && name != "" {
				return workloadapi.WorkloadType_DEPLOYMENT, name
			}
		}
	case "Job":
		if m := cronJobName.FindStringSubmatch(owner.name); m != nil {
			return workloadapi.WorkloadType_CRONJOB, m[1]
		}
		return workloadapi.WorkloadType_JOB, owner.name
	}
	return workloadapi.WorkloadType_POD, owner.name
}

// podServices returns, for each service of the pod's namespace whose
// non-empty selector matches the pod, the service's key and its TCP ports as
// served by this pod. A named target port is resolved against the pod's
// container ports; a port that does not resolve is left out (the pod still
// belongs to the service).
func podServices(pod *corev1.Pod, services *serviceIndex) map[string]*workloadapi.PortList {
	if services == nil {
		return nil
	}
	var out map[string]*workloadapi.PortList
	for k, v := range pod.Labels {
		for _, e := range services.byLabel[labelPair{k, v}] {
			if !selects(e.svc.Spec.Selector, pod.Labels) {
				continue
			}
			pl := &workloadapi.PortList{}
			for _, p := range e.ports {
				target, ok := resolveTargetPort(pod, p)
				if !ok {
					continue
				}
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: target})
			}
			if out == nil {
				out = map[string]*workloadapi.PortList{}
			}
			out[e.key] = pl
		}
	}
	return out
}

// resolveTargetPort returns the port of pod that service port p targets.
func resolveTargetPort(pod *corev1.Pod, p corev1.ServicePort) (uint32, bool) {
	tp := p.TargetPort
	if tp.Type == intstr.Int || tp.StrVal == "" {
		if tp.IntVal == 0 {
			return uint32(p.Port), true // unset: same as the service port
		}
		return uint32(tp.IntVal), true
	}
	if n, ok := numericString(tp.StrVal); ok {
		return n, true // a number written as a string
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == tp.StrVal && tcp(cp.Protocol) {
				return uint32(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

// numericString parses a port number written as a string.
func numericString(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	return uint32(n), err == nil && n > 0
}

// tcp reports whether a port's protocol is TCP (the default when unset).
func tcp(p corev1.Protocol) bool {
	return p == "" || p == corev1.ProtocolTCP
}
