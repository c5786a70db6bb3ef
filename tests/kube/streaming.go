package kube

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	osexec "os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/util/retry"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// KubeletAddress is where the harness kubelets listen (one port per node),
// published in each Node's status as its ExternalIP with the port in
// status.daemonEndpoints.kubeletEndpoint; the API server is started with
// --kubelet-preferred-address-types=ExternalIP,... so that it reaches them
// there (the nodes' InternalIP, Node.IP, is the pods' HostIP, which the
// host may have no route to).
const KubeletAddress = "127.0.0.1"

// criPrefix is where the kubelet mounts the CRI streaming server: the
// kubelet asks it for a one-time URL (GetPortForward, GetExec), as a real
// kubelet asks the container runtime, and serves that URL in-process
// instead of proxying to a runtime's own listener.
const criPrefix = "/cri/"

// kubeletServer is one node's kubelet API: /portForward and /exec, the
// endpoints the API server proxies pods/portforward and pods/exec to.
type kubeletServer struct {
	c      *Cluster
	node   string
	lister corelisters.PodLister
	cri    streaming.Server
	srv    *http.Server
	ln     *trackingListener
	done   chan struct{}
}

// startKubeletServers starts one kubelet server per harness node on
// KubeletAddress and registers it in the Node's status, as a kubelet does.
func (c *Cluster) startKubeletServers(ctx context.Context, lister corelisters.PodLister) ([]*kubeletServer, error) {
	var out []*kubeletServer
	for _, n := range c.cfg.Nodes {
		ks, err := c.startKubeletServer(n.Name, lister)
		if err != nil {
			closeKubeletServers(out)
			return nil, fmt.Errorf("kubelet of %s: %w", n.Name, err)
		}
		out = append(out, ks)
		if err := c.registerKubelet(ctx, n.Name, ks.ln.Addr().(*net.TCPAddr).Port); err != nil {
			closeKubeletServers(out)
			return nil, fmt.Errorf("registering the kubelet of %s: %w", n.Name, err)
		}
	}
	return out, nil
}

func closeKubeletServers(ss []*kubeletServer) {
	for _, s := range ss {
		s.close()
	}
}

func (c *Cluster) startKubeletServer(node string, lister corelisters.PodLister) (*kubeletServer, error) {
	ks := &kubeletServer{c: c, node: node, lister: lister, done: make(chan struct{})}
	cfg := streaming.DefaultConfig
	cfg.Addr = "unused" // the server is served in-process, never Start()ed
	cfg.BaseURL = &url.URL{Scheme: "https", Host: "kubelet.invalid", Path: criPrefix}
	cfg.StreamIdleTimeout = 5 * time.Minute
	cri, err := streaming.NewServer(cfg, &runtime{ks: ks})
	if err != nil {
		return nil, err
	}
	ks.cri = cri
	ln, err := net.Listen("tcp", net.JoinHostPort(KubeletAddress, "0"))
	if err != nil {
		return nil, err
	}
	ks.ln = &trackingListener{Listener: ln, conns: map[net.Conn]struct{}{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{pod}", ks.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", ks.portForward)
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", ks.exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", ks.exec)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	ks.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         c.kubeletPKI.serverTLS(),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2: upgrades need HTTP/1.1
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(ks.done)
		_ = ks.srv.ServeTLS(ks.ln, "", "")
	}()
	return ks, nil
}

// close stops the server and ends the streams it hijacked.
func (ks *kubeletServer) close() {
	_ = ks.srv.Close()
	ks.ln.closeAll()
	<-ks.done
}

// registerKubelet publishes the kubelet's address and port in the Node's
// status.
func (c *Cluster) registerKubelet(ctx context.Context, node string, port int) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.Clientset.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
		var addrs []corev1.NodeAddress
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeExternalIP {
				addrs = append(addrs, a)
			}
		}
		n.Status.Addresses = append(addrs, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: KubeletAddress})
		_, err = c.Clientset.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

// pod returns the running pod namespace/name of this node (with uid when
// given), or writes a 404 as a kubelet does for a pod it does not run.
func (ks *kubeletServer) pod(w http.ResponseWriter, r *http.Request) (*corev1.Pod, bool) {
	ns, name, uid := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("uid")
	pod, err := ks.lister.Pods(ns).Get(name)
	if err == nil && (pod.Spec.NodeName != ks.node || (uid != "" && string(pod.UID) != uid)) {
		err = apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("pod %s/%s does not exist on node %s", ns, name, ks.node), http.StatusNotFound)
		return nil, false
	}
	return pod, true
}

// sandboxID names a pod for the CRI calls: namespace/name/uid.
func sandboxID(pod *corev1.Pod) string {
	return pod.Namespace + "/" + pod.Name + "/" + string(pod.UID)
}

func (ks *kubeletServer) portForward(w http.ResponseWriter, r *http.Request) {
	pod, ok := ks.pod(w, r)
	if !ok {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := ks.cri.GetPortForward(&runtimeapi.PortForwardRequest{PodSandboxId: sandboxID(pod), Port: opts.Ports})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ks.serveCRI(w, r, resp.GetUrl())
}

func (ks *kubeletServer) exec(w http.ResponseWriter, r *http.Request) {
	pod, ok := ks.pod(w, r)
	if !ok {
		return
	}
	container := r.PathValue("container")
	if !hasContainer(pod, container) {
		http.Error(w, fmt.Sprintf("container %s is not valid for pod %s", container, pod.Name), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	flag := func(k string) bool { b, _ := strconv.ParseBool(q.Get(k)); return b }
	resp, err := ks.cri.GetExec(&runtimeapi.ExecRequest{
		ContainerId: sandboxID(pod) + "/" + container,
		Cmd:         q["command"],
		Stdin:       flag(corev1.ExecStdinParam),
		Stdout:      flag(corev1.ExecStdoutParam),
		Stderr:      flag(corev1.ExecStderrParam),
		Tty:         flag(corev1.ExecTTYParam),
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ks.serveCRI(w, r, resp.GetUrl())
}

// serveCRI serves the streaming server's one-time URL for r, as the
// kubelet proxies it to the container runtime.
func (ks *kubeletServer) serveCRI(w http.ResponseWriter, r *http.Request, target string) {
	u, err := url.Parse(target)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = u.Path, ""
	ks.cri.ServeHTTP(w, r2)
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// runtime is the container runtime behind the CRI streaming server:
// Config.DialPod and Config.ExecPod.
type runtime struct{ ks *kubeletServer }

func (rt *runtime) lookup(id string) (*corev1.Pod, error) {
	parts := strings.SplitN(id, "/", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("bad sandbox id %q", id)
	}
	pod, err := rt.ks.lister.Pods(parts[0]).Get(parts[1])
	if err != nil {
		return nil, err
	}
	if string(pod.UID) != parts[2] {
		return nil, fmt.Errorf("pod %s/%s was replaced", parts[0], parts[1])
	}
	return pod, nil
}

// PortForward connects stream to port inside the pod.
func (rt *runtime) PortForward(ctx context.Context, id string, port int32, stream io.ReadWriteCloser) error {
	pod, err := rt.lookup(id)
	if err != nil {
		return err
	}
	dial := rt.ks.c.cfg.DialPod
	if dial == nil {
		dial = DialPodIP
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := dial(dctx, pod, port)
	cancel()
	if err != nil {
		return fmt.Errorf("dialing port %d of pod %s/%s: %w", port, pod.Namespace, pod.Name, err)
	}
	defer conn.Close()
	// The client's half-close reaches the pod's application; the stream
	// ends when the application closes its side (or the client resets
	// the stream, which fails the copy and closes the connection).
	up := make(chan struct{})
	go func() {
		defer close(up)
		if _, err := io.Copy(conn, stream); err != nil {
			conn.Close()
			return
		}
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	conn.Close()
	<-up
	// The end of either side, or a client that reset the stream, ends
	// the forward without an error.
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// DialPodIP is the default Config.DialPod: the pod's IP (loopback
// addresses in tests that run pods on the host) on port.
func DialPodIP(ctx context.Context, pod *corev1.Pod, port int32) (net.Conn, error) {
	if pod.Status.PodIP == "" {
		return nil, fmt.Errorf("pod %s/%s has no IP", pod.Namespace, pod.Name)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port))))
}

// Exec runs cmd in the container through Config.ExecPod.
func (rt *runtime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize) error {
	id, container, ok := cutLast(containerID, "/")
	if !ok {
		return fmt.Errorf("bad container id %q", containerID)
	}
	pod, err := rt.lookup(id)
	if err != nil {
		return err
	}
	exec := rt.ks.c.cfg.ExecPod
	if exec == nil {
		return errors.New("exec is not supported by this harness (no kube.Config.ExecPod)")
	}
	if tty {
		return errors.New("exec with a TTY is not supported by this harness")
	}
	var stdout, stderr io.Writer = io.Discard, io.Discard
	if out != nil {
		stdout = out
		defer out.Close()
	}
	if errw != nil {
		stderr = errw
		defer errw.Close()
	}
	err = exec(ctx, pod, container, cmd, in, stdout, stderr)
	// The streaming server reports an exit status for k8s.io/utils/exec's
	// ExitError (kubectl exec then exits with it).
	var ee *osexec.ExitError
	if errors.As(err, &ee) {
		return utilexec.ExitErrorWrapper{ExitError: ee}
	}
	return err
}

// Attach is not supported: the harness runs no containers.
func (rt *runtime) Attach(context.Context, string, io.Reader, io.WriteCloser, io.WriteCloser, bool, <-chan remotecommand.TerminalSize) error {
	return errors.New("attach is not supported by this harness")
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+len(sep):], true
}

// trackingListener remembers its accepted connections so that close ends
// the ones http.Server hijacked for streams.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	return &trackedConn{Conn: c, l: l}, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		_ = c.Close()
	}
	clear(l.conns)
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c.Conn)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
