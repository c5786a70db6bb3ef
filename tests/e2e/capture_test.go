package e2e

// End-to-end tests of ambient capture in real network namespaces (issue 3):
// nodes and pods are namespaces (package netns), each node runs a ztunnel
// process in in-pod mode, and the test plays the container runtime, which
// calls the CNI plugin. Applications are unmodified: plain sockets opened
// inside a pod's namespace, and curl. They need root; they skip without it
// (and fail when CI=true).

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

var ambient = map[string]string{"istio.io/dataplane-mode": "ambient"}

// app is an HTTP server inside a pod: it answers "<pod> <client address>
// <path>" and remembers the client addresses it saw.
type app struct {
	name string
	srv  *http.Server
	done chan struct{}
}

func startApp(t *testing.T, p *cluster.Pod, port int) *app {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, uint16(port)).String())
	if err != nil {
		t.Fatalf("app in %s: %v", p.Key(), err)
	}
	a := &app{name: p.Spec.Name, done: make(chan struct{})}
	a.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", a.name, r.RemoteAddr, r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		defer close(a.done)
		a.srv.Serve(l)
	}()
	t.Cleanup(func() {
		a.srv.Close()
		<-a.done
	})
	return a
}

// want checks an app's answer: the pod that answered, the client address
// it saw, and the path.
func want(t *testing.T, got, pod string, client netip.Addr, path string) {
	t.Helper()
	f := strings.Fields(got)
	if len(f) != 3 {
		t.Errorf("answer %q, want %q <client> %q", got, pod, path)
		return
	}
	ap, err := netip.ParseAddrPort(f[1])
	if f[0] != pod || err != nil || ap.Addr() != client || f[2] != path {
		t.Errorf("answer %q: want pod %s to see client %s and path %s", got, pod, client, path)
	}
}

// captureMesh: namespace shop in ambient mode; pod client on node-1, pod
// echo-0 on node-2 serving HTTP on 8080 behind service echo
// (198.18.100.10:80).
type captureMesh struct {
	*cluster.Cluster
	client, echo *cluster.Pod
	vip          netip.AddrPort
}

func newCaptureMesh(t *testing.T) *captureMesh {
	t.Helper()
	c := cluster.New(t, cluster.Options{})
	c.Namespace("shop", ambient)
	c.Service("shop", "echo", netns.VIP(0), map[string]string{"app": "echo"}, 80, 8080)
	m := &captureMesh{Cluster: c, vip: netip.AddrPortFrom(netns.VIP(0), 80)}
	var err error
	if m.client, err = c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client", Labels: map[string]string{"app": "client"}}); err != nil {
		t.Fatal(err)
	}
	if m.echo, err = c.Node(2).AddPod(cluster.PodSpec{Namespace: "shop", Name: "echo-0", Labels: map[string]string{"app": "echo"}}); err != nil {
		t.Fatal(err)
	}
	startApp(t, m.echo, 8080)
	return m
}

func (m *captureMesh) echoAddr() netip.AddrPort { return netip.AddrPortFrom(m.echo.IP, 8080) }

const clientID = "spiffe://cluster.local/ns/shop/sa/client"

// waitInbound waits for the access log record of node's ztunnel for an
// inbound connection from src, after log line from, and returns it.
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

func TestCaptureUnmodifiedClient(t *testing.T) {
	m := newCaptureMesh(t)
	z2 := m.Node(2).Ztunnel()

	t.Run("go client by pod IP", func(t *testing.T) {
		from := z2.Mark()
		got, err := m.client.Get(t.Context(), m.echoAddr(), "/by-ip")
		if err != nil {
			t.Fatal(err)
		}
		want(t, got, "echo-0", m.client.IP, "/by-ip")
		if l := waitInbound(t, z2, from, m.client.IP); l.String(accesslog.KeySrcIdentity) != clientID {
			t.Errorf("node-2's ztunnel logged src.identity %q, want %q (%v)", l.String(accesslog.KeySrcIdentity), clientID, l)
		}
	})

	t.Run("go client by service VIP", func(t *testing.T) {
		from := z2.Mark()
		got, err := m.client.Get(t.Context(), m.vip, "/by-vip")
		if err != nil {
			t.Fatal(err)
		}
		want(t, got, "echo-0", m.client.IP, "/by-vip")
		if l := waitInbound(t, z2, from, m.client.IP); l.String(accesslog.KeySrcIdentity) != clientID {
			t.Errorf("node-2's ztunnel logged src.identity %q, want %q", l.String(accesslog.KeySrcIdentity), clientID)
		}
	})

	t.Run("curl", func(t *testing.T) {
		curl := findCurl(t)
		for _, target := range []netip.AddrPort{m.echoAddr(), m.vip} {
			from := z2.Mark()
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "5", fmt.Sprintf("http://%s/curl", target))
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := m.client.Start(cmd)
			if err == nil {
				err = cmd.Wait()
			}
			cancel()
			if err != nil {
				t.Fatalf("curl %s: %v: %s", target, err, errb.String())
			}
			want(t, out.String(), "echo-0", m.client.IP, "/curl")
			if l := waitInbound(t, z2, from, m.client.IP); l.String(accesslog.KeySrcIdentity) != clientID {
				t.Errorf("node-2's ztunnel logged src.identity %q, want %q", l.String(accesslog.KeySrcIdentity), clientID)
			}
		}
	})
}

// findCurl returns curl's path, installing it with apt-get when missing
// (as root); the test skips when curl cannot be had.
func findCurl(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("curl"); err == nil {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err == nil && os.Geteuid() == 0 {
		t.Log("curl is missing: installing it with apt-get")
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", "curl").CombinedOutput()
		if err != nil {
			t.Logf("apt-get install curl: %v\n%s", err, out)
		}
		if p, err := exec.LookPath("curl"); err == nil {
			return p
		}
	}
	t.Skip("curl is not installed and could not be installed with apt-get; the Go client covers the same path")
	return ""
}

func TestCaptureUnderlayCarriesOnlyHBONE(t *testing.T) {
	m := newCaptureMesh(t)
	marker := fmt.Sprintf("/MARKER-%d", time.Now().UnixNano())
	var got string
	var err error
	frames := m.Cluster.CaptureUnderlay(t, func() {
		got, err = m.client.Get(t.Context(), m.echoAddr(), marker)
	})
	if err != nil {
		t.Fatal(err)
	}
	want(t, got, "echo-0", m.client.IP, marker)
	cluster.AssertOnlyHBONE(t, frames, marker)
}

func TestCaptureFollowsNamespaceLabel(t *testing.T) {
	m := newCaptureMesh(t)
	z1, z2 := m.Node(1).Ztunnel(), m.Node(2).Ztunnel()
	exchange := func(path string) []netns.Frame {
		t.Helper()
		var got string
		var err error
		frames := m.Cluster.CaptureUnderlay(t, func() {
			got, err = m.client.Get(t.Context(), m.echoAddr(), path)
		})
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		want(t, got, "echo-0", m.client.IP, path)
		return frames
	}

	// Off: the same running pods talk in plain text.
	f1, f2 := z1.Mark(), z2.Mark()
	m.Namespace("shop", nil)
	waitPodLog(t, z1, f1, "pod uncaptured", m.client)
	waitPodLog(t, z2, f2, "pod uncaptured", m.echo)
	marker := fmt.Sprintf("/PLAIN-%d", time.Now().UnixNano())
	frames := exchange(marker)
	if netns.Contains(frames, []byte(marker)) == 0 {
		t.Errorf("with the namespace out of the mesh, the marker is not in clear on the underlay (%d frames)", len(frames))
	}
	for _, s := range netns.Segments(frames) {
		if s.Dst.Port() == 15008 || s.Src.Port() == 15008 {
			t.Errorf("HBONE while out of the mesh: %v", s)
			break
		}
	}

	// On again: captured, without restarting the pods.
	f1, f2 = z1.Mark(), z2.Mark()
	m.Namespace("shop", ambient)
	waitPodLog(t, z1, f1, "pod captured", m.client)
	waitPodLog(t, z2, f2, "pod captured", m.echo)
	marker = fmt.Sprintf("/MESH-%d", time.Now().UnixNano())
	cluster.AssertOnlyHBONE(t, exchange(marker), marker)
}

func TestCaptureZtunnelRestart(t *testing.T) {
	m := newCaptureMesh(t)
	// A pod outside the mesh on node-1, to show that plaintext to a
	// captured pod fails closed too while its ztunnel is down.
	m.Namespace("outside", nil)
	plain, err := m.Node(1).AddPod(cluster.PodSpec{Namespace: "outside", Name: "plain"})
	if err != nil {
		t.Fatal(err)
	}

	for _, node := range []int{2, 1} {
		t.Run(fmt.Sprintf("node-%d", node), func(t *testing.T) {
			n := m.Node(node)
			n.KillZtunnel()
			marker := fmt.Sprintf("/DOWN-%d", time.Now().UnixNano())
			frames := m.Cluster.CaptureUnderlay(t, func() {
				// Dropped SYNs only time out: 2s is plenty.
				ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
				defer cancel()
				srcs := []*cluster.Pod{m.client}
				if node == 2 {
					srcs = append(srcs, plain) // plaintext to a captured pod
				}
				var wg sync.WaitGroup
				for _, src := range srcs {
					wg.Go(func() {
						if got, err := src.Get(ctx, m.echoAddr(), marker); err == nil {
							t.Errorf("with %s's ztunnel down, %s reached the server: %q", n.Name, src.Key(), got)
						}
					})
				}
				wg.Wait()
			})
			if c := netns.Contains(frames, []byte(marker)); c > 0 {
				t.Errorf("with %s's ztunnel down, the marker crossed the underlay in clear (%d frames)", n.Name, c)
			}

			// The runtime cannot start a pod on the node meanwhile: ADD
			// fails (the runtime would retry), and nothing is left.
			if late, err := n.AddPod(cluster.PodSpec{Namespace: "shop", Name: "late"}); err == nil {
				t.Errorf("with %s's ztunnel down, CNI ADD of a new pod succeeded", n.Name)
				late.Delete()
			} else if left, _ := netns.List(m.Topo.Prefix + fmt.Sprintf("n%d-shop-late", node)); len(left) > 0 {
				t.Errorf("a pod whose ADD failed left its namespace: %v", left)
			}

			z := n.StartZtunnel()
			p := m.client
			if node == 2 {
				p = m.echo
			}
			waitPodLog(t, z, 0, "pod captured", p)
			marker = fmt.Sprintf("/UP-%d", time.Now().UnixNano())
			var got string
			frames = m.Cluster.CaptureUnderlay(t, func() {
				got, err = m.client.Get(t.Context(), m.echoAddr(), marker)
			})
			if err != nil {
				t.Fatalf("after restarting %s's ztunnel: %v", n.Name, err)
			}
			want(t, got, "echo-0", m.client.IP, marker)
			cluster.AssertOnlyHBONE(t, frames, marker)
		})
	}
}

func TestCaptureScale(t *testing.T) {
	const pods = 25
	c := cluster.New(t, cluster.Options{})
	c.Namespace("scale", ambient)
	ctx := t.Context()

	type usage struct{ goroutines, fds int }
	measure := func(n *cluster.Node) usage {
		t.Helper()
		z := n.Ztunnel()
		g, err := z.Goroutines(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fds, err := z.FDs()
		if err != nil {
			t.Fatal(err)
		}
		return usage{g, fds}
	}
	base := map[string]usage{}
	for _, n := range c.Nodes {
		base[n.Name] = measure(n)
	}

	nodePods := map[int][]*cluster.Pod{}
	for _, n := range c.Nodes {
		marks := n.Ztunnel().Mark()
		var specs []cluster.PodSpec
		for i := range pods {
			specs = append(specs, cluster.PodSpec{Namespace: "scale", Name: fmt.Sprintf("%s-pod-%d", n.Name, i)})
		}
		ps, err := n.AddPods(specs)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			waitPodLog(t, n.Ztunnel(), marks, "pod captured", p)
		}
		nodePods[n.Index] = ps
	}
	for _, p := range nodePods[2] {
		startApp(t, p, 8080)
	}
	for _, n := range c.Nodes {
		u := measure(n)
		t.Logf("%s: %d pods up and captured; ztunnel goroutines %d, fds %d (%d and %d before)", n.Name, pods, u.goroutines, u.fds, base[n.Name].goroutines, base[n.Name].fds)
	}

	// Every pod of node-1 calls one pod of node-2, concurrently.
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	for i, src := range nodePods[1] {
		dst := nodePods[2][i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := src.Get(ctx, netip.AddrPortFrom(dst.IP, 8080), "/scale")
			if err != nil {
				errs <- fmt.Errorf("%s → %s: %w", src.Key(), dst.Key(), err)
				return
			}
			if !strings.HasPrefix(got, dst.Spec.Name+" "+src.IP.String()+":") {
				errs <- fmt.Errorf("%s → %s: answer %q", src.Key(), dst.Key(), got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	for _, ps := range nodePods {
		for _, p := range ps {
			if err := p.Delete(); err != nil {
				t.Error(err)
			}
		}
	}
	if left, _ := netns.List(c.Topo.Prefix); len(left) != 1+len(c.Nodes) {
		t.Errorf("namespaces after deleting every pod: %v, want the underlay and the nodes only", left)
	}
	for _, n := range c.Nodes {
		h, err := n.Handle()
		if err != nil {
			t.Fatal(err)
		}
		links, err := h.LinkList()
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"br0", "eth0", "lo"}) {
			t.Errorf("links of %s after deleting every pod: %v, want br0 eth0 lo", n.Name, names)
		}
	}
	// Once every pod is gone, each ztunnel is back to its goroutines and
	// descriptors before the pods came, but for its gRPC connection to the
	// CA, which is dialed lazily for the first certificate (its reader and
	// writer goroutines and its socket).
	const caConnGoroutines, caConnFDs = 2, 1
	for _, n := range c.Nodes {
		b := base[n.Name]
		b.goroutines += caConnGoroutines
		b.fds += caConnFDs
		base[n.Name] = b
		var got usage
		deadline := time.Now().Add(10 * time.Second)
		for {
			got = measure(n)
			if got.goroutines <= base[n.Name].goroutines && got.fds <= base[n.Name].fds || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%s: goroutines %d (before the pods %d), fds %d (before %d)", n.Name, got.goroutines, base[n.Name].goroutines, got.fds, base[n.Name].fds)
		if got.goroutines > base[n.Name].goroutines {
			t.Errorf("%s's ztunnel has %d goroutines after the pods left, %d before they came", n.Name, got.goroutines, base[n.Name].goroutines)
			if b, err := n.Ztunnel().Admin(ctx, "/debug/pprof/goroutine?debug=1"); err == nil {
				t.Logf("%s's goroutines:\n%s", n.Name, b)
			}
		}
		if got.fds > base[n.Name].fds {
			t.Errorf("%s's ztunnel has %d descriptors after the pods left, %d before they came", n.Name, got.fds, base[n.Name].fds)
		}
	}
}

// TestDemoNetns runs the demo once in network namespace mode, as `make
// demo` does as root.
func TestDemoNetns(t *testing.T) {
	netns.RequireRoot(t)
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/",
		"github.com/ambient-go/mesh/istiod-lite/cmd/istiod-lite",
		"github.com/ambient-go/mesh/ztunnel/cmd/ztunnel",
		"github.com/ambient-go/mesh/ztunnel/cmd/ztunnel-cni",
		"github.com/ambient-go/mesh/waypoint/cmd/waypoint",
		"github.com/ambient-go/mesh/tests/cmd/demo")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	demo := exec.CommandContext(ctx, bin+"/demo", "-once", "-mode", "auto",
		"-bin", bin, "-config", "../../examples/local", "-out", t.TempDir()+"/demo")
	demo.Stderr = os.Stderr
	out, err := demo.Output()
	if err != nil {
		t.Fatalf("demo -once -mode auto: %v\n%s", err, out)
	}
	for _, want := range []string{
		"pods are network namespaces",
		"hello from demo/echo-",
		"you are 198.19.1.11:",
		"[node-a] outbound spiffe://cluster.local/ns/demo/sa/client",
		"[node-b] inbound  spiffe://cluster.local/ns/demo/sa/client",
		"via HBONE",
		"[x-canary: true] -> hello from demo/echo-v2-0",
		"route demo/echo-l7-canary",
		"all processes stopped",
		"removed every namespace",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "error") {
		t.Errorf("demo output reports an error:\n%s", out)
	}
}
