package podrun_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// deployed is deploy/ running on the harness: a two-node network namespace
// topology, the harness API server, and the Runner as the nodes' container
// runtime.
type deployed struct {
	kc     *kube.Cluster
	runner *podrun.Runner
	topo   *netns.Topology
	built  map[string]images.Built // by image name
	out    *output

	mu   sync.Mutex
	pods map[types.UID]*netns.Pod // the sandboxes of non-hostNetwork pods
}

// output keeps the containers' lines, for waiting on a log and for
// failure reports.
type output struct {
	mu    sync.Mutex
	lines []outputLine
}

type outputLine struct {
	pod  types.NamespacedName
	ctr  string
	line string
}

func (o *output) add(pod types.NamespacedName, ctr string, line []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lines = append(o.lines, outputLine{pod, ctr, string(line)})
	if len(o.lines) > 50000 {
		o.lines = o.lines[len(o.lines)-50000:]
	}
}

// since returns the lines from index from on.
func (o *output) since(from int) []outputLine {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]outputLine(nil), o.lines[min(from, len(o.lines)):]...)
}

// mark is the number of lines so far, to wait for later ones.
func (o *output) mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.lines)
}

// wait waits (timeout at most) for a line after from that match accepts,
// and returns it.
func (o *output) wait(from int, timeout time.Duration, match func(outputLine) bool) (outputLine, bool) {
	deadline := time.Now().Add(timeout)
	for {
		o.mu.Lock()
		for i := min(from, len(o.lines)); i < len(o.lines); i++ {
			if match(o.lines[i]) {
				l := o.lines[i]
				o.mu.Unlock()
				return l, true
			}
		}
		o.mu.Unlock()
		if time.Now().After(deadline) {
			return outputLine{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitJSON waits (timeout at most) for a JSON line after from of
// container ctr of pod namespace/name that match accepts, and returns it
// decoded.
func (o *output) waitJSON(from int, timeout time.Duration, namespace, name, ctr string, match func(map[string]any) bool) (map[string]any, bool) {
	var got map[string]any
	_, ok := o.wait(from, timeout, func(l outputLine) bool {
		if l.pod.Namespace != namespace || l.pod.Name != name || l.ctr != ctr {
			return false
		}
		var m map[string]any
		if json.Unmarshal([]byte(l.line), &m) != nil || !match(m) {
			return false
		}
		got = m
		return true
	})
	return got, ok
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	for _, l := range o.lines[max(0, len(o.lines)-300):] {
		b.WriteString(l.pod.String() + "/" + l.ctr + ": " + l.line + "\n")
	}
	return b.String()
}

// primaryConflist is the network configuration the node's primary CNI
// would have written; install-cni chains the mesh's plugin into it.
const primaryConflist = `{"cniVersion": "1.0.0", "name": "harness", "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}]}`

// startDeployed builds the images, starts the topology, the API server
// (with the DaemonSet controller) and the Runner, and applies crds/ and
// deploy/ rendered by kustomize with its images set to the built ones (by
// digest).
func startDeployed(t *testing.T, moreImages ...string) *deployed {
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
	dir, built, err := podrun.BuildImages(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("building the images: %v", err)
	}
	t.Logf("images built in %v into %s", time.Since(start).Round(time.Millisecond), dir)
	d := &deployed{built: map[string]images.Built{}, out: &output{}, pods: map[types.UID]*netns.Pod{}}
	for _, b := range built {
		d.built[b.Ref.RepositoryStr()[strings.LastIndex(b.Ref.RepositoryStr(), "/")+1:]] = b
	}

	d.topo = netns.New(t, netns.Options{Nodes: 2})
	d.runner, err = podrun.New(podrun.Config{
		Images:  append([]string{dir}, moreImages...),
		Network: d.sandbox,
		// The pods' namespaces are the machine's (package netns).
		SharedHostPaths: []string{netns.Dir},
		BackOff:         time.Second,
		Output:          d.out.add,
		Log:             log,
	})
	if err != nil {
		t.Fatal(err)
	}
	closeRunner := func() {
		if err := d.runner.Close(); err != nil {
			t.Errorf("closing the runner: %v", err)
		}
	}
	// Runs last if kube.Start fails; a no-op after the Close below.
	t.Cleanup(closeRunner)
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	d.kc = kube.Start(t, kube.Config{
		Nodes:       []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}, {Name: "node-2", IP: netns.NodeIP(2)}},
		CRDDirs:     []string{crds},
		Controllers: append(append([]string(nil), kube.DefaultControllers...), "daemonset"),
		RunPod:      d.runner.RunPod,
		StopPod:     d.runner.StopPod,
		Log:         log.With("component", "harness"),
	})
	// Stops the pods while the API server still runs (cleanups run last
	// first).
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containers' output (last lines):\n%s", d.out)
		}
		closeRunner()
	})
	d.runner.Attach(d.kc)
	for _, n := range d.kc.Nodes() {
		conf := filepath.Join(d.runner.NodeDir(n.Name), "etc", "cni", "net.d")
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
		b, ok := d.built[name]
		if !ok {
			t.Fatalf("image %s was not built", name)
		}
		k += fmt.Sprintf("- {name: ambient-go/%s, digest: %s}\n", name, b.Digest)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	rendered := d.kc.MustKubectl(t, "kustomize", overlay)
	d.kc.MustKubectl(t, "wait", "crd", "--all", "--for=condition=Established", "--timeout=30s")
	if _, err := d.kc.KubectlStdin(ctx, strings.NewReader(rendered), "apply", "-f", "-"); err != nil {
		t.Fatalf("applying deploy/: %v", err)
	}
	return d
}

// sandbox is podrun.Config.Network, played as a container runtime with
// the node's CNI configuration: a pod gets a namespace on its node's
// bridge (the primary plugin's part, which the topology does), then every
// chained ztunnel-cni plugin of the node's conflist runs ADD (DEL when the
// sandbox goes); a hostNetwork pod runs in the node's namespace.
func (d *deployed) sandbox(ctx context.Context, pod *corev1.Pod) (podrun.Sandbox, error) {
	var i int
	if _, err := fmt.Sscanf(pod.Spec.NodeName, "node-%d", &i); err != nil || d.topo.Node(i) == nil {
		return podrun.Sandbox{}, fmt.Errorf("node %q is not a topology node", pod.Spec.NodeName)
	}
	n := d.topo.Node(i)
	if pod.Spec.HostNetwork {
		return podrun.Sandbox{NS: n.NS, IPs: []netip.Addr{n.IP}}, nil
	}
	p, err := n.AddPod(string(pod.UID)[:8])
	if err != nil {
		return podrun.Sandbox{}, err
	}
	if err := d.cni(ctx, "ADD", pod, p); err != nil {
		return podrun.Sandbox{}, errors.Join(err, p.Remove())
	}
	d.mu.Lock()
	d.pods[pod.UID] = p
	d.mu.Unlock()
	release := func() error {
		d.mu.Lock()
		delete(d.pods, pod.UID)
		d.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return errors.Join(d.cni(ctx, "DEL", pod, p), p.Remove())
	}
	return podrun.Sandbox{NS: p.NS, IPs: []netip.Addr{p.IP}, Release: release}, nil
}

// cni runs the node's chained ztunnel-cni plugin, if install-cni put it
// there, as a runtime would: the binary from the node's /opt/cni/bin,
// the plugin's entry of the conflist with prevResult, in the node's
// namespace. The plugin runs on the machine, whose node root is
// Runner.NodeDir: its host paths (zdsSocket, podStateDir) are rewritten
// under it.
func (d *deployed) cni(ctx context.Context, command string, pod *corev1.Pod, p *netns.Pod) error {
	root := d.runner.NodeDir(pod.Spec.NodeName)
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

// podNS returns the sandbox of namespace/name.
func (d *deployed) podNS(t *testing.T, namespace, name string) *netns.Pod {
	t.Helper()
	pod, err := d.kc.Clientset.CoreV1().Pods(namespace).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pods[pod.UID]
	if p == nil {
		t.Fatalf("pod %s/%s has no sandbox", namespace, name)
	}
	return p
}

// rollout waits until deploy/'s Deployment and DaemonSet rolled out.
func (d *deployed) rollout(t *testing.T) {
	t.Helper()
	for _, what := range []string{"deployment/istiod-lite", "daemonset/ztunnel"} {
		c, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		_, err := d.kc.Kubectl(c, "rollout", "status", "-n", "istio-system", what, "--timeout=170s")
		cancel()
		if err != nil {
			t.Fatalf("%s did not roll out: %v", what, err)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// TestDeployRunsFromImages applies deploy/ (rendered by kustomize, images
// pinned to the digests just built) and waits until the istiod-lite
// Deployment and the ztunnel DaemonSet are rolled out: every pod Ready by
// its readiness probe, run by the harness kubelet from those images, one
// ztunnel on every node.
func TestDeployRunsFromImages(t *testing.T) {
	d := startDeployed(t)
	kc := d.kc
	ctx := t.Context()
	d.rollout(t)

	pods, err := kc.Clientset.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ztunnelNodes := map[string]bool{}
	var istiod int
	for _, p := range pods.Items {
		if !podReady(&p) {
			t.Errorf("pod %s on %s is not Ready: %+v", p.Name, p.Spec.NodeName, p.Status.Conditions)
		}
		image := "istiod-lite"
		switch p.Labels["app"] {
		case "ztunnel":
			ztunnelNodes[p.Spec.NodeName] = true
			image = "ztunnel"
		case "istiod-lite":
			istiod++
		default:
			t.Errorf("unexpected pod %s in istio-system", p.Name)
			continue
		}
		want := d.built[image]
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if !cs.Ready || cs.State.Running == nil {
				t.Errorf("pod %s container %s: ready %v, state %+v; want running and ready", p.Name, cs.Name, cs.Ready, cs.State)
			}
			if !strings.Contains(cs.Image, want.Digest.String()) {
				t.Errorf("pod %s container %s image %s, want the built %s", p.Name, cs.Name, cs.Image, want.Digest)
			}
			if !strings.Contains(cs.ImageID, "@sha256:") {
				t.Errorf("pod %s container %s imageID %q, want the run manifest's digest", p.Name, cs.Name, cs.ImageID)
			}
		}
	}
	if istiod != 1 {
		t.Errorf("%d istiod-lite pods, want 1", istiod)
	}
	for _, n := range kc.Nodes() {
		if !ztunnelNodes[n.Name] {
			t.Errorf("no ztunnel pod on node %s (pods on %v)", n.Name, ztunnelNodes)
		}
	}
	// install-cni chained the plugin into each node's conflist and
	// copied it into the node's CNI bin directory.
	for _, n := range kc.Nodes() {
		nd := d.runner.NodeDir(n.Name)
		conf, err := os.ReadFile(filepath.Join(nd, "etc", "cni", "net.d", "10-harness.conflist"))
		if err != nil || !strings.Contains(string(conf), `"ztunnel-cni"`) || !strings.Contains(string(conf), `"ptp"`) {
			t.Errorf("node %s conflist = %s, %v; want ptp then ztunnel-cni", n.Name, conf, err)
		}
		if _, err := os.Stat(filepath.Join(nd, "opt", "cni", "bin", "ztunnel-cni")); err != nil {
			t.Errorf("node %s: plugin not installed: %v", n.Name, err)
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
