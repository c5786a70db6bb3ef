package kube

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestApplyCRDsAndDeploy applies crds/ and deploy/ with kubectl, first as a
// server-side dry run (validated by the real API server, nothing stored),
// then for real, and checks that the objects exist.
func TestApplyCRDsAndDeploy(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := Start(t, Config{})
	crds, deploy := filepath.Join(root, "crds"), filepath.Join(root, "deploy")

	// Server-side apply: the Gateway API CRDs are too large for the
	// last-applied annotation of a client-side apply.
	out := c.MustKubectl(t, "apply", "--server-side", "--dry-run=server", "-k", crds)
	if n := strings.Count(out, "customresourcedefinition.apiextensions.k8s.io/"); n != 9 {
		t.Errorf("dry-run apply of crds/ reported %d CRDs, want 9 (3 Istio, 6 Gateway API):\n%s", n, out)
	}
	if _, err := c.Kubectl(context.Background(), "get", "crd", "authorizationpolicies.security.istio.io"); err == nil {
		t.Errorf("a server-side dry run stored the CRDs")
	}
	c.MustKubectl(t, "apply", "--server-side", "-k", crds)
	c.MustKubectl(t, "wait", "crd", "--all", "--for=condition=Established", "--timeout=30s")

	// deploy/ can only be dry-run once its namespace exists, so the dry run
	// comes after creating the namespace alone.
	c.MustKubectl(t, "apply", "-f", filepath.Join(deploy, "namespace.yaml"))
	c.MustKubectl(t, "apply", "--dry-run=server", "-k", deploy)
	if _, err := c.Kubectl(context.Background(), "-n", "istio-system", "get", "daemonset", "ztunnel"); err == nil {
		t.Errorf("a server-side dry run stored the ztunnel DaemonSet")
	}
	c.MustKubectl(t, "apply", "-k", deploy)

	for _, obj := range []string{
		"namespace/istio-system",
		"-n istio-system deployment/istiod-lite",
		"-n istio-system service/istiod-lite",
		"-n istio-system serviceaccount/istiod-lite",
		"-n istio-system role/istiod-lite",
		"-n istio-system rolebinding/istiod-lite",
		"clusterrole/istiod-lite",
		"clusterrolebinding/istiod-lite",
		"-n istio-system daemonset/ztunnel",
		"-n istio-system serviceaccount/ztunnel",
		"-n istio-system service/istiod",
		"-n istio-system role/ztunnel",
		"-n istio-system rolebinding/ztunnel",
		"clusterrole/ztunnel",
		"clusterrolebinding/ztunnel",
	} {
		c.MustKubectl(t, append([]string{"get"}, strings.Fields(obj)...)...)
	}
	ports := c.MustKubectl(t, "-n", "istio-system", "get", "service", "istiod-lite", "-o", "jsonpath={.spec.ports[*].port}")
	if ports != "15012" {
		t.Errorf("istiod-lite service ports = %q, want %q (no plaintext port)", ports, "15012")
	}
	ds, err := c.Clientset.AppsV1().DaemonSets("istio-system").Get(context.Background(), "ztunnel", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	if pod.HostNetwork {
		t.Errorf("ztunnel DaemonSet: hostNetwork true, want false")
	}
	if sc := pod.Containers[0].SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("ztunnel container is not privileged: %+v", sc)
	}
	if len(pod.InitContainers) != 1 || pod.InitContainers[0].Name != "install-cni" {
		t.Errorf("ztunnel DaemonSet init containers = %v, want install-cni", pod.InitContainers)
	} else if rp := pod.InitContainers[0].RestartPolicy; rp == nil || *rp != "Always" {
		t.Errorf("install-cni restartPolicy = %v, want Always (a sidecar that keeps the plugin chained)", rp)
	}
	if pod.ServiceAccountName != "ztunnel" {
		t.Errorf("ztunnel DaemonSet serviceAccountName = %q, want ztunnel", pod.ServiceAccountName)
	}
	audience := ""
	for _, v := range pod.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if audience != "istio-ca" {
		t.Errorf("ztunnel projected token audience = %q, want istio-ca", audience)
	}
	// Istio's ztunnel dials istiod.istio-system.svc:15012: that Service
	// reaches istiod-lite's TLS port.
	istiod, err := c.Clientset.CoreV1().Services("istio-system").Get(context.Background(), "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := istiod.Spec.Selector["app"]; got != "istiod-lite" || len(istiod.Spec.Ports) != 1 ||
		istiod.Spec.Ports[0].Port != 15012 || istiod.Spec.Ports[0].TargetPort.IntValue() != 15012 {
		t.Errorf("service istiod: selector app=%q ports %+v; want app=istiod-lite, 15012 -> 15012", got, istiod.Spec.Ports)
	}
	out, _ = c.Kubectl(context.Background(), "auth", "can-i", "--as=system:serviceaccount:istio-system:ztunnel", "-n", "istio-system", "get", "daemonsets/ztunnel")
	if strings.TrimSpace(out) != "yes" {
		t.Errorf("ztunnel cannot get its DaemonSet (install-cni's uninstall check): %q, want yes", out)
	}

	// The istiod-lite ServiceAccount may do what the controller needs.
	for _, check := range [][]string{
		{"create", "tokenreviews.authentication.k8s.io"},
		{"watch", "endpointslices.discovery.k8s.io", "--all-namespaces"},
		{"update", "authorizationpolicies.security.istio.io", "--subresource=status", "-n", "demo"},
		{"list", "httproutes.gateway.networking.k8s.io", "--all-namespaces"},
		{"update", "leases.coordination.k8s.io", "-n", "istio-system"},
	} {
		args := append([]string{"auth", "can-i", "--as=system:serviceaccount:istio-system:istiod-lite"}, check...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := c.Kubectl(ctx, args...)
		cancel()
		if err != nil || strings.TrimSpace(out) != "yes" {
			t.Errorf("kubectl auth can-i %s as istiod-lite = %q, %v; want yes", strings.Join(check, " "), strings.TrimSpace(out), err)
		}
	}
	out, _ = c.Kubectl(context.Background(), "auth", "can-i", "--as=system:serviceaccount:istio-system:ztunnel", "list", "pods", "--all-namespaces")
	if strings.TrimSpace(out) != "no" {
		t.Errorf("ztunnel can list pods: %q, want no", out)
	}
}
