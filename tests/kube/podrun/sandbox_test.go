package podrun_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// sandboxPods are two pods of the test image whose sandboxes fail: flaky's
// first two attempts, every attempt of stuck's.
const sandboxPods = `
apiVersion: v1
kind: Pod
metadata: {name: flaky, namespace: default}
spec:
  nodeName: node-1
  serviceAccountName: default
  containers:
  - name: app
    image: ambient-go/app:test
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: stuck, namespace: default}
spec:
  nodeName: node-1
  serviceAccountName: default
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: ambient-go/app:test}]
`

// errSandbox is the failure the test's network plugin reports.
var errSandbox = errors.New("plugin type=\"test\" failed (add): not ready")

// TestSandboxRetried has the Runner's network (the runtime's CNI) fail
// pods' sandboxes, as the ztunnel-cni plugin fails an ADD while ztunnel is
// not ready. As a kubelet does, the harness retries the sandbox with
// back-off (1 s, 2 s, ...): meanwhile the pod is Pending without an IP,
// its PodReadyToStartContainers condition False with the error, and a
// FailedCreatePodSandBox event of node-1's kubelet says it; once an
// attempt succeeds the pod runs and becomes Ready. Deleting a pod whose
// sandbox keeps failing ends the attempts and the pod goes away.
func TestSandboxRetried(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command to build the test image")
	}
	imgs := buildAppImage(t)
	topo := netns.New(t, netns.Options{Nodes: 1})
	d := &deployed{topo: topo, pods: map[types.UID]*netns.Pod{}}
	var mu sync.Mutex
	attempts := map[string]int{} // pod name -> sandbox attempts
	network := func(ctx context.Context, pod *corev1.Pod) (podrun.Sandbox, error) {
		mu.Lock()
		attempts[pod.Name]++
		n := attempts[pod.Name]
		mu.Unlock()
		if pod.Name == "stuck" || (pod.Name == "flaky" && n <= 2) {
			return podrun.Sandbox{}, errSandbox
		}
		return d.sandbox(ctx, pod)
	}
	attemptsOf := func(name string) int {
		mu.Lock()
		defer mu.Unlock()
		return attempts[name]
	}
	runner, err := podrun.New(podrun.Config{Images: []string{imgs}, Cache: t.TempDir(), Network: network})
	if err != nil {
		t.Fatal(err)
	}
	d.runner = runner
	t.Cleanup(func() { runner.Close() })
	kc := kube.Start(t, kube.Config{
		Nodes:   []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}},
		RunPod:  runner.RunPod,
		StopPod: runner.StopPod,
	})
	t.Cleanup(func() { runner.Close() })
	runner.Attach(kc)
	if err := kc.WaitForServiceAccount(t.Context(), "default", "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.KubectlStdin(t.Context(), strings.NewReader(sandboxPods), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}

	t.Run("a failing sandbox: Pending, the error in the status and a FailedCreatePodSandBox event", func(t *testing.T) {
		var ev corev1.Event
		for deadline := time.Now().Add(30 * time.Second); ev.Count < 2; time.Sleep(100 * time.Millisecond) {
			evs, err := kc.Clientset.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=stuck,reason=FailedCreatePodSandBox"})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range evs.Items {
				ev = e
			}
			if ev.Count < 2 && time.Now().After(deadline) {
				t.Fatalf("no FailedCreatePodSandBox event counted twice for stuck within 30s: %+v (attempts %d)", ev, attemptsOf("stuck"))
			}
		}
		if want := "Failed to create pod sandbox: pod default/stuck: sandbox: " + errSandbox.Error(); ev.Type != corev1.EventTypeWarning ||
			ev.Message != want || ev.Source.Component != "kubelet" || ev.Source.Host != "node-1" {
			t.Errorf("event %s %q from %+v, want Warning %q from node-1's kubelet", ev.Type, ev.Message, ev.Source, want)
		}
		pod, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "stuck", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var cond corev1.PodCondition
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReadyToStartContainers {
				cond = c
			}
		}
		if pod.Status.Phase != corev1.PodPending || pod.Status.PodIP != "" || cond.Status != corev1.ConditionFalse ||
			cond.Reason != "FailedCreatePodSandBox" || !strings.Contains(cond.Message, errSandbox.Error()) {
			t.Errorf("stuck: phase %s, IP %q, PodReadyToStartContainers %+v; want Pending, no IP, False with the error", pod.Status.Phase, pod.Status.PodIP, cond)
		}
	})

	t.Run("retried with back-off until it succeeds, then the pod runs", func(t *testing.T) {
		kc.MustKubectl(t, "wait", "--for=condition=Ready", "pod/flaky", "--timeout=25s")
		if n := attemptsOf("flaky"); n != 3 {
			t.Errorf("flaky's sandbox was attempted %d times, want 3 (two failures, then one that worked)", n)
		}
		pod, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "flaky", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReadyToStartContainers && (c.Status != corev1.ConditionTrue || c.Message != "") {
				t.Errorf("flaky running: %+v, want PodReadyToStartContainers True", c)
			}
		}
		if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
			t.Errorf("flaky: phase %s, IP %q; want Running with an IP", pod.Status.Phase, pod.Status.PodIP)
		}
	})

	t.Run("kubectl delete of a pod whose sandbox keeps failing ends the attempts", func(t *testing.T) {
		kc.MustKubectl(t, "delete", "pod", "stuck", "--timeout=30s")
		n := attemptsOf("stuck")
		// More than the back-off's cap (10 s) would show another attempt.
		time.Sleep(11 * time.Second)
		if got := attemptsOf("stuck"); got != n {
			t.Errorf("stuck's sandbox was attempted %d times after its deletion", got-n)
		}
	})
}
