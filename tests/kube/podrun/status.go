package podrun

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// writeStatus writes the pod's status through the status subresource, as
// a kubelet does; a pod that is gone or replaced (another UID) is left
// alone.
func (p *pod) writeStatus(ctx context.Context) error {
	pods := p.kc.Clientset.CoreV1().Pods(p.obj.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, p.obj.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UID != p.obj.UID {
			return nil
		}
		p.fillStatus(&cur.Status, time.Now())
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// fillStatus computes the pod's status from its containers' states,
// keeping the transition times of conditions that did not change.
func (p *pod) fillStatus(st *corev1.PodStatus, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st.StartTime == nil {
		st.StartTime = &metav1.Time{Time: now}
	}
	st.PodIP, st.PodIPs = "", nil
	for _, ip := range p.sb.IPs {
		if st.PodIP == "" {
			st.PodIP = ip.String()
		}
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if h := p.hostIP(); h != "" {
		st.HostIP, st.HostIPs = h, []corev1.HostIP{{IP: h}}
	}

	initDone, ready := true, true
	mainRunning, mainExited, mainFailed := false, 0, false
	st.InitContainerStatuses, st.ContainerStatuses = nil, nil
	for _, c := range p.ctrs {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, Ready: c.ready, RestartCount: c.restarts,
		}
		if c.image != nil {
			cs.ImageID = c.image.ref + "@" + c.image.digest.String()
		}
		started := c.running
		cs.Started = &started
		switch {
		case c.running:
			cs.ContainerID = fmt.Sprintf("podrun://%s/%s/%d", p.key, c.spec.Name, c.proc.Pid)
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.Time{Time: c.startedAt}}
		case c.terminated != nil:
			cs.State.Terminated = c.terminated
		default:
			w := corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
			if c.waiting != nil {
				w = *c.waiting
			}
			cs.State.Waiting = &w
		}
		if c.last != nil {
			cs.LastTerminationState.Terminated = c.last
		}
		switch c.kind {
		case kindInit:
			initDone = initDone && c.terminated != nil && c.terminated.ExitCode == 0
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		case kindSidecar:
			ready = ready && c.ready
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		case kindMain:
			ready = ready && c.ready
			mainRunning = mainRunning || c.running
			if c.terminated != nil {
				mainExited++
				mainFailed = mainFailed || c.terminated.ExitCode != 0
			}
			st.ContainerStatuses = append(st.ContainerStatuses, cs)
		}
	}
	containers := len(p.obj.Spec.Containers)
	switch {
	case containers > 0 && mainExited == containers && mainFailed:
		st.Phase = corev1.PodFailed
	case containers > 0 && mainExited == containers:
		st.Phase = corev1.PodSucceeded
	case p.mainStarted && (mainRunning || mainExited > 0):
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	ready = ready && initDone && p.mainStarted
	cond := func(t corev1.PodConditionType, ok bool, reason, msg string) {
		s := corev1.ConditionFalse
		if ok {
			s, reason, msg = corev1.ConditionTrue, "", ""
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != s {
					st.Conditions[i].LastTransitionTime = metav1.Time{Time: now}
				}
				st.Conditions[i].Status, st.Conditions[i].Reason, st.Conditions[i].Message = s, reason, msg
				return
			}
		}
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg, LastTransitionTime: metav1.Time{Time: now}})
	}
	cond(corev1.PodScheduled, true, "", "")
	// The kubelet's PodReadyToStartContainers: the sandbox exists. While
	// its creation fails the kubelet leaves the reason empty (the error is
	// in the FailedCreatePodSandBox event); the Runner also puts it here.
	var sandboxReason, sandboxMsg string
	if p.sandboxErr != nil {
		sandboxReason, sandboxMsg = "FailedCreatePodSandBox", p.sandboxErr.Error()
	}
	cond(corev1.PodReadyToStartContainers, len(p.sb.IPs) > 0, sandboxReason, sandboxMsg)
	cond(corev1.PodInitialized, initDone, "ContainersNotInitialized", "")
	cond(corev1.ContainersReady, ready, "ContainersNotReady", "")
	cond(corev1.PodReady, ready, "ContainersNotReady", "")
}
