package kube

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// TestKubeletStreaming: kubectl port-forward and kubectl exec, and
// client-go's SPDY port-forward (what meshctl uses), through the real API
// server to the harness kubelets.
func TestKubeletStreaming(t *testing.T) {
	// Two HTTP servers on loopback: "direct" is reached at the pod's IP
	// (the default DialPod), "hidden" only through the test's DialPod (as
	// a port inside a pod's network namespace).
	direct := serveName(t, "direct")
	hidden := serveName(t, "hidden")
	_, directPort, _ := net.SplitHostPort(direct)
	c := Start(t, Config{
		DialPod: func(ctx context.Context, pod *corev1.Pod, port int32) (net.Conn, error) {
			if pod.Name == "netns" && port == 15000 {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", hidden)
			}
			return DialPodIP(ctx, pod, port)
		},
		ExecPod: func(ctx context.Context, pod *corev1.Pod, container string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
			c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
			c.Env = []string{"POD=" + pod.Namespace + "/" + pod.Name, "CONTAINER=" + container}
			c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
			return c.Run()
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range []struct{ name, node string }{{"loopback", "node-a"}, {"netns", "node-b"}} {
		pod, err := c.CreatePod(ctx, p.node, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: p.name}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetPodStatus(ctx, pod.Namespace, pod.Name, PodStatus{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ready: true}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("the kubelet registered its endpoint", func(t *testing.T) {
		for _, n := range []string{"node-a", "node-b"} {
			node, err := c.Clientset.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if node.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
				t.Errorf("node %s: no kubelet port in status.daemonEndpoints", n)
			}
		}
	})

	t.Run("kubectl port-forward to the pod's IP", func(t *testing.T) {
		if got := kubectlPortForwardGet(t, c, "pod/loopback", directPort); got != "direct" {
			t.Errorf("GET through kubectl port-forward = %q, want direct", got)
		}
	})

	t.Run("kubectl port-forward through DialPod", func(t *testing.T) {
		if got := kubectlPortForwardGet(t, c, "pod/netns", "15000"); got != "hidden" {
			t.Errorf("GET through kubectl port-forward = %q, want hidden", got)
		}
	})

	t.Run("client-go SPDY port-forward", func(t *testing.T) {
		for i := range 2 { // two connections over one forward
			if got := spdyPortForwardGet(t, c, "netns", 15000); got != "hidden" {
				t.Errorf("GET %d through the SPDY port-forward = %q, want hidden", i, got)
			}
		}
	})

	t.Run("kubectl exec", func(t *testing.T) {
		out, err := c.KubectlStdin(ctx, strings.NewReader("from stdin"), "exec", "-i", "loopback", "-c", "app", "--",
			"sh", "-c", `cat; echo " $POD $CONTAINER"; echo oops >&2`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "from stdin default/loopback app\n"; out != want {
			t.Errorf("kubectl exec stdout = %q, want %q", out, want)
		}
		_, err = c.Kubectl(ctx, "exec", "loopback", "--", "sh", "-c", "exit 3")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("kubectl exec of `exit 3` = %v, want exit status 3", err)
		}
	})

	t.Run("the kubelet refuses callers without the API server's certificate", func(t *testing.T) {
		node, err := c.Clientset.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort(KubeletAddress, strconv.Itoa(int(node.Status.DaemonEndpoints.KubeletEndpoint.Port)))
		cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := cl.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET /healthz without a client certificate = %s, want a TLS error", resp.Status)
		}
	})
}

// serveName serves HTTP on loopback answering name; it returns the address.
func serveName(t *testing.T, name string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) }), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return l.Addr().String()
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)

// kubectlPortForwardGet runs kubectl port-forward to target's port and
// returns the body of one GET through it.
func kubectlPortForwardGet(t *testing.T, c *Cluster, target, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Assets+"/kubectl", "--kubeconfig", c.Kubeconfig, "port-forward", "--address", "127.0.0.1", target, ":"+port)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	local := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
				local <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var p string
	select {
	case p = <-local:
	case <-ctx.Done():
		t.Fatalf("kubectl port-forward %s :%s printed no local port: %s", target, port, stderr.String())
	}
	return httpGet(t, "127.0.0.1:"+p)
}

// spdyPortForwardGet forwards with client-go over SPDY, as meshctl does.
func spdyPortForwardGet(t *testing.T, c *Cluster, pod string, port int) string {
	t.Helper()
	tr, upgrader, err := spdy.RoundTripperFor(c.REST)
	if err != nil {
		t.Fatal(err)
	}
	u := c.Clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name(pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: tr}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	defer func() { close(stop); <-errc }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("port-forward not ready within 30s")
	}
	ports, err := fw.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	return httpGet(t, fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
}

func httpGet(t *testing.T, addr string) string {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET through the forward: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
