// Package kube is a test harness that runs a real Kubernetes control plane
// on loopback: etcd and kube-apiserver started by controller-runtime's
// envtest, plus a kube-controller-manager process running the controllers
// the mesh relies on (endpointslice, namespace, garbagecollector,
// serviceaccount, deployment, replicaset). There is no scheduler and no
// kubelet: the harness plays both for the Node objects it creates. It binds
// pending pods to its nodes, lets the test "run" them (RunPod: create the
// network namespace, call the CNI plugin, return the pod IPs), writes pod
// IPs and readiness through the status subresource, and force-deletes
// terminating pods after StopPod. Its kubelets also serve the API server's
// pods/portforward and pods/exec (kubectl port-forward, kubectl exec) with
// k8s.io/cri-streaming, reaching the pods through DialPod and ExecPod.
//
// The binaries come from `make kube-binaries` (tools/kube/build.sh); see
// AssetsDir. Start skips the test when they are missing, and fails it
// instead when CI=true, so CI can never silently test nothing.
//
// The API server's service CIDR is 198.18.128.0/20, inside the benchmarking
// range 198.18.0.0/15 the mesh tests use; all listeners are on 127.0.0.1.
package kube

import (
	"bytes"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// DefaultServiceCIDR is the API server's service cluster IP range.
const DefaultServiceCIDR = "198.18.128.0/20"

// AdvertiseAddress is the API server's --advertise-address, in 198.18.0.0/15
// and not assigned to any interface.
const AdvertiseAddress = "198.18.255.254"

// DefaultControllers are the kube-controller-manager controllers started
// when Config.Controllers is empty.
var DefaultControllers = []string{
	"endpointslice", "namespace", "garbagecollector", "serviceaccount", "deployment", "replicaset",
}

// Node is a harness node: a Node object the harness plays kubelet for.
type Node struct {
	Name string
	// IP is the node's InternalIP and the HostIP of its pods; optional.
	IP netip.Addr
}

// Config configures a Cluster. The zero value starts nodes node-a and node-b
// with the default service CIDR and controllers and no CRDs.
type Config struct {
	// Nodes to create; default node-a and node-b.
	Nodes []Node
	// ServiceCIDR is --service-cluster-ip-range; default DefaultServiceCIDR.
	ServiceCIDR string
	// Controllers for kube-controller-manager; default DefaultControllers.
	Controllers []string
	// CRDDirs are directories of CRD YAML installed before Start returns
	// (for example the repository's crds/, see CRDDir).
	CRDDirs []string
	// RunPod is called once for each pod bound to a harness node that has no
	// IP yet, in its own goroutine: pods the test creates, and those the
	// controllers create (a Deployment's, such as the waypoint istiod-lite
	// deploys for a Gateway, which the harness schedules). It returns the
	// pod's IPs; the harness then marks the pod Running and Ready
	// (SetPodReady flips readiness later). An error is logged and the pod
	// stays Pending. No IPs and no error: RunPod writes the pod's status
	// itself (package podrun, whose probes decide readiness). Nil: pods
	// stay Pending until the test calls SetPodStatus.
	RunPod func(ctx context.Context, pod *corev1.Pod) ([]netip.Addr, error)
	// StopPod is called for a terminating pod on a harness node before the
	// harness force-deletes it. Nil: nothing is called.
	StopPod func(ctx context.Context, pod *corev1.Pod)
	// DialPod connects to port inside a pod, for pods/portforward (kubectl
	// port-forward reaches the harness kubelet through the API server, and
	// the kubelet's runtime dials here), as a container runtime does in
	// the pod's network namespace. Nil: the pod's IP (status.podIP) on
	// port, which serves pods the test runs on loopback addresses.
	DialPod func(ctx context.Context, pod *corev1.Pod, port int32) (net.Conn, error)
	// ExecPod runs cmd in container of pod, for pods/exec (kubectl exec,
	// without a TTY). Nil: exec fails with an error saying so.
	ExecPod func(ctx context.Context, pod *corev1.Pod, container string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error
	// Log receives harness and controller-runtime logs; default discards.
	// The first Start in a process installs it as controller-runtime's
	// global logger.
	Log *slog.Logger
}

// Cluster is a running control plane. Its fields are read-only.
type Cluster struct {
	// REST is an admin (system:masters) client config.
	REST *rest.Config
	// Client is a controller-runtime client for REST.
	Client client.Client
	// Clientset is a client-go clientset for REST.
	Clientset kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string
	// Assets is the directory holding the binaries.
	Assets string
	// Env is the underlying envtest environment.
	Env *envtest.Environment

	cfg   Config
	log   *slog.Logger
	dir   string
	nodes map[string]Node
	kcm   *process

	kubeletPKI *kubeletPKI

	kubeletCancel context.CancelFunc
	kubeletDone   chan struct{}
}

var setLoggerOnce sync.Once

// Start starts etcd, kube-apiserver and kube-controller-manager, creates the
// nodes and returns when the API server serves requests. Everything is
// stopped by t.Cleanup. It calls t.Skip when the binaries are missing, or
// t.Fatal when CI=true.
func Start(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	assets, err := AssetsDir()
	if err != nil {
		skipOrFail(t, "kube binaries: %v", err)
	}
	if missing := MissingBinaries(assets); len(missing) > 0 {
		skipOrFail(t, "kube binaries %v missing in %s: run `make kube-binaries` (about 7 minutes once, cached)", missing, assets)
	}
	if len(cfg.Nodes) == 0 {
		cfg.Nodes = []Node{{Name: "node-a"}, {Name: "node-b"}}
	}
	if cfg.ServiceCIDR == "" {
		cfg.ServiceCIDR = DefaultServiceCIDR
	}
	if len(cfg.Controllers) == 0 {
		cfg.Controllers = DefaultControllers
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	setLoggerOnce.Do(func() { ctrllog.SetLogger(logr.FromSlogHandler(log.Handler())) })
	log = log.With("component", "kube-harness")

	c := &Cluster{Assets: assets, cfg: cfg, log: log, dir: t.TempDir(), nodes: map[string]Node{}}
	for _, n := range cfg.Nodes {
		c.nodes[n.Name] = n
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        cfg.CRDDirs,
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  20 * time.Second,
	}
	api := env.ControlPlane.GetAPIServer()
	api.Configure().Set("service-cluster-ip-range", cfg.ServiceCIDR)
	// The address published in the kubernetes Service's endpoints; the
	// endpoint reconciler refuses loopback, and deriving one from the
	// default route fails on hosts without one. Nothing connects to it.
	api.Configure().Set("advertise-address", AdvertiseAddress)
	// The harness kubelets serve pods/portforward and pods/exec (see
	// streaming.go) with certificates of their own CA.
	if c.kubeletPKI, err = newKubeletPKI(c.dir); err != nil {
		t.Fatalf("kubelet certificates: %v", err)
	}
	api.Configure().Set("kubelet-certificate-authority", c.kubeletPKI.caFile)
	api.Configure().Set("kubelet-client-certificate", c.kubeletPKI.clientCertFile)
	api.Configure().Set("kubelet-client-key", c.kubeletPKI.clientKeyFile)
	api.Configure().Set("kubelet-preferred-address-types", "ExternalIP,InternalIP,Hostname")
	c.Env = env
	start := time.Now()
	restCfg, err := env.Start()
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", err)
	}
	c.REST = restCfg
	c.Kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	if c.Client, err = client.New(restCfg, client.Options{}); err != nil {
		t.Fatal(err)
	}
	if c.Clientset, err = kubernetes.NewForConfig(restCfg); err != nil {
		t.Fatal(err)
	}
	log.Info("api server started", "url", restCfg.Host, "elapsed", time.Since(start).Round(time.Millisecond))

	if err := c.startControllerManager(t); err != nil {
		t.Fatalf("starting kube-controller-manager: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range cfg.Nodes {
		if err := c.createNode(ctx, n); err != nil {
			t.Fatalf("creating node %s: %v", n.Name, err)
		}
	}
	c.startKubelet(t)
	return c
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true, so not skipping: "+format, args...)
	}
	t.Skipf(format, args...)
}

// CRDDir returns the repository's crds/ directory.
func CRDDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "crds"), nil
}

// Nodes returns the harness nodes.
func (c *Cluster) Nodes() []Node { return append([]Node(nil), c.cfg.Nodes...) }

// User returns a client config authenticating as name in groups (client
// certificate signed by the API server's client CA).
func (c *Cluster) User(name string, groups ...string) (*rest.Config, error) {
	u, err := c.Env.AddUser(envtest.User{Name: name, Groups: groups}, &rest.Config{QPS: 1000, Burst: 2000})
	if err != nil {
		return nil, fmt.Errorf("adding user %s: %w", name, err)
	}
	return u.Config(), nil
}

// Kubectl runs kubectl against the cluster as admin and returns its standard
// output. The error includes standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin.
func (c *Cluster) KubectlStdin(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Assets, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustKubectl runs kubectl with a 30 s timeout and fails the test on error.
func (c *Cluster) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *Cluster) createNode(ctx context.Context, n Node) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   n.Name,
		Labels: map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux"},
	}}
	created, err := c.Clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "ambient-go test harness", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	if n.IP.IsValid() {
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
	}
	created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	_, err = c.Clientset.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// CreatePod creates pod bound to node (spec.nodeName) as a scheduler would.
// An empty container list gets one container "app"; an empty service
// account becomes "default". With Config.RunPod set, the harness then runs
// it; otherwise call SetPodStatus.
func (c *Cluster) CreatePod(ctx context.Context, node string, pod *corev1.Pod) (*corev1.Pod, error) {
	if _, ok := c.nodes[node]; !ok && node != "" {
		return nil, fmt.Errorf("node %q is not a harness node", node)
	}
	pod = pod.DeepCopy()
	pod.Spec.NodeName = node
	if len(pod.Spec.Containers) == 0 {
		pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "ambient-go/app:test"}}
	}
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = "default"
	}
	if pod.Namespace == "" {
		pod.Namespace = metav1.NamespaceDefault
	}
	return c.Clientset.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
}

// PodStatus is the part of a pod's status the harness kubelet writes.
type PodStatus struct {
	IPs   []netip.Addr
	Ready bool
}

// SetPodStatus marks the pod Running with the given IPs and readiness
// through the status subresource, as a kubelet would.
func (c *Cluster) SetPodStatus(ctx context.Context, namespace, name string, s PodStatus) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := c.Clientset.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c.fillStatus(pod, s)
		_, err = c.Clientset.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
}

func (c *Cluster) fillStatus(pod *corev1.Pod, s PodStatus) {
	now := metav1.Now()
	st := &pod.Status
	st.Phase = corev1.PodRunning
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.PodIP, st.PodIPs = "", nil
	for i, ip := range s.IPs {
		if i == 0 {
			st.PodIP = ip.String()
		}
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if n, ok := c.nodes[pod.Spec.NodeName]; ok && n.IP.IsValid() {
		st.HostIP = n.IP.String()
		st.HostIPs = []corev1.HostIP{{IP: n.IP.String()}}
	}
	ready := corev1.ConditionFalse
	if s.Ready {
		ready = corev1.ConditionTrue
	}
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
	}
	st.ContainerStatuses = nil
	for _, ctr := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: ctr.Name, Image: ctr.Image, Ready: s.Ready, Started: &s.Ready,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
}

// SetPodReady flips a running pod's readiness, keeping its IPs, as a
// kubelet does when a readiness probe starts or stops failing (for
// example a waypoint pod run by Config.RunPod going unready).
func (c *Cluster) SetPodReady(ctx context.Context, namespace, name string, ready bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := c.Clientset.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var ips []netip.Addr
		for _, ip := range pod.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				return fmt.Errorf("pod %s/%s: %w", namespace, name, err)
			}
			ips = append(ips, a)
		}
		if len(ips) == 0 {
			return fmt.Errorf("pod %s/%s is not running (no IP)", namespace, name)
		}
		c.fillStatus(pod, PodStatus{IPs: ips, Ready: ready})
		_, err = c.Clientset.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
}

// BindPod binds a pending pod to node through the binding subresource, as
// the scheduler does.
func (c *Cluster) BindPod(ctx context.Context, namespace, name, node string) error {
	return c.Clientset.CoreV1().Pods(namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
}

// ForceDeletePod deletes the pod immediately (grace period 0), as a kubelet
// does once the containers are gone. A missing pod is not an error.
func (c *Cluster) ForceDeletePod(ctx context.Context, namespace, name string) error {
	err := c.Clientset.CoreV1().Pods(namespace).Delete(ctx, name, *metav1.NewDeleteOptions(0))
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// ServiceAccountToken returns a token for namespace/serviceAccount with the
// given audience (TokenRequest API). With pod set, the token is bound to the
// pod, and the API server records the pod's node in it (as the kubelet's
// projected tokens are).
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, serviceAccount, audience string, pod *corev1.Pod) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{audience},
		ExpirationSeconds: ptr(int64(3600)),
	}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		}
	}
	resp, err := c.Clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, serviceAccount, err)
	}
	return resp.Status.Token, nil
}

// WaitForServiceAccount waits until the serviceaccount controller created
// namespace/name (for example "default" in a new namespace).
func (c *Cluster) WaitForServiceAccount(ctx context.Context, namespace, name string) error {
	return wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := c.Clientset.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

func ptr[T any](v T) *T { return &v }

// process is a child process whose output is kept for failure reports.
type process struct {
	cmd  *exec.Cmd
	out  *TailBuffer
	done chan struct{}
	err  error
}

func (c *Cluster) startControllerManager(t testing.TB) error {
	u, err := c.Env.AddUser(envtest.User{Name: "system:kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return err
	}
	kcPath := filepath.Join(c.dir, "kube-controller-manager.kubeconfig")
	if err := os.WriteFile(kcPath, kc, 0o600); err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + kcPath,
		"--controllers=" + strings.Join(c.cfg.Controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--bind-address=127.0.0.1",
		"--use-service-account-credentials=false",
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR,
	}
	p := &process{out: NewTailBuffer(64 << 10), done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(c.Assets, "kube-controller-manager"), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return err
	}
	c.kcm = p
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("kube-controller-manager output (tail):\n%s", p.out.String())
		}
	})
	// The controller manager is up once the serviceaccount controller (or
	// any controller) acts; give it a short window to fail on bad flags.
	select {
	case <-p.done:
		out := p.out.String()
		if len(out) > 2048 {
			out = "..." + out[len(out)-2048:]
		}
		return fmt.Errorf("exited: %v: %s", p.err, out)
	case <-time.After(300 * time.Millisecond):
	}
	return nil
}

// ControllerManagerOutput returns the tail of kube-controller-manager's output.
func (c *Cluster) ControllerManagerOutput() string { return c.kcm.out.String() }

// podKey names a pod for the kubelet's bookkeeping.
func podKey(p *corev1.Pod) types.NamespacedName {
	return types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
}
