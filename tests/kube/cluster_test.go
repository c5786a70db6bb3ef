package kube

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

const waitTimeout = 30 * time.Second

func poll(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func TestControlPlane(t *testing.T) {
	var mu sync.Mutex
	stopped := map[string]bool{}
	c := Start(t, Config{
		Nodes: []Node{{Name: "node-a", IP: netip.MustParseAddr("198.18.0.1")}, {Name: "node-b", IP: netip.MustParseAddr("198.18.0.2")}},
		RunPod: func(ctx context.Context, pod *corev1.Pod) ([]netip.Addr, error) {
			if pod.Labels["run"] != "harness" {
				return nil, errors.New("not run by this test") // the test sets the status itself
			}
			return []netip.Addr{netip.MustParseAddr("198.18.1.10")}, nil
		},
		StopPod: func(ctx context.Context, pod *corev1.Pod) {
			mu.Lock()
			defer mu.Unlock()
			stopped[pod.Name] = true
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	t.Run("APIServerVersion", func(t *testing.T) {
		v, err := c.Clientset.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		if v.GitVersion != "v1.37.2" {
			t.Errorf("ServerVersion().GitVersion = %q, want v1.37.2", v.GitVersion)
		}
		out := c.MustKubectl(t, "version", "-o", "json")
		var kv struct {
			ClientVersion struct{ GitVersion string } `json:"clientVersion"`
		}
		if err := json.Unmarshal([]byte(out), &kv); err != nil {
			t.Fatalf("kubectl version -o json: %v: %s", err, out)
		}
		if kv.ClientVersion.GitVersion != "v1.37.2" {
			t.Errorf("kubectl version: client %q, want v1.37.2", kv.ClientVersion.GitVersion)
		}
	})

	t.Run("ServiceCIDR", func(t *testing.T) {
		svc, err := c.Clientset.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr(svc.Spec.ClusterIP)
		if !netip.MustParsePrefix(DefaultServiceCIDR).Contains(ip) {
			t.Errorf("kubernetes service ClusterIP %s is not in %s", ip, DefaultServiceCIDR)
		}
	})

	t.Run("KubectlGetNodes", func(t *testing.T) {
		out := c.MustKubectl(t, "get", "nodes", "-o", "name")
		if got, want := strings.Fields(out), []string{"node/node-a", "node/node-b"}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("kubectl get nodes -o name = %q, want %q", got, want)
		}
	})

	t.Run("EndpointSlices", func(t *testing.T) {
		c.MustKubectl(t, "create", "namespace", "eps")
		c.MustKubectl(t, "-n", "eps", "create", "service", "clusterip", "echo", "--tcp=80:8080")
		pod, err := c.CreatePod(ctx, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Namespace: "eps", Name: "echo-1", Labels: map[string]string{"app": "echo"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetPodStatus(ctx, pod.Namespace, pod.Name, PodStatus{IPs: []netip.Addr{netip.MustParseAddr("198.18.1.1")}, Ready: true}); err != nil {
			t.Fatal(err)
		}
		poll(t, "a ready endpoint 198.18.1.1 for eps/echo", func(ctx context.Context) (bool, error) {
			slices, err := c.Clientset.DiscoveryV1().EndpointSlices("eps").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
			if err != nil {
				return false, err
			}
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if e.Conditions.Ready != nil && *e.Conditions.Ready && len(e.Addresses) == 1 && e.Addresses[0] == "198.18.1.1" &&
						e.NodeName != nil && *e.NodeName == "node-a" {
						return true, nil
					}
				}
			}
			return false, nil
		})
	})

	t.Run("KubeletRunsDeploymentPods", func(t *testing.T) {
		c.MustKubectl(t, "create", "namespace", "deploy")
		if out, err := c.KubectlStdin(ctx, strings.NewReader(webDeployment), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		poll(t, "two running, ready pods of deploy/web", func(ctx context.Context) (bool, error) {
			pods, err := c.Clientset.CoreV1().Pods("deploy").List(ctx, metav1.ListOptions{LabelSelector: "run=harness"})
			if err != nil {
				return false, err
			}
			ready := 0
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Spec.NodeName != "" && p.Status.PodIP == "198.18.1.10" && p.Status.Phase == corev1.PodRunning {
					ready++
				}
			}
			return ready == 2, nil
		})
		// kubectl delete waits for the harness kubelet to remove the pods.
		c.MustKubectl(t, "-n", "deploy", "delete", "pods", "-l", "run=harness", "--timeout=20s")
		mu.Lock()
		n := len(stopped)
		mu.Unlock()
		if n < 2 {
			t.Errorf("StopPod called for %d pods, want at least 2", n)
		}
	})

	t.Run("NamespaceDeleteCompletes", func(t *testing.T) {
		c.MustKubectl(t, "create", "namespace", "gone")
		if err := c.WaitForServiceAccount(ctx, "gone", "default"); err != nil {
			t.Fatalf("serviceaccount controller: %v", err)
		}
		if _, err := c.CreatePod(ctx, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "gone", Name: "p"}}); err != nil {
			t.Fatal(err)
		}
		c.MustKubectl(t, "-n", "gone", "create", "configmap", "cm", "--from-literal=a=b")
		c.MustKubectl(t, "delete", "namespace", "gone", "--timeout=30s")
		if _, err := c.Clientset.CoreV1().Namespaces().Get(ctx, "gone", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("namespace gone after kubectl delete: err = %v, want NotFound", err)
		}
	})

	t.Run("PodBoundTokenNamesNode", func(t *testing.T) {
		c.MustKubectl(t, "create", "namespace", "tok")
		if err := c.WaitForServiceAccount(ctx, "tok", "default"); err != nil {
			t.Fatal(err)
		}
		pod, err := c.CreatePod(ctx, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "tok", Name: "ztunnel-x"}})
		if err != nil {
			t.Fatal(err)
		}
		token, err := c.ServiceAccountToken(ctx, "tok", "default", "istio-ca", pod)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := c.Clientset.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{"istio-ca"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !tr.Status.Authenticated {
			t.Fatalf("TokenReview: not authenticated: %s", tr.Status.Error)
		}
		if got, want := tr.Status.User.Username, "system:serviceaccount:tok:default"; got != want {
			t.Errorf("TokenReview user = %q, want %q", got, want)
		}
		if got := tr.Status.User.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != "node-b" {
			t.Errorf("TokenReview extra node-name = %q, want [node-b] (extra: %v)", got, tr.Status.User.Extra)
		}
		if got := tr.Status.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != "ztunnel-x" {
			t.Errorf("TokenReview extra pod-name = %q, want [ztunnel-x]", got)
		}
	})
}

const webDeployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: deploy}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, run: harness}}
    spec:
      containers: [{name: web, image: ambient-go/app:test}]
`
