package kubectl

// The user story of issues 4 and 5 with kubectl, on the network namespace
// topology: a real API server (package tests/kube), istiod-lite in cluster
// mode listening in the underlay namespace, one ztunnel process per node in
// in-pod mode authenticating with a ServiceAccount token bound to a
// ztunnel pod on its node, and pods created with kubectl whose network
// namespaces the harness kubelet creates and hands to the CNI plugin.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
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

const denyClient = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
`

// webDeployment runs one pod on node-1 (service account default).
const webDeployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers: [{name: app, image: ambient-go/app:test}]
`

const storyClientID = "spiffe://cluster.local/ns/demo/sa/client"

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

func TestKubectlUserStory(t *testing.T) {
	netns.RequireRoot(t)
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	rt := &runtime{pods: map[string]*cluster.Pod{}}
	kc := kube.Start(t, kube.Config{
		Nodes:   []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}, {Name: "node-2", IP: netns.NodeIP(2)}},
		CRDDirs: []string{crds},
		RunPod:  rt.runPod,
		StopPod: rt.stopPod,
		Log:     log.With("component", "harness"),
	})
	rt.kc.Store(kc)
	apply(t, kc, ztunnelPods)
	tokens := map[string]string{}
	for _, node := range []string{"node-1", "node-2"} {
		tokens[node] = strings.TrimSpace(kc.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-"+node, "--audience", "istio-ca"))
	}
	mesh := cluster.New(t, cluster.Options{Kube: kc.REST, Tokens: tokens})
	rt.mesh.Store(mesh)

	apply(t, kc, storyPods)
	kc.MustKubectl(t, "wait", "-n", "demo", "--for=condition=Ready", "pod/client", "pod/server", "--timeout=30s")
	client, server := rt.pod(t, "demo/client"), rt.pod(t, "demo/server")
	startServer(t, server, 8080)
	target := netip.AddrPortFrom(server.IP, 8080)
	z1, z2 := mesh.Node(1).Ztunnel(), mesh.Node(2).Ztunnel()
	ctx := t.Context()

	exchange := func(t *testing.T, path string) []netns.Frame {
		t.Helper()
		var got string
		var err error
		frames := mesh.CaptureUnderlay(t, func() { got, err = client.Get(ctx, target, path) })
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if !strings.HasPrefix(got, "server "+client.IP.String()+":") || !strings.HasSuffix(got, " "+path) {
			t.Errorf("answer %q, want server to see %s and path %s", got, client.IP, path)
		}
		return frames
	}
	assertPlain := func(t *testing.T, what string) {
		t.Helper()
		marker := fmt.Sprintf("/PLAIN-%d", time.Now().UnixNano())
		frames := exchange(t, marker)
		if netns.Contains(frames, []byte(marker)) == 0 {
			t.Errorf("%s: the marker is not in clear on the underlay (%d frames)", what, len(frames))
		}
		for _, s := range netns.Segments(frames) {
			if s.Dst.Port() == 15008 || s.Src.Port() == 15008 {
				t.Errorf("%s: HBONE on the underlay: %v", what, s)
				break
			}
		}
	}

	t.Run("outside the mesh the pods talk in plain text", func(t *testing.T) {
		assertPlain(t, "before labelling")
	})

	t.Run("kubectl label namespace ambient: running pods talk mTLS", func(t *testing.T) {
		f1, f2 := z1.Mark(), z2.Mark()
		kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
		waitPodLog(t, z1, f1, "pod captured", client)
		waitPodLog(t, z2, f2, "pod captured", server)
		from := z2.Mark()
		marker := fmt.Sprintf("/MESH-%d", time.Now().UnixNano())
		cluster.AssertOnlyHBONE(t, exchange(t, marker), marker)
		if l := waitInbound(t, z2, from, client.IP); l.String(accesslog.KeySrcIdentity) != storyClientID {
			t.Errorf("node-2's ztunnel logged src.identity %q, want %q (%v)", l.String(accesslog.KeySrcIdentity), storyClientID, l)
		}
	})

	t.Run("kubectl label namespace dataplane-mode-: plain again", func(t *testing.T) {
		f1, f2 := z1.Mark(), z2.Mark()
		kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode-")
		waitPodLog(t, z1, f1, "pod uncaptured", client)
		waitPodLog(t, z2, f2, "pod uncaptured", server)
		assertPlain(t, "after removing the label")
	})

	t.Run("kubectl apply a DENY policy, then delete it", func(t *testing.T) {
		f1, f2 := z1.Mark(), z2.Mark()
		kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
		waitPodLog(t, z1, f1, "pod captured", client)
		waitPodLog(t, z2, f2, "pod captured", server)
		if _, err := client.Get(ctx, target, "/before-policy"); err != nil {
			t.Fatalf("before the policy: %v", err)
		}

		from := z2.Mark()
		apply(t, kc, denyClient)
		eventually(t, 10*time.Second, "the client denied", func() error {
			if got, err := client.Get(ctx, target, "/denied"); err == nil {
				return fmt.Errorf("answered %q", got)
			}
			return nil
		})
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, _, err := z2.WaitLog(lctx, from, func(l cluster.Log) bool {
			return l.String("msg") == accesslog.Message && l.String(accesslog.KeyResponseFlags) == "DENY" &&
				l.String(accesslog.KeySrcIdentity) == storyClientID && l.String(accesslog.KeyPolicy) == "demo/deny-client"
		}); err != nil {
			t.Errorf("node-2 logged no DENY by demo/deny-client for the client: %v", err)
		}

		kc.MustKubectl(t, "delete", "authorizationpolicies.security.istio.io", "-n", "demo", "deny-client")
		eventually(t, 10*time.Second, "the client allowed again", func() error {
			_, err := client.Get(ctx, target, "/allowed-again")
			return err
		})
	})

	t.Run("istiod-lite restarted mid-traffic: the established connection keeps flowing", func(t *testing.T) {
		c, err := client.Dial(ctx, "tcp", target.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		roundTrip := func(path string) {
			t.Helper()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, target); err != nil {
				t.Fatalf("%s on the established connection: %v", path, err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s on the established connection: %v", path, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || !strings.HasSuffix(string(body), " "+path) {
				t.Fatalf("%s on the established connection: %d %q %v", path, resp.StatusCode, body, err)
			}
		}
		roundTrip("/before-restart")
		if err := mesh.StopIstiod(); err != nil {
			t.Fatalf("stopping istiod-lite: %v", err)
		}
		roundTrip("/istiod-down")
		if _, err := client.Get(ctx, target, "/new-while-down"); err != nil {
			t.Errorf("a new connection while istiod-lite is down: %v", err)
		}
		mesh.StartIstiod()
		roundTrip("/after-restart")
		if _, err := client.Get(ctx, target, "/new-after-restart"); err != nil {
			t.Errorf("a new connection after the restart: %v", err)
		}
	})

	t.Run("kubectl apply a Deployment in the ambient namespace: captured from the first packet", func(t *testing.T) {
		apply(t, kc, webDeployment)
		kc.MustKubectl(t, "rollout", "status", "-n", "demo", "deployment/web", "--timeout=30s")
		name := strings.TrimSpace(kc.MustKubectl(t, "get", "pods", "-n", "demo", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"))
		web := rt.pod(t, "demo/"+name)
		if web.NodeOf() != mesh.Node(1) {
			t.Fatalf("pod %s runs on %s, want node-1 (node selector)", web.Key(), web.NodeOf().Name)
		}
		from := z2.Mark()
		marker := fmt.Sprintf("/FIRST-%d", time.Now().UnixNano())
		var got string
		var err error
		frames := mesh.CaptureUnderlay(t, func() { got, err = web.Get(ctx, target, marker) })
		if err != nil {
			t.Fatalf("the new pod's first request: %v", err)
		}
		if !strings.HasPrefix(got, "server "+web.IP.String()+":") {
			t.Errorf("answer %q, want server to see %s", got, web.IP)
		}
		cluster.AssertOnlyHBONE(t, frames, marker)
		const webID = "spiffe://cluster.local/ns/demo/sa/default"
		if l := waitInbound(t, z2, from, web.IP); l.String(accesslog.KeySrcIdentity) != webID {
			t.Errorf("node-2's ztunnel logged src.identity %q, want %q", l.String(accesslog.KeySrcIdentity), webID)
		}
	})

	t.Run("kubectl delete pod: gone from both ztunnels within a second", func(t *testing.T) {
		for _, z := range []*cluster.Ztunnel{z1, z2} {
			if ok, err := z.HasWorkload(ctx, client.IP); !ok {
				t.Fatalf("ztunnel %s does not know the client (%s) before the delete: %v", z.Node.Name, client.IP, err)
			}
		}
		start := time.Now()
		kc.MustKubectl(t, "delete", "pod", "-n", "demo", "client", "--wait=false")
		returned := time.Now()
		for _, z := range []*cluster.Ztunnel{z1, z2} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				ok, err := z.HasWorkload(ctx, client.IP)
				if err == nil && !ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("ztunnel %s still knows the deleted client 10s after kubectl delete (%v)", z.Node.Name, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		gone := time.Now()
		t.Logf("the deleted pod left both ztunnels %v after kubectl delete returned (%v after it started)",
			gone.Sub(returned).Round(time.Millisecond), gone.Sub(start).Round(time.Millisecond))
		if d := gone.Sub(returned); d > time.Second {
			t.Errorf("the deleted pod left the ztunnels %v after kubectl delete returned, want within 1s", d)
		}
	})
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

// waitInbound waits for the access log record of z for an inbound
// connection from src, after log line from.
func waitInbound(t *testing.T, z *cluster.Ztunnel, from int, src netip.Addr) cluster.Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, _, err := z.WaitLog(ctx, from, func(l cluster.Log) bool {
		return l.String("msg") == accesslog.Message && l.String(accesslog.KeyDirection) == accesslog.Inbound &&
			strings.HasPrefix(l.String(accesslog.KeySrcAddr), src.String()+":")
	})
	if err != nil {
		t.Fatalf("no inbound access log from %s: %v", src, err)
	}
	return l
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
