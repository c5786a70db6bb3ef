package kubectl

// meshctl in cluster mode on the network namespace topology: no --istiod,
// no --proxy-admin. meshctl reaches istiod-lite and the ztunnels' admin
// servers the way kubectl port-forward does, through the API server's
// pods/portforward, which the harness kubelet serves (tests/kube,
// k8s.io/cri-streaming) by dialing inside the pods' network namespaces.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// istiodPod stands for istiod-lite, which the cluster runs in-process in
// the underlay namespace: port-forwards to its 15012 reach it there.
const istiodPod = `
apiVersion: v1
kind: Pod
metadata: {name: istiod-lite-0, namespace: istio-system, labels: {app: istiod-lite}}
spec:
  nodeName: node-1
  containers: [{name: discovery, image: ambient-go/istiod-lite:test}]
`

// meshctlRBAC: operator may do what meshctl's cluster mode needs (list
// pods everywhere, port-forward to them, read the mesh root); viewer may
// only list pods.
const meshctlRBAC = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: operator, namespace: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer, namespace: istio-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: meshctl-operator}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [""], resources: [pods/portforward], verbs: [create, get]}
- {apiGroups: [""], resources: [configmaps], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pod-viewer}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: meshctl-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshctl-operator}
subjects: [{kind: ServiceAccount, name: operator, namespace: istio-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: pod-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pod-viewer}
subjects: [{kind: ServiceAccount, name: viewer, namespace: istio-system}]
`

// dialPod is kube.Config.DialPod: where a port-forward to a pod's port
// goes. The ztunnel pods run in their node's namespace (the admin server
// binds its 127.0.0.1); istiod-lite listens in the underlay namespace;
// other pods have their own namespace, reached at their localhost as a
// container runtime's port-forward does.
func (r *runtime) dialPod(ctx context.Context, pod *corev1.Pod, port int32) (net.Conn, error) {
	mesh := r.mesh.Load()
	if mesh == nil {
		return nil, errors.New("the mesh is not running yet")
	}
	i, err := r.node(pod.Spec.NodeName)
	if err != nil {
		return nil, err
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	switch {
	case pod.Labels["app"] == "istiod-lite":
		if port != cluster.IstiodTLSPort {
			return nil, fmt.Errorf("istiod-lite listens on %d only", cluster.IstiodTLSPort)
		}
		return mesh.Topo.Underlay.Dial(ctx, "tcp", mesh.IstiodAddr().String())
	case pod.Namespace == "istio-system":
		return mesh.Node(i).NS.Dial(ctx, "tcp", local)
	}
	r.mu.Lock()
	p := r.pods[pod.Namespace+"/"+pod.Name]
	r.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("pod %s/%s has no sandbox", pod.Namespace, pod.Name)
	}
	return p.Dial(ctx, "tcp", local)
}

func TestMeshctlClusterModeNetns(t *testing.T) {
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
		DialPod: rt.dialPod,
		Log:     log.With("component", "harness"),
	})
	rt.kc.Store(kc)
	apply(t, kc, ztunnelPods)
	apply(t, kc, istiodPod)
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
	z1, z2 := mesh.Node(1).Ztunnel(), mesh.Node(2).Ztunnel()
	f1, f2 := z1.Mark(), z2.Mark()
	kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
	waitPodLog(t, z1, f1, "pod captured", client)
	waitPodLog(t, z2, f2, "pod captured", server)
	eventually(t, waitTimeout, "istiod-lite publishes the mesh root", func() error {
		_, err := kc.Kubectl(t.Context(), "get", "configmap", "-n", "istio-system", "istio-ca-root-cert")
		return err
	})

	apply(t, kc, meshctlRBAC)
	operator := tokenKubeconfig(t, kc, "operator")
	viewer := tokenKubeconfig(t, kc, "viewer")
	bin := buildMeshctl(t)
	meshctl := func(t *testing.T, kubeconfig string, args ...string) (string, string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	must := func(t *testing.T, args ...string) string {
		t.Helper()
		out, errOut, err := meshctl(t, operator, args...)
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	t.Run("proxy-status through a port-forward to istiod-lite, cert expiry through the ztunnels'", func(t *testing.T) {
		want := []*regexp.Regexp{
			regexp.MustCompile(`(?m)^ztunnel-node-1\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+\d{4}-\d\d-\d\dT\S+ \(\d+h\d+m\)$`),
			regexp.MustCompile(`(?m)^ztunnel-node-2\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+\d{4}-\d\d-\d\dT\S+ \(\d+h\d+m\)$`),
		}
		var out string
		eventually(t, waitTimeout, "both ztunnels SYNCED with a cert expiry", func() error {
			out = must(t, "proxy-status")
			for _, re := range want {
				if !re.MatchString(out) {
					return fmt.Errorf("proxy-status =\n%s\nwant a line matching %s", out, re)
				}
			}
			return nil
		})
	})

	t.Run("ztunnel-config workload of node-2", func(t *testing.T) {
		out := must(t, "ztunnel-config", "workload", "--node", "node-2", "-n", "demo")
		re := regexp.MustCompile(fmt.Sprintf(`(?m)^demo\s+server\s+%s\s+node-2\s+None\s+HBONE$`, regexp.QuoteMeta(server.IP.String())))
		if !re.MatchString(out) {
			t.Errorf("ztunnel-config workload =\n%s\nwant a line matching %s", out, re)
		}
	})

	t.Run("ztunnel-config connections while one is open", func(t *testing.T) {
		c, err := client.Dial(t.Context(), "tcp", netip.AddrPortFrom(server.IP, 8080).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /kept HTTP/1.1\r\nHost: server\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		outbound := regexp.MustCompile(fmt.Sprintf(`(?m)^client\.demo\s+Outbound\s+%s:\d+\s+%s:15008\s+%s:8080\s+HBONE$`,
			regexp.QuoteMeta(client.IP.String()), regexp.QuoteMeta(server.IP.String()), regexp.QuoteMeta(server.IP.String())))
		inbound := regexp.MustCompile(fmt.Sprintf(`(?m)^server\.demo\s+Inbound\s+%s:8080\s+%s:\d+\s+HBONE$`,
			regexp.QuoteMeta(server.IP.String()), regexp.QuoteMeta(client.IP.String())))
		if out := must(t, "ztunnel-config", "connections", "--node", "node-1", "--raw"); !outbound.MatchString(out) {
			t.Errorf("node-1's connections =\n%s\nwant a line matching %s", out, outbound)
		}
		if out := must(t, "ztunnel-config", "connections", "--node", "node-2", "--raw"); !inbound.MatchString(out) {
			t.Errorf("node-2's connections =\n%s\nwant a line matching %s", out, inbound)
		}
	})

	t.Run("ztunnel-config log of node-1", func(t *testing.T) {
		if out := must(t, "ztunnel-config", "log", "--node", "node-1"); !strings.HasPrefix(out, "node-1: current log level is") {
			t.Errorf("ztunnel-config log = %q", out)
		}
	})

	t.Run("a user without pods/portforward is refused by the API server", func(t *testing.T) {
		_, errOut, err := meshctl(t, viewer, "ztunnel-config", "workload", "--node", "node-1")
		if err == nil || !strings.Contains(errOut, "pods/portforward") {
			t.Errorf("ztunnel-config as viewer = %v, %q; want a Forbidden on pods/portforward", err, errOut)
		}
	})
}

// tokenKubeconfig writes a kubeconfig authenticating as the service
// account istio-system/sa with a token (meshctl hands bearer tokens on to
// istiod-lite).
func tokenKubeconfig(t *testing.T, kc *kube.Cluster, sa string) string {
	t.Helper()
	token := strings.TrimSpace(kc.MustKubectl(t, "create", "token", sa, "-n", "istio-system"))
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := os.WriteFile(path, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: %[2]s
  user: {token: %[3]q}
contexts:
- name: %[2]s
  context: {cluster: test, user: %[2]s}
current-context: %[2]s
`, kc.REST.Host, sa, token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// buildMeshctl builds bin/meshctl into a temporary directory.
func buildMeshctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ambient-go/mesh/meshctl/cmd/meshctl").CombinedOutput(); err != nil {
		t.Fatalf("go build meshctl: %v\n%s", err, out)
	}
	return bin
}
