package kubectl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/tests/harness"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/ztunnel"
)

// istioObjects are the objects of TestIstioIstiod: an ambient namespace
// with a client and an echo service account (no Service: the API server
// takes no loopback address in an EndpointSlice, and pods here are on
// loopback addresses, as local mode has them).
const istioObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
`

// istioDeny denies the client's identity at the echo workload.
const istioDeny = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
`

// TestIstioIstiod runs our ztunnel against Istio's own control plane:
// istiod (pilot-discovery) built from the istio.io/istio module pinned in
// tools/istio, on the harness's API server, with the settings Istio's
// chart gives it for ambient. Our ztunnel takes its workloads and policies
// from istiod's delta xDS (Istio's Workload API), its certificates from
// istiod's CA (impersonating the pods of its node with a pod-bound token,
// as Istio's ztunnel does), verifies istiod's serving certificate for
// istiod.istio-system.svc, and carries a connection between two pods of
// its node over HBONE with those certificates; an AuthorizationPolicy
// applied with kubectl then refuses it.
func TestIstioIstiod(t *testing.T) {
	bin := istiodBinary(t)
	c, log := startCluster(t, istioObjects)
	const node = "node-a"
	ztPod := runPod(t, c, node, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-a", Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel"}},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}}, "127.18.1.2")
	clientIP, echoIP := netip.MustParseAddr("127.18.1.10"), netip.MustParseAddr("127.18.1.11")
	// Istio's istiod gives a pod HBONE only once Istio's CNI agent has
	// annotated it as captured (pilot/pkg/serviceregistry/ambient/
	// workloads.go); here the test plays that agent.
	captured := map[string]string{"ambient.istio.io/redirection": "enabled"}
	runPod(t, c, node, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "demo", Labels: map[string]string{"app": "client"}, Annotations: captured},
		Spec: corev1.PodSpec{ServiceAccountName: "client"}}, clientIP.String())
	runPod(t, c, node, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}, Annotations: captured},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, echoIP.String())

	secure := startIstioIstiod(t, c, bin)
	root := waitIstioRoot(t, c)
	token := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
		"--bound-object-kind", "Pod", "--bound-object-name", ztPod.Name, "--audience", "istio-ca", "--duration", "1h"))

	z, err := ztunnel.New(ztunnel.Config{
		Node:          node,
		XDSAddress:    secure,
		CARoot:        root,
		Token:         token,
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   "127.0.0.1:0",
		ReadinessAddr: "127.0.0.1:0",
		DrainTimeout:  200 * time.Millisecond,
		Logger:        log.With("component", "ztunnel"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- z.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel: %v", err)
		}
	})
	select {
	case <-z.Ready():
	case err := <-done:
		t.Fatalf("ztunnel stopped: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("ztunnel not ready with Istio's istiod")
	}

	harness.StartEcho(t, "echo", netip.AddrPortFrom(echoIP, 8080))
	records, unsub := z.AccessLog().Subscribe(1024)
	t.Cleanup(unsub)
	target := netip.AddrPortFrom(echoIP, 8080).String()
	try := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		conn, err := harness.Dial(ctx, clientIP, target)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		name, from, _, err := harness.Hello(conn)
		if err != nil {
			return err
		}
		if name != "echo" || from.Addr() != clientIP {
			return fmt.Errorf("the echo app (%q) saw the client as %v, want echo seeing %v", name, from, clientIP)
		}
		return nil
	}

	t.Run("connection over HBONE with certificates from Istio's CA", func(t *testing.T) {
		eventually(t, waitTimeout, "client reaches echo through ztunnel", try)
		deadline := time.After(waitTimeout)
		for {
			select {
			case r := <-records:
				if strings.EqualFold(r.Direction, "inbound") && r.Err == nil &&
					r.SrcIdentity == "spiffe://cluster.local/ns/demo/sa/client" && r.DstIdentity == "spiffe://cluster.local/ns/demo/sa/echo" {
					return
				}
			case <-deadline:
				t.Fatal("no inbound access-log record from demo/client's identity to demo/echo's")
			}
		}
	})

	t.Run("AuthorizationPolicy from Istio's istiod is enforced", func(t *testing.T) {
		apply(t, c, istioDeny)
		eventually(t, waitTimeout, "the DENY policy refuses the client", func() error {
			if err := try(); err == nil {
				return errors.New("connection still allowed")
			}
			return nil
		})
		c.MustKubectl(t, "delete", "authorizationpolicy", "-n", "demo", "deny-client")
		eventually(t, waitTimeout, "allowed again once the policy is deleted", try)
	})
}

// istiodBinary returns Istio's pilot-discovery built by `make
// istio-binaries` (tools/istio/build.sh).
func istiodBinary(t *testing.T) string {
	t.Helper()
	dir, err := kube.IstioAssetsDir()
	if err == nil {
		bin := filepath.Join(dir, "pilot-discovery")
		if fi, err := os.Stat(bin); err == nil && fi.Mode()&0o111 != 0 {
			return bin
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("Istio's istiod not built (make istio-binaries): %v", err)
	}
	t.Skipf("Istio's istiod not built (run make istio-binaries): %v", err)
	return ""
}

// startIstioIstiod runs Istio's istiod as Istio's chart configures it for
// ambient (PILOT_ENABLE_AMBIENT, CA_TRUSTED_NODE_ACCOUNTS for ztunnel, its
// own CA), every port on a free loopback port and no webhook to patch. It
// returns the address of its TLS gRPC port (15012: xDS and CA).
func startIstioIstiod(t *testing.T, c *kube.Cluster, bin string) string {
	t.Helper()
	secure := freeAddr(t)
	monitoring := freeAddr(t)
	cmd := exec.Command(bin, "discovery",
		"--kubeconfig", c.Kubeconfig,
		"--httpAddr", freeAddr(t),
		"--httpsAddr", freeAddr(t),
		"--grpcAddr", freeAddr(t),
		"--secureGRPCAddr", secure,
		"--monitoringAddr", monitoring,
		"--meshConfig", filepath.Join(t.TempDir(), "mesh"), // absent: the defaults
		"--networksConfig", filepath.Join(t.TempDir(), "meshNetworks"),
		"--log_output_level", "default:info",
	)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(),
		"POD_NAME=istiod-0",
		"POD_NAMESPACE=istio-system",
		"REVISION=default",
		"CLUSTER_ID=Kubernetes",
		"JWT_POLICY=third-party-jwt",
		"PILOT_CERT_PROVIDER=istiod",
		"ENABLE_CA_SERVER=true",
		"PILOT_ENABLE_AMBIENT=true",
		"CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel",
		"INJECTION_WEBHOOK_CONFIG_NAME=",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
		"KUBECONFIG="+c.Kubeconfig,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() || os.Getenv("KUBE_TEST_DEBUG") != "" {
			t.Logf("istiod output (last 64 KiB):\n%s", tail(out.Bytes(), 64<<10))
		}
	})
	// Ready once its readiness endpoint (on the http port) says so; the
	// secure port accepting TCP is enough for the clients, which retry.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case err := <-exited:
			t.Fatalf("istiod exited: %v\n%s", err, tail(out.Bytes(), 16<<10))
		default:
		}
		if conn, err := net.DialTimeout("tcp", secure, time.Second); err == nil {
			conn.Close()
			return secure
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod's secure gRPC port %s not open within 2m\n%s", secure, tail(out.Bytes(), 16<<10))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitIstioRoot returns the root certificate istiod's CA publishes in
// every namespace (ConfigMap istio-ca-root-cert).
func waitIstioRoot(t *testing.T, c *kube.Cluster) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for {
		cm, err := c.Clientset.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			return []byte(cm.Data["root-cert.pem"])
		}
		select {
		case <-ctx.Done():
			t.Fatalf("istiod published no istio-ca-root-cert in istio-system: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
