package podrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/netns"
)

// Mesh is deploy/ running on the harness: a two-node network namespace
// topology, the harness API server, and a Runner as the nodes' container
// runtime (pods/exec included), with istiod-lite and the ztunnels
// installed from the images built for this machine. StartMesh makes it.
type Mesh struct {
	Cluster *kube.Cluster
	Runner  *Runner
	Topo    *netns.Topology
	// Built are the mesh's images by name ("ztunnel").
	Built map[string]images.Built

	cfg  MeshConfig
	mu   sync.Mutex
	pods map[types.UID]*netns.Pod // the sandboxes of non-hostNetwork pods
}

// MeshConfig configures StartMesh; the zero value installs the mesh.
type MeshConfig struct {
	// Images are more directories of OCI layouts (tests/images output)
	// the Runner finds images in, after the mesh's.
	Images []string
	// ImageAliases maps image references pods name to references found in
	// the layouts (Config.ImageAliases).
	ImageAliases map[string]string
	// ServiceRoutes gives every pod a route to the API server's service
	// range via its node, as a pod of a real cluster has a default route:
	// only ztunnel's capture answers there (the harness has no
	// kube-proxy). Default: pods route only the topology.
	ServiceRoutes bool
	// ServiceVIPs tells for which pods /etc/hosts names Services by their
	// ClusterIP, as cluster DNS does (Config.ServiceVIPs); default none:
	// their endpoints' addresses.
	ServiceVIPs func(pod *corev1.Pod) bool
	// Output receives the containers' lines (Config.Output).
	Output func(pod types.NamespacedName, container string, line []byte)
	// FailureReport, if set, is logged when the test failed, before the
	// pods stop.
	FailureReport func() string
}

// primaryConflist is the network configuration the node's primary CNI
// would have written; install-cni chains the mesh's plugin into it.
const primaryConflist = `{"cniVersion": "1.0.0", "name": "harness", "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}]}`

// StartMesh builds the images, starts the topology, the API server (with
// the DaemonSet, Deployment and ReplicaSet controllers) and the Runner,
// and applies crds/ and deploy/ rendered by kustomize with its images
// set to the built ones (by digest). It skips the test without root or
// the kube binaries (fails under CI=true without them). Everything stops
// when the test ends.
func StartMesh(t *testing.T, cfg MeshConfig) *Mesh {
	t.Helper()
	netns.RequireRoot(t)
	root, err := kube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	assets, err := kube.AssetsDir()
	if err != nil || len(kube.MissingBinaries(assets)) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kube binaries missing (run make kube-binaries): %v", err)
		}
		t.Skipf("kube binaries missing (run make kube-binaries): %v", err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	dir, built, err := BuildImages(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("building the images: %v", err)
	}
	t.Logf("images built in %v into %s", time.Since(start).Round(time.Millisecond), dir)
	m := &Mesh{Built: map[string]images.Built{}, cfg: cfg, pods: map[types.UID]*netns.Pod{}}
	for _, b := range built {
		m.Built[b.Ref.RepositoryStr()[strings.LastIndex(b.Ref.RepositoryStr(), "/")+1:]] = b
	}

	m.Topo = netns.New(t, netns.Options{Nodes: 2})
	m.Runner, err = New(Config{
		Images:       append([]string{dir}, cfg.Images...),
		ImageAliases: cfg.ImageAliases,
		ServiceVIPs:  cfg.ServiceVIPs,
		Network:      m.sandbox,
		// The pods' namespaces are the machine's (package netns).
		SharedHostPaths: []string{netns.Dir},
		BackOff:         time.Second,
		Output:          cfg.Output,
		Log:             log,
	})
	if err != nil {
		t.Fatal(err)
	}
	closeRunner := func() {
		if err := m.Runner.Close(); err != nil {
			t.Errorf("closing the runner: %v", err)
		}
	}
	// Runs last if kube.Start fails; a no-op after the Close below.
	t.Cleanup(closeRunner)
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	m.Cluster = kube.Start(t, kube.Config{
		Nodes:       []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}, {Name: "node-2", IP: netns.NodeIP(2)}},
		CRDDirs:     []string{crds},
		Controllers: append(append([]string(nil), kube.DefaultControllers...), "daemonset"),
		RunPod:      m.Runner.RunPod,
		StopPod:     m.Runner.StopPod,
		ExecPod:     m.Runner.ExecPod,
		Log:         log.With("component", "harness"),
	})
	// Stops the pods while the API server still runs (cleanups run last
	// first).
	t.Cleanup(func() {
		if t.Failed() && cfg.FailureReport != nil {
			t.Logf("containers' output (last lines):\n%s", cfg.FailureReport())
		}
		closeRunner()
	})
	m.Runner.Attach(m.Cluster)
	for _, n := range m.Cluster.Nodes() {
		conf := filepath.Join(m.Runner.NodeDir(n.Name), "etc", "cni", "net.d")
		if err := os.MkdirAll(conf, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(conf, "10-harness.conflist"), []byte(primaryConflist), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// deploy/ with its images pinned to what was built, as a user's
	// overlay would after pushing them.
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, filepath.Join(root, "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	k := "resources: [" + rel + "]\nimages:\n"
	for _, name := range []string{"istiod-lite", "ztunnel"} {
		b, ok := m.Built[name]
		if !ok {
			t.Fatalf("image %s was not built", name)
		}
		k += fmt.Sprintf("- {name: ambient-go/%s, digest: %s}\n", name, b.Digest)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	rendered := m.Cluster.MustKubectl(t, "kustomize", overlay)
	m.Cluster.MustKubectl(t, "wait", "crd", "--all", "--for=condition=Established", "--timeout=30s")
	if _, err := m.Cluster.KubectlStdin(ctx, strings.NewReader(rendered), "apply", "-f", "-"); err != nil {
		t.Fatalf("applying deploy/: %v", err)
	}
	return m
}

// sandbox is Config.Network of the Mesh's Runner (NetnsSandbox), keeping
// each pod's namespace for PodNS.
func (m *Mesh) sandbox(ctx context.Context, pod *corev1.Pod) (Sandbox, error) {
	sb, p, err := NetnsSandbox(ctx, m.Topo, m.Runner.NodeDir, pod)
	if err != nil || p == nil {
		return sb, err
	}
	if m.cfg.ServiceRoutes {
		if err := routeServices(p); err != nil {
			return Sandbox{}, errors.Join(err, sb.Release())
		}
	}
	m.mu.Lock()
	m.pods[pod.UID] = p
	m.mu.Unlock()
	release := sb.Release
	sb.Release = func() error {
		m.mu.Lock()
		delete(m.pods, pod.UID)
		m.mu.Unlock()
		return release()
	}
	return sb, nil
}

// routeServices adds a route to the service range via the pod's node.
func routeServices(p *netns.Pod) error {
	h, err := p.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	svc := netip.MustParsePrefix(kube.DefaultServiceCIDR)
	r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: svc.Addr().AsSlice(), Mask: net.CIDRMask(svc.Bits(), svc.Addr().BitLen())}, Gw: p.Node.Gateway.AsSlice()}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("route to the service range: %w", err)
	}
	return nil
}

// NetnsSandbox is a Config.Network played as a container runtime with the
// node's CNI configuration on topo: a pod gets a namespace on its node's
// bridge (the primary plugin's part, which the topology does), then every
// chained ztunnel-cni plugin of the node's conflist (under nodeDir(node);
// nil nodeDir runs none) runs ADD, and DEL when the sandbox goes; a
// hostNetwork pod runs in the node's namespace (and the returned
// *netns.Pod is nil).
func NetnsSandbox(ctx context.Context, topo *netns.Topology, nodeDir func(node string) string, pod *corev1.Pod) (Sandbox, *netns.Pod, error) {
	var i int
	if _, err := fmt.Sscanf(pod.Spec.NodeName, "node-%d", &i); err != nil || topo.Node(i) == nil {
		return Sandbox{}, nil, fmt.Errorf("node %q is not a topology node", pod.Spec.NodeName)
	}
	n := topo.Node(i)
	if pod.Spec.HostNetwork {
		return Sandbox{NS: n.NS, IPs: []netip.Addr{n.IP}}, nil, nil
	}
	p, err := n.AddPod(string(pod.UID)[:8])
	if err != nil {
		return Sandbox{}, nil, err
	}
	if err := cni(ctx, nodeDir, "ADD", pod, p); err != nil {
		return Sandbox{}, nil, errors.Join(err, p.Remove())
	}
	release := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return errors.Join(cni(ctx, nodeDir, "DEL", pod, p), p.Remove())
	}
	return Sandbox{NS: p.NS, IPs: []netip.Addr{p.IP}, Release: release}, p, nil
}

// cni runs the node's chained ztunnel-cni plugin, if install-cni put it
// there, as a runtime would: the binary from the node's /opt/cni/bin,
// the plugin's entry of the conflist with prevResult, in the node's
// namespace. The plugin runs on the machine, whose node root is
// nodeDir(node): its host paths (zdsSocket, podStateDir) are rewritten
// under it.
func cni(ctx context.Context, nodeDir func(string) string, command string, pod *corev1.Pod, p *netns.Pod) error {
	if nodeDir == nil {
		return nil
	}
	root := nodeDir(pod.Spec.NodeName)
	b, err := os.ReadFile(filepath.Join(root, "etc", "cni", "net.d", "10-harness.conflist"))
	if errors.Is(err, os.ErrNotExist) {
		return nil // the topology is the only network plugin
	}
	if err != nil {
		return err
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("conflist: %w", err)
	}
	for _, conf := range list.Plugins {
		if conf["type"] != "ztunnel-cni" {
			continue
		}
		for _, k := range []string{"zdsSocket", "podStateDir"} {
			if v, ok := conf[k].(string); ok {
				conf[k] = filepath.Join(root, v)
			}
		}
		conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
		conf["prevResult"] = map[string]any{
			"cniVersion": list.CNIVersion,
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": p.Path()}},
			"ips":        []any{map[string]any{"address": p.IP.String() + "/24", "gateway": p.Node.Gateway.String(), "interface": 0}},
		}
		stdin, err := json.Marshal(conf)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(root, "opt", "cni", "bin", "ztunnel-cni"))
		cmd.Env = []string{
			"CNI_COMMAND=" + command,
			"CNI_CONTAINERID=" + string(pod.UID),
			"CNI_NETNS=" + p.Path(),
			"CNI_IFNAME=eth0",
			fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s",
				pod.Namespace, pod.Name, pod.UID, pod.UID),
			"CNI_PATH=" + filepath.Join(root, "opt", "cni", "bin"),
		}
		cmd.Stdin = bytes.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := p.Node.Start(cmd); err != nil {
			return err
		}
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("CNI %s of %s/%s: %w: %s", command, pod.Namespace, pod.Name, err, strings.TrimSpace(out.String()))
		}
	}
	return nil
}

// PodNS returns the sandbox of namespace/name.
func (m *Mesh) PodNS(t *testing.T, namespace, name string) *netns.Pod {
	t.Helper()
	pod, err := m.Cluster.Clientset.CoreV1().Pods(namespace).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pods[pod.UID]
	if p == nil {
		t.Fatalf("pod %s/%s has no sandbox", namespace, name)
	}
	return p
}

// Rollout waits until deploy/'s Deployment and DaemonSet rolled out.
func (m *Mesh) Rollout(t *testing.T) {
	t.Helper()
	for _, what := range []string{"deployment/istiod-lite", "daemonset/ztunnel"} {
		c, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		_, err := m.Cluster.Kubectl(c, "rollout", "status", "-n", "istio-system", what, "--timeout=170s")
		cancel()
		if err != nil {
			t.Fatalf("%s did not roll out: %v", what, err)
		}
	}
}

// testWriter logs what is written to it through t.
type testWriter struct{ t *testing.T }

var _ io.Writer = testWriter{}

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
