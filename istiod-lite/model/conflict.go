package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// KindPod is the PolicyStatus.Kind of a pod that is not served because
// another pod claims one of its IPs.
const KindPod = "Pod"

// ReasonAddressConflict is the reason of the ZtunnelAccepted=False
// condition of a pod that is not served because of an IP conflict.
const ReasonAddressConflict = "AddressConflict"

// claimant is a served pod and its workload.
type claimant struct {
	pod *corev1.Pod
	w   *workloadapi.Workload
}

// podWins orders pods claiming one IP: a Running pod that is not being
// deleted first, then the oldest (creationTimestamp), then by namespace and
// name. Every input is a property of the pods, not of the order in which a
// source lists them, so every replica and every build picks the same pod.
func podWins(a, b claimant) int {
	live := func(p *corev1.Pod) int {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return 0
		}
		return 1
	}
	return cmp.Or(
		cmp.Compare(live(a.pod), live(b.pod)),
		a.pod.CreationTimestamp.Time.Compare(b.pod.CreationTimestamp.Time),
		cmp.Compare(a.pod.Namespace, b.pod.Namespace),
		cmp.Compare(a.pod.Name, b.pod.Name),
	)
}

// resolveConflicts removes from out the workloads of pods that claim an IP
// another pod wins (podWins), and gives each of them a status of kind
// KindPod with a ZtunnelAccepted=False condition naming the winner, so
// that ztunnels never see two workloads with one address (local mode
// returns it from Server.Errors; the cluster status writer records an
// Event on the pod). Pods are taken in podWins order, and a pod loses to
// an earlier pod only if that one is served, so a loser's other addresses
// stay free for the next pods. Host-network pods share their node's IP
// and never conflict.
func resolveConflicts(pods []claimant, out *Output) {
	// Only the pods sharing an address with another need ordering.
	count := make(map[netip.Addr]int, len(pods))
	for _, c := range pods {
		if c.w.NetworkMode == workloadapi.NetworkMode_HOST_NETWORK {
			continue
		}
		for _, b := range c.w.Addresses {
			a, _ := netip.AddrFromSlice(b)
			count[a]++
		}
	}
	var claims []claimant
	for _, c := range pods {
		if c.w.NetworkMode == workloadapi.NetworkMode_HOST_NETWORK {
			continue
		}
		for _, b := range c.w.Addresses {
			if a, _ := netip.AddrFromSlice(b); count[a] > 1 {
				claims = append(claims, c)
				break
			}
		}
	}
	slices.SortFunc(claims, podWins)
	owner := map[netip.Addr]*corev1.Pod{}
	for _, c := range claims {
		var winner *corev1.Pod
		var at netip.Addr
		for _, b := range c.w.Addresses {
			a, _ := netip.AddrFromSlice(b)
			if p := owner[a]; p != nil {
				winner, at = p, a
				break
			}
		}
		if winner == nil {
			for _, b := range c.w.Addresses {
				a, _ := netip.AddrFromSlice(b)
				owner[a] = c.pod
			}
			continue
		}
		delete(out.Addresses, c.w.Uid)
		st := &PolicyStatus{
			Kind: KindPod, Namespace: c.pod.Namespace, Name: c.pod.Name, Generation: c.pod.Generation,
			Conditions: []PolicyCondition{{
				Type: ConditionZtunnelAccepted, Status: "False", Reason: ReasonAddressConflict,
				Message: fmt.Sprintf("address %s is also claimed by %s/%s, which is served", at, winner.Namespace, winner.Name),
			}},
		}
		out.PolicyStatuses[st.Key()] = st
	}
}
