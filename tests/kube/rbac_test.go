package kube

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/ambient-go/mesh/istiod-lite/server"
	"github.com/ambient-go/mesh/pkg/identity"
)

// TestIstiodLiteWithDeployRBAC runs istiod-lite in cluster mode as the
// istiod-lite ServiceAccount (impersonated), with only the RBAC of deploy/:
// it must sync its caches, review a ztunnel's token to issue it a
// certificate, and write AuthorizationPolicy status under leader election.
func TestIstiodLiteWithDeployRBAC(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := Start(t, Config{CRDDirs: []string{filepath.Join(root, "crds")}})
	c.MustKubectl(t, "apply", "-k", filepath.Join(root, "deploy"))
	c.MustKubectl(t, "create", "namespace", "demo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, sa := range [][2]string{{"demo", "default"}, {"istio-system", "ztunnel"}} {
		if err := c.WaitForServiceAccount(ctx, sa[0], sa[1]); err != nil {
			t.Fatalf("service account %s/%s: %v", sa[0], sa[1], err)
		}
	}
	pod, err := c.CreatePod(ctx, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app", Labels: map[string]string{"app": "echo"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetPodStatus(ctx, "demo", "app", PodStatus{IPs: []netip.Addr{netip.MustParseAddr("198.18.1.20")}, Ready: true}); err != nil {
		t.Fatal(err)
	}
	zt, err := c.CreatePod(ctx, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-a"},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = pod

	asSA := rest.CopyConfig(c.REST)
	asSA.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:istio-system:istiod-lite",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:istio-system", "system:authenticated"},
	}
	s, err := server.New(server.Config{
		Kube:          asSA,
		Cluster:       server.ClusterOptions{LeaderElectionNamespace: "istio-system", NodeAgents: []string{"istio-system/ztunnel"}},
		StateDir:      t.TempDir(),
		Addr:          "127.0.0.1:0",
		PlaintextAddr: "127.0.0.1:0",
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(sctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("istiod-lite: %v", err)
		}
	})
	select {
	case <-s.Synced():
	case err := <-done:
		t.Fatalf("istiod-lite stopped: %v", err)
	case <-ctx.Done():
		t.Fatal("istiod-lite did not sync its caches as the istiod-lite ServiceAccount")
	}

	t.Run("TokenReview", func(t *testing.T) {
		token, err := c.ServiceAccountToken(ctx, "istio-system", "ztunnel", "istio-ca", zt)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(s.PlaintextAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cl := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return token, nil }}
		id, err := identity.WorkloadID("cluster.local", "demo", "default")
		if err != nil {
			t.Fatal(err)
		}
		_, csr, err := identity.NewKeyAndCSR(id)
		if err != nil {
			t.Fatal(err)
		}
		// The CA may not have seen the pod yet; retry briefly.
		deadline := time.Now().Add(10 * time.Second)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = cl.RequestCertificate(rctx, id, csr, time.Hour)
			rcancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("ztunnel of node-a asking for %s: %v", id, err)
		}
	})

	t.Run("PolicyStatus", func(t *testing.T) {
		if out, err := c.KubectlStdin(ctx, strings.NewReader(policy), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		poll(t, "a ZtunnelAccepted condition on demo/allow-all", func(ctx context.Context) (bool, error) {
			out, err := c.Kubectl(ctx, "-n", "demo", "get", "authorizationpolicies.security.istio.io", "allow-all", "-o", "json")
			if err != nil {
				return false, err
			}
			var obj struct {
				Status struct {
					Conditions []struct{ Type, Status string } `json:"conditions"`
				} `json:"status"`
			}
			if err := json.Unmarshal([]byte(out), &obj); err != nil {
				return false, err
			}
			for _, cond := range obj.Status.Conditions {
				if cond.Type == "ZtunnelAccepted" {
					return true, nil
				}
			}
			return false, nil
		})
	})
	t.Run("Waypoint", func(t *testing.T) {
		// The deployer creates the class and the waypoint's objects, the
		// status writer writes Gateway and Service status: all with
		// deploy/'s RBAC.
		c.MustKubectl(t, "label", "namespace", "demo", "istio.io/use-waypoint=waypoint")
		if out, err := c.KubectlStdin(ctx, strings.NewReader(waypointGateway), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		poll(t, "GatewayClass istio-waypoint", func(ctx context.Context) (bool, error) {
			out, err := c.Kubectl(ctx, "get", "gatewayclass", "istio-waypoint", "-o", "jsonpath={.spec.controllerName} {.status.conditions[?(@.type=='Accepted')].status}")
			return err == nil && out == "istio.io/mesh-controller True", nil
		})
		for _, kind := range []string{"serviceaccount", "deployment", "service"} {
			poll(t, kind+" demo/waypoint", func(ctx context.Context) (bool, error) {
				_, err := c.Kubectl(ctx, "-n", "demo", "get", kind, "waypoint")
				return err == nil, nil
			})
		}
		poll(t, "Gateway status (its pod never runs here: Programmed=False)", func(ctx context.Context) (bool, error) {
			out, err := c.Kubectl(ctx, "-n", "demo", "get", "gateway", "waypoint", "-o", "jsonpath={.status.conditions[?(@.type=='Programmed')].reason}")
			return err == nil && out == "AddressNotAssigned", nil
		})
		poll(t, "istio.io/WaypointBound on Service demo/echo", func(ctx context.Context) (bool, error) {
			out, err := c.Kubectl(ctx, "-n", "demo", "get", "service", "echo", "-o", "jsonpath={.status.conditions[?(@.type=='istio.io/WaypointBound')].reason}")
			return err == nil && out == "WaypointIsNotReady", nil
		})
	})
}

const waypointGateway = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80}]
`

const policy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{}]
`
