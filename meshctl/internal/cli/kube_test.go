package cli

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/istiod-lite/server"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
	"github.com/ambient-go/mesh/tests/kube"
)

const kubeWait = 30 * time.Second

// TestKubeCheckAndProxyStatus runs check and proxy-status against a real
// API server (tests/kube) and istiod-lite in cluster mode.
func TestKubeCheckAndProxyStatus(t *testing.T) {
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	// Port-forwards to the istiod-lite pod reach the in-process istiod-lite
	// (its TLS port), as a container runtime would reach the pod's port.
	var istiodTLS atomic.Pointer[string]
	c := kube.Start(t, kube.Config{CRDDirs: []string{crds}, DialPod: func(ctx context.Context, pod *corev1.Pod, port int32) (net.Conn, error) {
		if a := istiodTLS.Load(); a != nil && pod.Labels["app"] == "istiod-lite" && port == 15012 {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", *a)
		}
		return kube.DialPodIP(ctx, pod, port)
	}})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	c.MustKubectl(t, "create", "namespace", "demo")
	c.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
	c.MustKubectl(t, "create", "serviceaccount", "ztunnel", "-n", "istio-system")
	kc := []string{"--kubeconfig", c.Kubeconfig}

	// eventually runs meshctl until out satisfies ok.
	eventually := func(t *testing.T, what string, ok func(out string, code int) bool, args ...string) string {
		t.Helper()
		var out, errOut string
		var code int
		for deadline := time.Now().Add(kubeWait); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, errOut, code = run(t, append(kc, args...)...)
			if ok(out, code) {
				return out
			}
		}
		t.Fatalf("meshctl %s never %s; last: exit %d\n%s%s", strings.Join(args, " "), what, code, out, errOut)
		return ""
	}

	t.Run("check fails without ztunnels, names the nodes", func(t *testing.T) {
		out, _, code := run(t, append(kc, "check")...)
		if code != 1 {
			t.Errorf("check exit = %d, want 1", code)
		}
		for _, want := range []string{
			"✔ crds: authorizationpolicies.security.istio.io serves v1",
			"✔ crds: gateways.gateway.networking.k8s.io serves",
			"✘ ztunnel: node node-a: no ready ztunnel pod",
			"✘ ztunnel: node node-b: no ready ztunnel pod",
			"✘ ca-root: ConfigMap istio-system/istio-ca-root-cert",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("check =\n%s\nwant a line with %q", out, want)
			}
		}
	})

	ist := startClusterIstiod(t, c)
	istiodTLS.Store(ptr(ist.Addr().String()))
	for _, n := range []struct{ node, ip string }{{"node-a", "198.18.1.2"}, {"node-b", "198.18.2.2"}} {
		ctx, cancel := context.WithTimeout(context.Background(), kubeWait)
		p, err := c.CreatePod(ctx, n.node, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + n.node, Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel"}},
			Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", Containers: []corev1.Container{{Name: "ztunnel", Image: "ztunnel"}}}})
		if err == nil {
			err = c.SetPodStatus(ctx, p.Namespace, p.Name, kube.PodStatus{IPs: []netip.Addr{netip.MustParseAddr(n.ip)}, Ready: true})
		}
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("check passes once ztunnels run and the root is published", func(t *testing.T) {
		out := eventually(t, "passed", func(out string, code int) bool { return code == 0 }, "check")
		for _, want := range []string{"✔ ztunnel: node node-a: istio-system/ztunnel-node-a is ready", "✔ ca-root: the root is valid until", "✔ networkpolicy: no NetworkPolicy", "all checks passed"} {
			if !strings.Contains(out, want) {
				t.Errorf("check =\n%s\nwant %q", out, want)
			}
		}
	})

	t.Run("check finds a NetworkPolicy that blocks 15008", func(t *testing.T) {
		c.MustKubectl(t, "apply", "-f", "testdata/netpol-deny.yaml")
		out := eventually(t, "failed", func(out string, code int) bool { return code == 1 }, "check")
		if !strings.Contains(out, "✘ networkpolicy: NetworkPolicy demo/web-only restricts ingress to pods app=web without allowing TCP 15008") {
			t.Errorf("check =\n%s\nwant the NetworkPolicy named", out)
		}
		c.MustKubectl(t, "apply", "-f", "testdata/netpol-hbone.yaml")
		eventually(t, "passed", func(out string, code int) bool { return code == 0 }, "check")
	})

	// A ztunnel's xDS stream, authenticated with its service account token.
	ztToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca"))
	startXDSClient(t, ist.PlaintextAddr().String(), ztToken, "ztunnel~198.18.1.2~ztunnel-node-a.istio-system~istio-system.svc.cluster.local")

	c.MustKubectl(t, "create", "serviceaccount", "operator", "-n", "demo")
	c.MustKubectl(t, "create", "serviceaccount", "nobody", "-n", "demo")
	c.MustKubectl(t, "create", "clusterrole", "pod-lister", "--verb=list", "--resource=pods")
	c.MustKubectl(t, "create", "clusterrolebinding", "operator-pod-lister", "--clusterrole=pod-lister", "--serviceaccount=demo:operator")
	opToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "operator", "-n", "demo"))
	nobodyToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "nobody", "-n", "demo"))
	istiod := []string{"--istiod", ist.PlaintextAddr().String(), "--certs=false"}

	t.Run("proxy-status with a user allowed to list pods", func(t *testing.T) {
		synced := regexp.MustCompile(`(?m)^ztunnel-node-a\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-$`)
		args := append([]string{"--token", opToken, "proxy-status"}, istiod...)
		out := eventually(t, "listed the ztunnel as synced", func(out string, code int) bool {
			return code == 0 && synced.MatchString(out)
		}, args...)
		if !strings.Contains(out, "NAME") || strings.Count(out, "\n") != 2 {
			t.Errorf("proxy-status =\n%s\nwant a header and one proxy", out)
		}
	})

	t.Run("proxy-status without --istiod: a port-forward to the istiod-lite pod, checked with the published root", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), kubeWait)
		defer cancel()
		p, err := c.CreatePod(ctx, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "istiod-lite-0", Namespace: "istio-system", Labels: map[string]string{"app": "istiod-lite"}}})
		if err == nil {
			err = c.SetPodStatus(ctx, p.Namespace, p.Name, kube.PodStatus{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ready: true})
		}
		if err != nil {
			t.Fatal(err)
		}
		c.MustKubectl(t, "create", "clusterrole", "port-forwarder", "--verb=create", "--resource=pods/portforward")
		c.MustKubectl(t, "create", "clusterrole", "root-reader", "--verb=get", "--resource=configmaps")
		c.MustKubectl(t, "create", "clusterrolebinding", "operator-port-forwarder", "--clusterrole=port-forwarder", "--serviceaccount=demo:operator")
		c.MustKubectl(t, "create", "clusterrolebinding", "operator-root-reader", "--clusterrole=root-reader", "--serviceaccount=demo:operator")
		synced := regexp.MustCompile(`(?m)^ztunnel-node-a\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-$`)
		eventually(t, "listed the ztunnel through the port-forward", func(out string, code int) bool {
			return code == 0 && synced.MatchString(out)
		}, "--token", opToken, "proxy-status", "--certs=false")
	})

	t.Run("proxy-status refuses a user who may not list pods", func(t *testing.T) {
		_, errOut, code := run(t, append(kc, append([]string{"--token", nobodyToken, "proxy-status"}, istiod...)...)...)
		if code == 0 || !strings.Contains(errOut, "may not list pods in all namespaces") {
			t.Errorf("proxy-status as nobody = exit %d, %q; want PermissionDenied", code, errOut)
		}
	})
}

func startClusterIstiod(t *testing.T, c *kube.Cluster) *server.Server {
	t.Helper()
	s, err := server.New(server.Config{Kube: c.REST, StateDir: t.TempDir(), Addr: "127.0.0.1:0", PlaintextAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("istiod-lite: %v", err)
		}
	})
	select {
	case <-s.Synced():
	case err := <-done:
		t.Fatalf("istiod-lite stopped: %v", err)
	case <-time.After(kubeWait):
		t.Fatal("istiod-lite did not sync")
	}
	return s
}

func startXDSClient(t *testing.T, target, token, nodeID string) {
	t.Helper()
	cl, err := xds.NewClient(xds.ClientConfig{
		Target:   target,
		Token:    func(context.Context) (string, error) { return token, nil },
		Node:     &adspb.Node{Id: nodeID},
		TypeURLs: []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL},
		Handler:  xds.HandlerFunc(func(string, []*adspb.Resource, []string) error { return nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cl.Start(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func ptr[T any](v T) *T { return &v }
