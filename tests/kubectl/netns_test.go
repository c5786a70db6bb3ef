package kubectl

// The network namespace runtime of this package's kubectl stories on the
// netns topology (meshctl, waypoint): a real API server (package
// tests/kube), istiod-lite and one ztunnel process per node started by
// tests/netns/cluster, and pods created with kubectl whose network
// namespaces the harness kubelet creates and hands to the CNI plugin. The
// user story itself runs on what deploy/ installs, every mesh component
// run from its image: tests/kube/podrun TestDeployedUserStory.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// storyPods are the demo namespace and its pods: client on node-1, server
// on node-2 serving HTTP on 8080.
const storyPods = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: app, image: ambient-go/app:test}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers: [{name: app, image: ambient-go/app:test}]
`

// ztunnelPods are the pods the ztunnels' tokens are bound to; the
// ztunnel processes run in the nodes' namespaces.
const ztunnelPods = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node-1
  serviceAccountName: ztunnel
  containers: [{name: istio-proxy, image: ambient-go/ztunnel:test}]
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-2, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node-2
  serviceAccountName: ztunnel
  containers: [{name: istio-proxy, image: ambient-go/ztunnel:test}]
`

// runtime plays the container runtime for the harness kubelet: it creates
// the sandboxes of the pods the API server binds to the nodes.
type runtime struct {
	kc   atomic.Pointer[kube.Cluster]
	mesh atomic.Pointer[cluster.Cluster]

	mu   sync.Mutex
	pods map[string]*cluster.Pod // namespace/name
}

func (r *runtime) node(name string) (int, error) {
	var i int
	if _, err := fmt.Sscanf(name, "node-%d", &i); err != nil {
		return 0, fmt.Errorf("node %q is not a topology node", name)
	}
	return i, nil
}

// runPod is kube.Config.RunPod. The ztunnel pods run in their node's
// namespace (their address is the node's); any other pod gets a sandbox,
// its address is published, and the CNI plugin's ADD runs once the node's
// ztunnel knows the workload.
func (r *runtime) runPod(ctx context.Context, pod *corev1.Pod) ([]netip.Addr, error) {
	i, err := r.node(pod.Spec.NodeName)
	if err != nil {
		return nil, err
	}
	if pod.Namespace == "istio-system" {
		return []netip.Addr{netns.NodeIP(i)}, nil
	}
	mesh, kc := r.mesh.Load(), r.kc.Load()
	if mesh == nil || kc == nil {
		return nil, errors.New("the mesh is not running yet")
	}
	p, err := mesh.Node(i).NewSandbox(cluster.PodSpec{
		Namespace: pod.Namespace, Name: pod.Name, ServiceAccount: pod.Spec.ServiceAccountName, Labels: pod.Labels,
	}, string(pod.UID))
	if err != nil {
		return nil, err
	}
	if err := kc.SetPodStatus(ctx, pod.Namespace, pod.Name, kube.PodStatus{IPs: []netip.Addr{p.IP}, Ready: true}); err != nil {
		return nil, errors.Join(err, p.RemoveSandbox())
	}
	if err := p.Attach(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.pods[p.Key()] = p
	r.mu.Unlock()
	return []netip.Addr{p.IP}, nil
}

// stopPod is kube.Config.StopPod: CNI DEL, then the sandbox goes.
func (r *runtime) stopPod(_ context.Context, pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	r.mu.Lock()
	p := r.pods[key]
	delete(r.pods, key)
	r.mu.Unlock()
	if p != nil {
		_ = p.Delete()
	}
}

func (r *runtime) pod(t *testing.T, key string) *cluster.Pod {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		p := r.pods[key]
		r.mu.Unlock()
		if p != nil {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("pod %s did not start within %v", key, waitTimeout)
	return nil
}

// startServer serves HTTP inside pod p: it answers "<pod> <client
// address> <path>".
func startServer(t *testing.T, p *cluster.Pod, port int) {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, uint16(port)).String())
	if err != nil {
		t.Fatalf("server in %s: %v", p.Key(), err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", p.Spec.Name, r.RemoteAddr, r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// waitPodLog waits for a ztunnel log line msg (e.g. "pod captured") about
// pod, after line from.
func waitPodLog(t *testing.T, z *cluster.Ztunnel, from int, msg string, p *cluster.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if _, _, err := z.WaitLog(ctx, from, func(l cluster.Log) bool {
		return l.String("msg") == msg && l.String("pod") == p.Key()
	}); err != nil {
		t.Fatalf("ztunnel %s: no %q for %s: %v", z.Node.Name, msg, p.Key(), err)
	}
}

// eventually retries f every 100ms until it succeeds or d has passed.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
