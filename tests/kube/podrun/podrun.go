// Package podrun is a container runtime for the tests/kube harness kubelet:
// its Runner.RunPod and Runner.StopPod are kube.Config.RunPod and StopPod,
// and run the containers of the pods the API server binds to harness nodes
// from the OCI images `make images` builds (package tests/images), as a
// kubelet and its runtime would; Runner.ExecPod (kube.Config.ExecPod)
// serves pods/exec in a running container (exec.go). StartMesh (mesh.go)
// installs deploy/ on a harness whose nodes it runs.
//
// For each pod it:
//
//   - creates the pod's sandbox through Config.Network (a network namespace
//     with the pod's IP; hostNetwork pods get their node's) and publishes
//     the IP with the pod Pending; a failed attempt (a CNI ADD failing) is
//     retried after 1 s, doubling up to 10 s, until the pod is deleted,
//     each failure a FailedCreatePodSandBox event of the node's kubelet
//     and in the pod's status (PodReadyToStartContainers False);
//   - finds each container's image in the OCI layouts (by tag, or by the
//     digest of its index or of a platform's manifest), unpacks its
//     flattened file system (mutate.Extract) once per manifest digest into
//     the cache, and reads its configuration (Entrypoint, Cmd, Env, User,
//     WorkingDir);
//   - materialises the pod's volumes in a directory of the host: emptyDir,
//     hostPath (under Config.NodeDir, one directory per node), ConfigMap
//     and Secret (waiting for them as a kubelet does), projected sources
//     (ServiceAccount tokens from the TokenRequest API, bound to the pod,
//     with the projection's audience and expiry and refreshed at 80 % of
//     their lifetime; ConfigMaps, Secrets, downward API) and, because the
//     harness API server runs without the ServiceAccount admission plugin,
//     the kube-api-access volume that plugin would add (token, ca.crt,
//     namespace at /var/run/secrets/kubernetes.io/serviceaccount);
//   - runs init containers in order (those with restartPolicy Always as
//     sidecars that keep running), then the containers, each as a process
//     started by re-executing the test binary as a small init (see
//     init.go): in a private mount namespace it mounts an overlay of the
//     image's file system (read-only if readOnlyRootFilesystem), /proc,
//     /dev, /sys, the volume mounts (bind mounts, subPath and readOnly
//     honoured) and the pod's /etc/hosts and /etc/resolv.conf, chroots
//     into it, takes the user and groups of the security context (or the
//     image's user), and executes the command: the pod spec's command and
//     args override the image's Entrypoint and Cmd as Kubernetes does, with
//     $(VAR) expanded. Nothing is mounted in the test's own mount
//     namespace, so nothing outlives the process; the process inherits the
//     pod's network namespace and never sees the test's working directory;
//   - gives the environment a kubelet gives: the image's, then the
//     container's (literal values, fieldRef metadata.name/namespace/uid,
//     spec.nodeName, spec.serviceAccountName, status.podIP/hostIP,
//     configMapKeyRef, secretKeyRef, envFrom), HOSTNAME and
//     KUBERNETES_SERVICE_HOST/PORT;
//   - probes readiness (httpGet, tcpSocket) from inside the pod's network
//     namespace, and writes the pod's status itself: phase, IPs,
//     conditions, and for every container its state, readiness, restart
//     count and last termination (RunPod returns no IPs, so the harness
//     kubelet leaves the status to it);
//   - restarts containers that exit under restartPolicy Always (and
//     OnFailure for failures) with the kubelet's back-off (Config.BackOff,
//     doubling up to five minutes);
//   - on StopPod sends SIGTERM, then SIGKILL after the grace period
//     (terminationGracePeriodSeconds, at most Config.MaxGrace), records
//     each container's exit (Runner.Exits), and removes the sandbox and
//     the pod's directory.
//
// The harness has no kube-proxy and no cluster DNS; the Runner stands in
// for what a pod needs of them. Each pod's /etc/hosts names every Service
// (name, name.ns, name.ns.svc, name.ns.svc.cluster.local) with the
// addresses of its EndpointSlices' endpoints (ready ones first; the
// ClusterIP when it has none), rewritten in place every
// Config.HostsInterval, and "kubernetes.default.svc" is 127.0.0.1, where a
// forwarder opened inside the pod's network namespace relays to the API
// server on the host's loopback (KUBERNETES_SERVICE_HOST=127.0.0.1, the
// API server's port). Liveness and startup probes, exec and gRPC probes,
// resource limits, seccomp and capability sets (a non-root process has
// none, a root one has all), user namespaces and service link variables
// other than the API server's are not implemented; a container asking for
// an unsupported volume, probe or environment source fails to start with
// an error in its status instead of running something else.
//
// Only Linux, as root: Runner.RunPod fails otherwise.
package podrun

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/netns"
)

// Sandbox is a pod's network: the namespace its containers run in and its
// addresses.
type Sandbox struct {
	// NS is the network namespace.
	NS netns.NS
	// IPs are the pod's addresses, the first being status.podIP.
	IPs []netip.Addr
	// Release removes the sandbox; nil for one that is not the pod's own
	// (a node's namespace for a hostNetwork pod).
	Release func() error
}

// Config configures a Runner. Network is required.
type Config struct {
	// Network creates the sandbox of a pod bound to a node (pod.Spec.NodeName);
	// for a hostNetwork pod it returns the node's namespace and address.
	// Required.
	Network func(ctx context.Context, pod *corev1.Pod) (Sandbox, error)
	// Images are directories holding OCI layouts as tests/images writes
	// them (<dir>/oci/<name>), searched in order; default: the mesh's
	// images built once per process for this machine's platform into the
	// repository's .cache/podrun/images (see BuildImages).
	Images []string
	// Cache is where image file systems are unpacked, one directory per
	// manifest digest; default the repository's .cache/podrun/rootfs.
	Cache string
	// Dir holds the pods' directories (volumes, writable layers, hosts
	// files) and the nodes' host paths; default a new temporary directory,
	// removed by Close.
	Dir string
	// NodeDir is the directory a node's hostPath volumes live under
	// (hostPath /etc/cni/net.d of node-1 is NodeDir("node-1")/etc/cni/net.d);
	// default <Dir>/nodes/<node>.
	NodeDir func(node string) string
	// SharedHostPaths are hostPath paths that are the machine's own on
	// every node instead of the node's directory: e.g. /var/run/netns when
	// Network makes the pods' network namespaces there (package netns),
	// so that a pod mounting it (ztunnel) opens them by path. Default none.
	SharedHostPaths []string
	// BackOff is the first delay before restarting a container that exited;
	// it doubles up to five minutes and resets after ten minutes of
	// running, as the kubelet's. Default 10s.
	BackOff time.Duration
	// MaxGrace bounds a pod's termination grace period; default 30s.
	MaxGrace time.Duration
	// HostsInterval is how often the pods' /etc/hosts are refreshed from
	// Services and EndpointSlices; default 1s.
	HostsInterval time.Duration
	// ServiceVIPs, if set, tells for which pods /etc/hosts names every
	// Service by its ClusterIP, as cluster DNS does (a mesh's capture
	// answers there); default none: the addresses of its endpoints.
	ServiceVIPs func(pod *corev1.Pod) bool
	// ImageAliases maps an image reference a pod names to the one looked
	// up in Images (e.g. a conformance suite's image to the harness's
	// build of it); default none.
	ImageAliases map[string]string
	// Output, if set, receives every container's output line by line,
	// prefixed with namespace/pod/container. Default: kept only in
	// Runner.Logs.
	Output func(pod types.NamespacedName, container string, line []byte)
	// Log; default discards.
	Log *slog.Logger
}

// Runner runs pods. Create it with New, hand RunPod and StopPod to
// kube.Start, then call Attach with the cluster.
type Runner struct {
	cfg     Config
	log     *slog.Logger
	tmpDir  string // Dir when it was made by New
	kc      atomic.Pointer[kube.Cluster]
	events  record.EventBroadcaster // set by Attach
	images  *imageStore
	hostsMu sync.Mutex
	hosts   []serviceHosts // the last Services and endpoints read
	vips    []serviceHosts // the same Services by ClusterIP (Config.ServiceVIPs)

	mu       sync.Mutex
	pods     map[types.UID]*pod
	starting map[types.UID]*pod    // creating their sandbox, not yet in pods
	stopped  map[types.UID]bool    // StopPod came while the sandbox was created
	fwds     map[string]*forwarder // by network namespace name
	exits    []Exit
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Exit is a container's termination, as the Runner recorded it.
type Exit struct {
	// Pod is namespace/name.
	Pod types.NamespacedName
	// Container is the container's name.
	Container string
	// Code is the exit code (128+signal for a signal).
	Code int32
	// Signal is the signal that ended it, if any.
	Signal string
	// Restarts is how often the container had been restarted before.
	Restarts int32
	// Stopped is true when the Runner ended it (the pod was deleted).
	Stopped bool
}

// New returns a Runner; call Close when done (after the cluster stopped
// calling it).
func New(cfg Config) (*Runner, error) {
	if cfg.Network == nil {
		return nil, errors.New("podrun: Config.Network is required")
	}
	r := &Runner{cfg: cfg, pods: map[types.UID]*pod{}, starting: map[types.UID]*pod{}, stopped: map[types.UID]bool{}, fwds: map[string]*forwarder{}}
	r.log = cmp.Or(cfg.Log, slog.New(slog.DiscardHandler)).With("component", "podrun")
	if r.cfg.Dir == "" {
		d, err := os.MkdirTemp("", "podrun-")
		if err != nil {
			return nil, err
		}
		r.cfg.Dir, r.tmpDir = d, d
	}
	if r.cfg.NodeDir == nil {
		r.cfg.NodeDir = func(node string) string { return filepath.Join(r.cfg.Dir, "nodes", node) }
	}
	r.cfg.BackOff = cmp.Or(r.cfg.BackOff, 10*time.Second)
	r.cfg.MaxGrace = cmp.Or(r.cfg.MaxGrace, 30*time.Second)
	r.cfg.HostsInterval = cmp.Or(r.cfg.HostsInterval, time.Second)
	r.images = &imageStore{dirs: cfg.Images, aliases: cfg.ImageAliases, cache: cfg.Cache, log: r.log, unpacked: map[string]*unpackOnce{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Attach gives the Runner the cluster whose pods it runs, and starts
// refreshing the pods' /etc/hosts. RunPod fails before it.
func (r *Runner) Attach(kc *kube.Cluster) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || !r.kc.CompareAndSwap(nil, kc) {
		return
	}
	r.events = record.NewBroadcaster(record.WithContext(r.ctx))
	r.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kc.Clientset.CoreV1().Events("")})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.refreshHosts()
	}()
}

// recorder records events as node's kubelet.
func (r *Runner) recorder(node string) record.EventRecorder {
	return r.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: node})
}

// NodeDir returns the directory holding node's host paths.
func (r *Runner) NodeDir(node string) string { return r.cfg.NodeDir(node) }

// Close stops every pod still running (as StopPod does), stops the
// Runner's own goroutines and removes Config.Dir if New made it. RunPod
// fails after it; a second Close does nothing.
func (r *Runner) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	var pods []*pod
	for _, p := range r.pods {
		pods = append(pods, p)
	}
	r.mu.Unlock()
	var errs []error
	for _, p := range pods {
		errs = append(errs, r.stop(p))
	}
	r.cancel()
	r.wg.Wait()
	if r.events != nil {
		r.events.Shutdown()
	}
	if r.tmpDir != "" {
		errs = append(errs, os.RemoveAll(r.tmpDir))
	}
	return errors.Join(errs...)
}

// Exits returns the container exits recorded so far, oldest first.
func (r *Runner) Exits() []Exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.exits)
}

func (r *Runner) recordExit(e Exit) {
	r.mu.Lock()
	r.exits = append(r.exits, e)
	r.mu.Unlock()
}

// Logs returns the output a pod's container wrote (its last 256 KiB),
// across restarts; empty for an unknown pod or container.
func (r *Runner) Logs(namespace, name, container string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pods {
		if p.obj.Namespace == namespace && p.obj.Name == name {
			for _, c := range p.ctrs {
				if c.spec.Name == container {
					return c.out.String()
				}
			}
		}
	}
	return ""
}

// RunPod is kube.Config.RunPod: it starts the pod in the background and
// returns: the sandbox is created (retried with back-off while that fails,
// the failure in the pod's status and a FailedCreatePodSandBox event, as
// a kubelet does), its IPs are published (the pod stays Pending), then its
// containers start; status changes follow as they start, become ready and
// exit. It returns no IPs, which tells the harness kubelet that the
// Runner writes the pod's status itself. ctx ending stops the sandbox's
// retries, not a started pod (StopPod does).
func (r *Runner) RunPod(ctx context.Context, obj *corev1.Pod) ([]netip.Addr, error) {
	kc := r.kc.Load()
	if kc == nil {
		return nil, errors.New("podrun: RunPod before Attach")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("podrun: running containers needs root (mount namespaces, chroot)")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("podrun: runner closed")
	}
	if _, ok := r.pods[obj.UID]; ok || r.starting[obj.UID] != nil {
		return nil, fmt.Errorf("podrun: pod %s/%s already runs", obj.Namespace, obj.Name)
	}
	p := r.newPod(kc, obj.DeepCopy())
	r.starting[obj.UID] = p
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.startPod(ctx, p)
	}()
	return nil, nil
}

// startPod creates p's sandbox, then runs p, unless it stopped meanwhile.
func (r *Runner) startPod(ctx context.Context, p *pod) {
	defer close(p.created)
	stop := context.AfterFunc(ctx, p.cancel)
	err := p.createSandbox()
	stop()
	r.mu.Lock()
	delete(r.starting, p.obj.UID)
	stopped := r.stopped[p.obj.UID]
	delete(r.stopped, p.obj.UID)
	if err == nil && !r.closed && !stopped {
		r.pods[p.obj.UID] = p
		p.start()
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	if err != nil && p.ctx.Err() == nil {
		p.log.Warn("giving up on the pod's sandbox; the pod stays Pending", "err", err)
	}
	if cerr := p.cleanup(); cerr != nil {
		p.log.Warn("removing the pod's sandbox failed", "err", cerr)
	}
}

// StopPod is kube.Config.StopPod: it stops the pod's containers (SIGTERM,
// SIGKILL after the grace period), records their exits and removes the
// sandbox; for a pod whose sandbox is still being created, it ends the
// attempts and waits (at most Config.MaxGrace) until what they made is
// removed.
func (r *Runner) StopPod(_ context.Context, obj *corev1.Pod) {
	r.mu.Lock()
	p, starting := r.pods[obj.UID], r.starting[obj.UID]
	if p == nil && starting != nil {
		r.stopped[obj.UID] = true
	}
	r.mu.Unlock()
	if p == nil && starting != nil {
		starting.cancel()
		select {
		case <-starting.created:
		case <-time.After(r.cfg.MaxGrace):
			r.log.Warn("the pod's sandbox attempt did not end", "pod", starting.key.String(), "wait", r.cfg.MaxGrace)
		}
		return
	}
	if p == nil {
		return
	}
	if err := r.stop(p); err != nil {
		r.log.Warn("stopping pod failed", "pod", p.key.String(), "err", err)
	}
}

func (r *Runner) stop(p *pod) error {
	err := p.stop()
	r.mu.Lock()
	delete(r.pods, p.obj.UID)
	r.mu.Unlock()
	return err
}
