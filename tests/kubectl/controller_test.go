// Package kubectl tests istiod-lite in cluster mode against a real API
// server (package tests/kube): objects created with kubectl and the
// harness's scheduler and kubelet reach an xDS client connected to
// istiod-lite, the CA authenticates ztunnels with TokenReview and the
// node of their pod, and the leader writes AuthorizationPolicy status.
package kubectl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/istiod-lite/server"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
	"github.com/ambient-go/mesh/tests/kube"
)

const waitTimeout = 30 * time.Second

// objects are the namespaces, service accounts and services of the test.
const objects = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
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
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

// l7Policy needs a waypoint for its HTTP rule.
const l7Policy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
`

// l4Policy is enforced by ztunnel.
const l4Policy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
`

func TestClusterMode(t *testing.T) {
	c, log := startCluster(t, objects)

	ist, stop := startIstiod(t, c, log)
	x := startXDS(t, c, ist.PlaintextAddr().String(), log)

	client := runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "demo", Labels: map[string]string{"app": "client"}},
		Spec: corev1.PodSpec{ServiceAccountName: "client"}}, "198.18.1.10")
	echo := runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")
	ztA := runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-a", Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel"}},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}}, "198.18.1.2")
	_ = client
	_ = echo

	t.Run("workloads and services reach xDS clients", func(t *testing.T) {
		x.waitFor(t, "client and echo workloads, echo service with its endpoint", func(a map[string]*workloadapi.Address) bool {
			cw, ew := workload(a, "demo", "client"), workload(a, "demo", "echo")
			svc := a["demo/echo.demo.svc.cluster.local"].GetService()
			return cw != nil && ew != nil && svc != nil && len(svc.GetAddresses()) == 1 &&
				ew.GetServices()["demo/echo.demo.svc.cluster.local"] != nil &&
				cw.GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE &&
				ew.GetServiceAccount() == "echo" && ew.GetNode() == "node-b"
		})
	})

	t.Run("labelling the namespace ambient flips tunnel protocol", func(t *testing.T) {
		c.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
		x.waitFor(t, "HBONE for the pods of demo", func(a map[string]*workloadapi.Address) bool {
			return workload(a, "demo", "client").GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE &&
				workload(a, "demo", "echo").GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE
		})
		c.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode-")
		x.waitFor(t, "no tunnel once the label is gone", func(a map[string]*workloadapi.Address) bool {
			return workload(a, "demo", "client").GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE
		})
		c.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
	})

	t.Run("ztunnel certificates only for identities on its node", func(t *testing.T) {
		conn, err := grpc.NewClient(ist.PlaintextAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		token := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", ztA.Name, "--audience", "istio-ca"))
		ztunnel := &identity.CAClient{Conn: conn, Impersonate: true,
			Token: func(context.Context) (string, error) { return token, nil }}
		onA, onB := mustID(t, "demo", "client"), mustID(t, "demo", "echo")
		if err := request(t, ztunnel, onA); err != nil {
			t.Errorf("ztunnel of node-a asking for %s (pod on node-a): %v", onA, err)
		}
		if err := request(t, ztunnel, onB); status.Code(err) != codes.PermissionDenied {
			t.Errorf("ztunnel of node-a asking for %s (pod on node-b) = %v, want PermissionDenied", onB, err)
		}

		wrongAud := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", ztA.Name, "--audience", "other"))
		other := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return wrongAud, nil }}
		if err := request(t, other, onA); status.Code(err) != codes.Unauthenticated {
			t.Errorf("token with audience other = %v, want Unauthenticated", err)
		}

		unbound := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca"))
		ub := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return unbound, nil }}
		if err := request(t, ub, onA); status.Code(err) != codes.PermissionDenied {
			t.Errorf("ztunnel token bound to no pod impersonating %s = %v, want PermissionDenied", onA, err)
		}

		gone := runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-gone", Namespace: "istio-system"},
			Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}}, "198.18.1.3")
		goneToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", gone.Name, "--audience", "istio-ca"))
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := c.ForceDeletePod(ctx, gone.Namespace, gone.Name); err != nil {
			t.Fatal(err)
		}
		gz := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return goneToken, nil }}
		if err := request(t, gz, onA); status.Code(err) != codes.Unauthenticated {
			t.Errorf("token bound to a deleted ztunnel pod = %v, want Unauthenticated", err)
		}

		ztB := runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-b", Namespace: "istio-system"},
			Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}}, "198.18.2.2")
		tokenB := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", ztB.Name, "--audience", "istio-ca"))
		zb := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return tokenB, nil }}
		if err := request(t, zb, onB); err != nil {
			t.Errorf("ztunnel of node-b asking for %s (pod on node-b): %v", onB, err)
		}
		if err := request(t, zb, onA); status.Code(err) != codes.PermissionDenied {
			t.Errorf("ztunnel of node-b asking for %s (pod on node-a) = %v, want PermissionDenied", onA, err)
		}

		echoToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "echo", "-n", "demo",
			"--bound-object-kind", "Pod", "--bound-object-name", "echo", "--audience", "istio-ca"))
		wl := &identity.CAClient{Conn: conn, Token: func(context.Context) (string, error) { return echoToken, nil }}
		if err := request(t, wl, onB); err != nil {
			t.Errorf("workload echo asking for its own identity: %v", err)
		}
		wl.Impersonate = true
		if err := request(t, wl, onA); status.Code(err) != codes.PermissionDenied {
			t.Errorf("workload echo impersonating %s = %v, want PermissionDenied", onA, err)
		}
	})

	t.Run("AuthorizationPolicy status", func(t *testing.T) {
		apply(t, c, l7Policy)
		apply(t, c, l4Policy)
		waitCondition(t, c, "get-only", func(cond map[string]any) bool {
			return cond["status"] == "True" && cond["reason"] == "UnsupportedValue" &&
				strings.Contains(fmt.Sprint(cond["message"]), "waypoint")
		})
		waitCondition(t, c, "from-client", func(cond map[string]any) bool {
			return cond["status"] == "True" && cond["reason"] == "Accepted"
		})
		// A new generation that drops the HTTP rule is accepted as a whole.
		apply(t, c, strings.ReplaceAll(l7Policy, `
    to: [{operation: {methods: ["GET"]}}]`, ""))
		waitCondition(t, c, "get-only", func(cond map[string]any) bool {
			return cond["status"] == "True" && cond["reason"] == "Accepted"
		})
		x.waitFor(t, "policy demo/from-client on the echo workload", func(a map[string]*workloadapi.Address) bool {
			for _, p := range workload(a, "demo", "echo").GetAuthorizationPolicies() {
				if p == "demo/from-client" {
					return true
				}
			}
			return false
		})
	})

	t.Run("the mesh root is published in every namespace", func(t *testing.T) {
		want := strings.TrimSpace(string(ist.RootPEM()))
		for _, ns := range []string{"demo", "istio-system", "default"} {
			waitRootCert(t, c, ns, want)
		}
		c.MustKubectl(t, "delete", "configmap", "-n", "demo", "istio-ca-root-cert")
		c.MustKubectl(t, "create", "namespace", "later")
		waitRootCert(t, c, "demo", want)
		waitRootCert(t, c, "later", want)
	})

	t.Run("a deleted pod leaves xDS clients within a second", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := c.ForceDeletePod(ctx, "demo", "client"); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		x.waitFor(t, "client workload removed", func(a map[string]*workloadapi.Address) bool {
			return workload(a, "demo", "client") == nil
		})
		if d := time.Since(deleted); d > time.Second {
			t.Errorf("the deleted pod left the xDS client after %v, want within 1s", d)
		}
	})

	t.Run("a second replica serves the same state and takes over status when the leader stops", func(t *testing.T) {
		ist2, _ := startIstiod(t, c, log.With("replica", "2"))
		if !bytes.Equal(ist2.RootPEM(), ist.RootPEM()) {
			t.Error("the second replica has another root than the first; want the root of Secret istio-system/istio-ca-secret")
		}
		x2 := startXDS(t, c, ist2.PlaintextAddr().String(), log.With("replica", "2"))
		x2.waitFor(t, "echo workload from the second replica", func(a map[string]*workloadapi.Address) bool {
			return workload(a, "demo", "echo").GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE &&
				workload(a, "demo", "client") == nil
		})
		x.mu.Lock()
		removedBefore := len(x.removed)
		x.mu.Unlock()
		stop() // the leader releases its Lease
		apply(t, c, strings.ReplaceAll(l7Policy, "get-only", "get-only-2"))
		waitCondition(t, c, "get-only-2", func(cond map[string]any) bool {
			return cond["reason"] == "UnsupportedValue"
		})

		// istiod-lite back on the same address: the client reconnects,
		// loses nothing, and receives changes again.
		startIstiodAt(t, c, log.With("replica", "3"), ist.PlaintextAddr().String())
		runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
			Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.1.11")
		x.waitFor(t, "a pod created after the restart", func(a map[string]*workloadapi.Address) bool {
			return workload(a, "demo", "late") != nil
		})
		x.mu.Lock()
		if removed := x.removed[removedBefore:]; len(removed) > 0 {
			t.Errorf("the client was told to remove %q across the restart; want nothing removed", removed)
		}
		x.mu.Unlock()
	})
}

func TestClusterModeWithoutCRDs(t *testing.T) {
	log := testLogger(t)
	c := kube.Start(t, kube.Config{Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)
	ist, _ := startIstiod(t, c, log)
	x := startXDS(t, c, ist.PlaintextAddr().String(), log)
	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")
	x.waitFor(t, "echo workload and service", func(a map[string]*workloadapi.Address) bool {
		return workload(a, "demo", "echo") != nil && a["demo/echo.demo.svc.cluster.local"] != nil
	})
}

// startCluster starts the harness's API server with our CRDs, creates
// istio-system and applies objects.
func startCluster(t *testing.T, objects string) (*kube.Cluster, *slog.Logger) {
	t.Helper()
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	c := kube.Start(t, kube.Config{CRDDirs: []string{crds}, Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)
	return c, log
}

func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("KUBE_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func apply(t *testing.T, c *kube.Cluster, yaml string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if out, err := c.KubectlStdin(ctx, strings.NewReader(yaml), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// startIstiod runs istiod-lite in cluster mode until stop is called or
// the test ends.
func startIstiod(t *testing.T, c *kube.Cluster, log *slog.Logger) (s *server.Server, stop func()) {
	t.Helper()
	return startIstiodAt(t, c, log, "127.0.0.1:0")
}

// startIstiodAt is startIstiod with the plaintext gRPC address.
func startIstiodAt(t *testing.T, c *kube.Cluster, log *slog.Logger, plaintext string) (s *server.Server, stop func()) {
	t.Helper()
	var err error
	s, err = server.New(server.Config{
		Kube:          c.REST,
		StateDir:      t.TempDir(),
		Addr:          "127.0.0.1:0",
		PlaintextAddr: plaintext,
		Logger:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("istiod-lite: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-s.Synced():
	case err := <-done:
		t.Fatalf("istiod-lite stopped: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("istiod-lite did not sync")
	}
	return s, stop
}

// xdsState is what an xDS client connected to istiod-lite holds.
type xdsState struct {
	mu      sync.Mutex
	addrs   map[string]*workloadapi.Address
	removed []string // every name ever removed
	changed chan struct{}
}

// startXDS runs an xDS client against target, authenticated with a token of
// the ztunnel service account (not bound to a pod, so without a node).
func startXDS(t *testing.T, c *kube.Cluster, target string, log *slog.Logger) *xdsState {
	t.Helper()
	token := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca"))
	st := &xdsState{addrs: map[string]*workloadapi.Address{}, changed: make(chan struct{}, 1)}
	cl, err := xds.NewClient(xds.ClientConfig{
		Target:   target,
		Token:    func(context.Context) (string, error) { return token, nil },
		Node:     &adspb.Node{Id: "ztunnel~198.18.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local"},
		TypeURLs: []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL},
		Logger:   log.With("component", "xds-client"),
		Handler:  xds.HandlerFunc(st.handle),
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
	return st
}

// handle keeps the Address resources an xDS client receives.
func (s *xdsState) handle(typeURL string, updated []*adspb.Resource, removed []string) error {
	if typeURL != workloadapi.AddressTypeURL {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range updated {
		a := &workloadapi.Address{}
		if err := r.GetResource().UnmarshalTo(a); err != nil {
			return err
		}
		s.addrs[r.GetName()] = a
	}
	for _, n := range removed {
		delete(s.addrs, n)
	}
	s.removed = append(s.removed, removed...)
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return nil
}

// waitFor waits until cond holds for the client's addresses.
func (s *xdsState) waitFor(t *testing.T, what string, cond func(map[string]*workloadapi.Address) bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		s.mu.Lock()
		ok := cond(s.addrs)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			s.mu.Lock()
			defer s.mu.Unlock()
			var names []string
			for k := range s.addrs {
				names = append(names, k)
			}
			t.Fatalf("waiting for %s: timed out; the client has %q", what, names)
		}
	}
}

func workload(a map[string]*workloadapi.Address, ns, name string) *workloadapi.Workload {
	for _, v := range a {
		if w := v.GetWorkload(); w != nil && w.GetNamespace() == ns && w.GetName() == name {
			return w
		}
	}
	return nil
}

// runPod creates pod on node and plays kubelet: Running and Ready with ip.
func runPod(t *testing.T, c *kube.Cluster, node string, pod *corev1.Pod, ip string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	created, err := c.CreatePod(ctx, node, pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetPodStatus(ctx, created.Namespace, created.Name, kube.PodStatus{IPs: []netip.Addr{netip.MustParseAddr(ip)}, Ready: true}); err != nil {
		t.Fatal(err)
	}
	return created
}

func mustID(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID("cluster.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func request(t *testing.T, cl *identity.CAClient, id spiffeid.ID) error {
	t.Helper()
	_, csr, err := identity.NewKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = cl.RequestCertificate(ctx, id, csr, time.Hour)
	if err != nil {
		// RequestCertificate wraps the gRPC status error; unwrap its code.
		if s, ok := status.FromError(err); ok {
			return s.Err()
		}
	}
	return err
}

// waitCondition waits until the ZtunnelAccepted condition of the
// AuthorizationPolicy demo/name, read with kubectl, satisfies ok.
func waitCondition(t *testing.T, c *kube.Cluster, name string, ok func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var last string
	for time.Now().Before(deadline) {
		out := c.MustKubectl(t, "get", "authorizationpolicies.security.istio.io", "-n", "demo", name, "-o", "json")
		var obj struct {
			Metadata struct{ Generation int64 } `json:"metadata"`
			Status   struct {
				Conditions []map[string]any `json:"conditions"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			t.Fatal(err)
		}
		for _, cond := range obj.Status.Conditions {
			if cond["type"] == "ZtunnelAccepted" && ok(cond) && fmt.Sprint(cond["observedGeneration"]) == fmt.Sprint(obj.Metadata.Generation) {
				return
			}
		}
		last = out
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("AuthorizationPolicy demo/%s: no matching ZtunnelAccepted condition; last:\n%s", name, last)
}

// waitRootCert waits until ConfigMap ns/istio-ca-root-cert holds root.
func waitRootCert(t *testing.T, c *kube.Cluster, ns, root string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		cm, err := c.Clientset.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		cancel()
		if err == nil && strings.TrimSpace(cm.Data["root-cert.pem"]) == root {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("ConfigMap %s/istio-ca-root-cert does not hold the root (last error %v)", ns, last)
}

// TestBinaryKubeMode runs the istiod-lite binary with --kubeconfig and no
// --config-dir (kube mode by default).
func TestBinaryKubeMode(t *testing.T) {
	log := testLogger(t)
	c := kube.Start(t, kube.Config{Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)

	bin := filepath.Join(t.TempDir(), "istiod-lite")
	build := exec.Command("go", "build", "-o", bin, "github.com/ambient-go/mesh/istiod-lite/cmd/istiod-lite")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	plain := freeAddr(t)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--kubeconfig", c.Kubeconfig, "--state-dir", t.TempDir(),
		"--grpc-addr", freeAddr(t), "--grpc-plaintext-addr", plain, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("istiod-lite exited with %v", err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Error("istiod-lite did not stop on SIGINT")
		}
		if t.Failed() || os.Getenv("KUBE_TEST_DEBUG") != "" {
			t.Logf("istiod-lite output:\n%s", out.String())
		}
	})
	x := startXDS(t, c, plain, log)
	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")
	x.waitFor(t, "echo workload and service from the binary", func(a map[string]*workloadapi.Address) bool {
		return workload(a, "demo", "echo") != nil && a["demo/echo.demo.svc.cluster.local"] != nil
	})
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
