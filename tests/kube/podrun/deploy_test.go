package podrun_test

import (
	"context"
	"encoding/json"
	"os"
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

// deployed is deploy/ running on the harness (podrun.Mesh), with the
// containers' output kept; tests that run their own Runner use its
// sandbox alone (topo, pods).
type deployed struct {
	kc     *kube.Cluster
	runner *podrun.Runner
	topo   *netns.Topology
	built  map[string]images.Built // by image name
	out    *output
	mesh   *podrun.Mesh

	mu   sync.Mutex
	pods map[types.UID]*netns.Pod // the sandboxes of non-hostNetwork pods, without mesh
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

// startDeployed is podrun.StartMesh with moreImages, keeping the
// containers' output.
func startDeployed(t *testing.T, moreImages ...string) *deployed {
	t.Helper()
	out := &output{}
	m := podrun.StartMesh(t, podrun.MeshConfig{Images: moreImages, Output: out.add, FailureReport: out.String})
	return &deployed{kc: m.Cluster, runner: m.Runner, topo: m.Topo, built: m.Built, out: out, mesh: m}
}

// sandbox is podrun.NetnsSandbox on the topology, with the CNI of
// d.runner's nodes, for tests that run their own Runner.
func (d *deployed) sandbox(ctx context.Context, pod *corev1.Pod) (podrun.Sandbox, error) {
	sb, p, err := podrun.NetnsSandbox(ctx, d.topo, func(node string) string { return d.runner.NodeDir(node) }, pod)
	if err != nil || p == nil {
		return sb, err
	}
	d.mu.Lock()
	d.pods[pod.UID] = p
	d.mu.Unlock()
	release := sb.Release
	sb.Release = func() error {
		d.mu.Lock()
		delete(d.pods, pod.UID)
		d.mu.Unlock()
		return release()
	}
	return sb, nil
}

// podNS returns the sandbox of namespace/name.
func (d *deployed) podNS(t *testing.T, namespace, name string) *netns.Pod {
	t.Helper()
	if d.mesh != nil {
		return d.mesh.PodNS(t, namespace, name)
	}
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
	d.mesh.Rollout(t)
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
