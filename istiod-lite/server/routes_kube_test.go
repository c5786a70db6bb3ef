package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/istiod-lite/kubetest"
	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/source/kube"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// TestRoutesInCluster runs istiod-lite in cluster mode against a real API
// server: an HTTPRoute attached to a Service bound to a ready waypoint is
// published as that Service's Routes and gets Accepted written into its
// status; the TCPRoute CRD, removed before istiod-lite starts, is picked up
// once installed, and a TCPRoute applied then is published and accepted
// too.
func TestRoutesInCluster(t *testing.T) {
	rc := kubetest.Start(t)
	scheme, err := kube.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	poll := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("%s: not within the test's deadline", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// The TCPRoute CRD is not there when istiod-lite starts.
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	crdYAML, err := os.ReadFile(filepath.Join(root, "crds", "gateway.networking.k8s.io_tcproutes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(crdYAML, &crd.Object); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, crd.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	poll("TCPRoute CRD deleted", func() bool {
		err := c.Get(ctx, client.ObjectKeyFromObject(crd), crd.DeepCopy())
		return apierrors.IsNotFound(err)
	})

	create := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := c.Create(ctx, o); err != nil {
				t.Fatalf("create %T %s: %v", o, o.GetName(), err)
			}
		}
	}
	svc := func(name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	}
	wpPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint-0",
		Labels: map[string]string{model.LabelGatewayName: "waypoint", "istio.io/dataplane-mode": "none"}},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "proxy", Image: "waypoint"}}}}
	svcParent := gatewayv1.ParentReference{Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: "echo", Port: ptr.To[int32](80)}
	backend := func(name string, weight int32) gatewayv1.BackendRef {
		return gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr.To[int32](80)}, Weight: &weight}
	}
	route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "split"},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: backend("echo", 90)}, {BackendRef: backend("echo-v2", 10)}}}}}}
	create(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelUseWaypoint: "waypoint"}}},
		&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint"},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: model.WaypointGatewayClass,
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}},
		svc("echo"), svc("echo-v2"), wpPod, route,
	)
	// The waypoint's pod is ready (the deployer creates its Service).
	wpPod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.9", PodIPs: []corev1.PodIP{{IP: "10.1.0.9"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := c.Status().Update(ctx, wpPod); err != nil {
		t.Fatal(err)
	}

	s, err := New(Config{
		Kube:          rc,
		Cluster:       ClusterOptions{LeaderElectionNamespace: "istio-system", Debounce: 50 * time.Millisecond},
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

	const key = "demo/echo.demo.svc.cluster.local"
	accepted := func(o client.Object, parents func() []gatewayv1.RouteParentStatus) func() bool {
		return func() bool {
			if err := c.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
				return false
			}
			for _, p := range parents() {
				if p.ControllerName == model.RouteControllerName && len(p.Conditions) > 0 &&
					p.Conditions[0].Type == "Accepted" && p.Conditions[0].Status == metav1.ConditionTrue {
					return true
				}
			}
			return false
		}
	}
	t.Run("HTTPRoute", func(t *testing.T) {
		poll("Routes "+key+" published", func() bool { return s.XDS().Version(workloadapi.WaypointRoutesTypeURL, key) != "" })
		poll("HTTPRoute demo/split Accepted", accepted(route, func() []gatewayv1.RouteParentStatus { return route.Status.Parents }))
	})

	t.Run("TCPRoute CRD installed after start", func(t *testing.T) {
		crd.SetResourceVersion("")
		if err := c.Create(ctx, crd); err != nil {
			t.Fatal(err)
		}
		tr := &gatewayv1.TCPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "tcp"},
			Spec: gatewayv1.TCPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent}},
				Rules: []gatewayv1.TCPRouteRule{{BackendRefs: []gatewayv1.BackendRef{backend("echo-v2", 1)}}}}}
		// The API server serves the kind once the CRD is established.
		poll("TCPRoute created", func() bool { return c.Create(ctx, tr) == nil })
		poll("TCPRoute demo/tcp Accepted", accepted(tr, func() []gatewayv1.RouteParentStatus { return tr.Status.Parents }))
		var tcp int
		for _, st := range s.RouteStatuses() {
			if st.Kind == model.KindTCPRoute {
				tcp++
			}
		}
		if tcp != 1 {
			t.Errorf("RouteStatuses() has %d TCPRoutes, want 1", tcp)
		}
	})
}
