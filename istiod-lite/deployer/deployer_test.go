package deployer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/kubetest"
	"github.com/ambient-go/mesh/istiod-lite/source/kube"
)

const waitTimeout = 30 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("KUBE_TEST_DEBUG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startDeployer runs a manager with the Deployer against a real API
// server, configured as istiod-lite configures it (a cache of Deployments
// filtered by ManagedLabel, the API reader for the rest).
func startDeployer(t *testing.T) (*Deployer, client.Client) {
	t.Helper()
	rc := kubetest.Start(t)
	ctrllog.SetLogger(logr.Discard())
	scheme, err := kube.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := manager.New(rc, manager.Options{
		Scheme:  scheme,
		Logger:  logr.Discard(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&appsv1.Deployment{}: {Label: labels.SelectorFromSet(labels.Set{ManagedLabel: ManagedValue})},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Image: "ambient-go/waypoint:test", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return d, c
}

func poll(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func waypoint(ns, name string) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassName,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
}

func mustCreate(t *testing.T, c client.Client, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := c.Create(t.Context(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

// exists reports whether ns/name of obj's kind exists.
func exists(t *testing.T, c client.Client, ns, name string, obj client.Object) bool {
	t.Helper()
	err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, obj)
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// reconcileGateway reconciles ns/name once the Deployer's cache has the
// Gateway.
func reconcileGateway(t *testing.T, d *Deployer, ns, name string) reconcile.Result {
	t.Helper()
	poll(t, "the Gateway in the cache", func(ctx context.Context) (bool, error) {
		err := d.cfg.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &gatewayv1.Gateway{})
		return err == nil, client.IgnoreNotFound(err)
	})
	res, err := d.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
	if err != nil {
		t.Fatalf("Reconcile(%s/%s): %v", ns, name, err)
	}
	return res
}

func events(t *testing.T, c client.Client, ns, gateway string) []corev1.Event {
	t.Helper()
	var l corev1.EventList
	if err := c.List(t.Context(), &l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range l.Items {
		if e.InvolvedObject.Kind == "Gateway" && e.InvolvedObject.Name == gateway {
			out = append(out, e)
		}
	}
	return out
}

func TestDeployer(t *testing.T) {
	d, c := startDeployer(t)
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}})

	t.Run("the GatewayClass istio-waypoint is created and accepted", func(t *testing.T) {
		var class gatewayv1.GatewayClass
		poll(t, "GatewayClass istio-waypoint Accepted", func(ctx context.Context) (bool, error) {
			if !exists(t, c, "", ClassName, &class) {
				return false, nil
			}
			for _, cond := range class.Status.Conditions {
				if cond.Type == "Accepted" && cond.Status == metav1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if class.Spec.ControllerName != ControllerName || ptr.Deref(class.Spec.Description, "") != ClassDescription {
			t.Errorf("GatewayClass spec = %+v, want controller %s and description %q", class.Spec, ControllerName, ClassDescription)
		}
		for _, cond := range class.Status.Conditions {
			if cond.Type == "Accepted" && (cond.Reason != "Accepted" || cond.Message != classAcceptedMessage || cond.ObservedGeneration != class.Generation) {
				t.Errorf("Accepted condition = %+v, want reason Accepted, message %q, observedGeneration %d", cond, classAcceptedMessage, class.Generation)
			}
		}
	})

	gw := waypoint("demo", "waypoint")
	mustCreate(t, c, gw)
	wantOwner := []metav1.OwnerReference{{APIVersion: "gateway.networking.k8s.io/v1", Kind: "Gateway", Name: "waypoint", UID: gw.UID, Controller: ptr.To(true)}}

	t.Run("a waypoint Gateway gets a ServiceAccount, Deployment and Service", func(t *testing.T) {
		var (
			sa     corev1.ServiceAccount
			deploy appsv1.Deployment
			svc    corev1.Service
		)
		poll(t, "the waypoint's objects", func(ctx context.Context) (bool, error) {
			return exists(t, c, "demo", "waypoint", &sa) && exists(t, c, "demo", "waypoint", &deploy) && exists(t, c, "demo", "waypoint", &svc), nil
		})
		for _, o := range []client.Object{&sa, &deploy, &svc} {
			if diff := cmp.Diff(wantOwner, o.GetOwnerReferences()); diff != "" {
				t.Errorf("%T owner references (-want +got):\n%s", o, diff)
			}
			l := o.GetLabels()
			if l[GatewayNameLabel] != "waypoint" || l[ManagedLabel] != ManagedValue || l[GatewayClassNameLabel] != ClassName {
				t.Errorf("%T labels = %v, want Istio's", o, l)
			}
		}
		pod := deploy.Spec.Template
		if diff := cmp.Diff(map[string]string{GatewayNameLabel: "waypoint"}, deploy.Spec.Selector.MatchLabels); diff != "" {
			t.Errorf("deployment selector (-want +got):\n%s", diff)
		}
		if pod.Labels[DataplaneModeLabel] != "none" || pod.Labels[GatewayNameLabel] != "waypoint" || pod.Labels[ManagedLabel] != ManagedValue {
			t.Errorf("pod labels = %v, want %s=none, %s=waypoint, %s=%s", pod.Labels, DataplaneModeLabel, GatewayNameLabel, ManagedLabel, ManagedValue)
		}
		if pod.Spec.ServiceAccountName != "waypoint" {
			t.Errorf("pod service account = %q, want waypoint", pod.Spec.ServiceAccountName)
		}
		ctr := pod.Spec.Containers[0]
		if ctr.Image != "ambient-go/waypoint:test" {
			t.Errorf("image = %q, want the configured one", ctr.Image)
		}
		wantProbe := &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(15021), Scheme: corev1.URISchemeHTTP}
		if ctr.ReadinessProbe == nil || cmp.Diff(wantProbe, ctr.ReadinessProbe.HTTPGet) != "" {
			t.Errorf("readiness probe = %+v, want HTTP GET /healthz/ready on 15021", ctr.ReadinessProbe)
		}
		ports := map[string]int32{}
		for _, p := range ctr.Ports {
			ports[p.Name] = p.ContainerPort
		}
		if ports["metrics"] != 15020 || ports["status-port"] != 15021 {
			t.Errorf("container ports = %v, want metrics 15020 and status-port 15021", ports)
		}
		env := map[string]string{}
		for _, e := range ctr.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				env[e.Name] = e.ValueFrom.FieldRef.FieldPath
			}
		}
		for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "INSTANCE_IP": "status.podIP", "SERVICE_ACCOUNT": "spec.serviceAccountName"} {
			if env[name] != path {
				t.Errorf("env %s from %q, want %q", name, env[name], path)
			}
		}
		var token *corev1.ServiceAccountTokenProjection
		var rootCM string
		for _, v := range pod.Spec.Volumes {
			if v.Projected != nil && len(v.Projected.Sources) > 0 && v.Projected.Sources[0].ServiceAccountToken != nil {
				token = v.Projected.Sources[0].ServiceAccountToken
			}
			if v.ConfigMap != nil {
				rootCM = v.ConfigMap.Name
			}
		}
		if token == nil || token.Audience != TokenAudience {
			t.Errorf("projected token = %+v, want audience %s", token, TokenAudience)
		}
		if rootCM != RootCertConfigMap {
			t.Errorf("root certificate from ConfigMap %q, want %s", rootCM, RootCertConfigMap)
		}

		type port struct {
			Name, AppProtocol string
			Port              int32
		}
		var gotPorts []port
		for _, p := range svc.Spec.Ports {
			gotPorts = append(gotPorts, port{p.Name, ptr.Deref(p.AppProtocol, ""), p.Port})
		}
		if diff := cmp.Diff([]port{{"status-port", "tcp", 15021}, {"mesh", "hbone", 15008}}, gotPorts); diff != "" {
			t.Errorf("service ports (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]string{GatewayNameLabel: "waypoint"}, svc.Spec.Selector); diff != "" {
			t.Errorf("service selector (-want +got):\n%s", diff)
		}
		if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.ClusterIP == "" {
			t.Errorf("service type %s, cluster IP %q; want a ClusterIP service with an address", svc.Spec.Type, svc.Spec.ClusterIP)
		}
	})

	t.Run("user edits to other fields are kept, ours are restored, a no-op apply writes nothing", func(t *testing.T) {
		var deploy appsv1.Deployment
		if !exists(t, c, "demo", "waypoint", &deploy) {
			t.Fatal("no deployment")
		}
		// kubectl scale and annotate, and an edit of the image we set.
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"team":"blue"}},"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"waypoint","image":"evil:1"}]}}}}`))
		if err := c.Patch(t.Context(), &deploy, patch, client.FieldOwner("kubectl-edit")); err != nil {
			t.Fatal(err)
		}
		poll(t, "the image restored", func(ctx context.Context) (bool, error) {
			return exists(t, c, "demo", "waypoint", &deploy) && deploy.Spec.Template.Spec.Containers[0].Image == "ambient-go/waypoint:test", nil
		})
		if got := ptr.Deref(deploy.Spec.Replicas, 0); got != 3 {
			t.Errorf("replicas = %d after reconciling, want the user's 3", got)
		}
		if got := deploy.Annotations["team"]; got != "blue" {
			t.Errorf("annotation team = %q after reconciling, want the user's blue", got)
		}

		rv := map[string]string{}
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}} {
			exists(t, c, "demo", "waypoint", o)
			rv[fmt.Sprintf("%T", o)] = o.GetResourceVersion()
		}
		reconcileGateway(t, d, "demo", "waypoint")
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}} {
			exists(t, c, "demo", "waypoint", o)
			if k := fmt.Sprintf("%T", o); o.GetResourceVersion() != rv[k] {
				t.Errorf("%s resourceVersion %s → %s after a reconcile with nothing to change; want no write", k, rv[k], o.GetResourceVersion())
			}
		}
	})

	t.Run("a Gateway of another class is ignored", func(t *testing.T) {
		other := waypoint("demo", "other")
		other.Spec.GatewayClassName = "istio"
		mustCreate(t, c, other)
		reconcileGateway(t, d, "demo", "other")
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}} {
			if exists(t, c, "demo", "other", o) {
				t.Errorf("%T demo/other exists for a Gateway of class istio; want nothing deployed", o)
			}
		}
	})

	t.Run("an object of the same name that is not ours is left alone", func(t *testing.T) {
		theirs := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "taken"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "theirs"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "theirs"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "theirs:1"}}},
				},
			},
		}
		mustCreate(t, c, theirs, waypoint("demo", "taken"))
		if res := reconcileGateway(t, d, "demo", "taken"); res.RequeueAfter == 0 {
			t.Errorf("Reconcile of a Gateway whose name is taken = %+v, want a later look", res)
		}
		var got appsv1.Deployment
		exists(t, c, "demo", "taken", &got)
		if got.Spec.Template.Spec.Containers[0].Image != "theirs:1" || len(got.OwnerReferences) != 0 || got.Labels[ManagedLabel] != "" {
			t.Errorf("the user's Deployment was changed: %+v", got.ObjectMeta)
		}
		if exists(t, c, "demo", "taken", &corev1.Service{}) || exists(t, c, "demo", "taken", &corev1.ServiceAccount{}) {
			t.Error("a Service or ServiceAccount was deployed for a waypoint that cannot be deployed; want nothing")
		}
		poll(t, "a NameConflict event on the Gateway", func(ctx context.Context) (bool, error) {
			for _, e := range events(t, c, "demo", "taken") {
				if e.Reason == ReasonNameConflict && e.Type == corev1.EventTypeWarning {
					return true, nil
				}
			}
			return false, nil
		})
		reconcileGateway(t, d, "demo", "taken")
		if n := len(events(t, c, "demo", "taken")); n != 1 {
			t.Errorf("%d events after the same failure twice, want 1", n)
		}
	})

	t.Run("a ServiceAccount the user made is used as it is", func(t *testing.T) {
		mustCreate(t, c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "mine"}}, waypoint("demo", "mine"))
		poll(t, "the deployment of demo/mine", func(ctx context.Context) (bool, error) {
			return exists(t, c, "demo", "mine", &appsv1.Deployment{}), nil
		})
		var sa corev1.ServiceAccount
		exists(t, c, "demo", "mine", &sa)
		if len(sa.OwnerReferences) != 0 || len(sa.Labels) != 0 {
			t.Errorf("the user's ServiceAccount got %v and %v; want it untouched (deleting the Gateway must not delete it)", sa.OwnerReferences, sa.Labels)
		}
	})

	t.Run("a Gateway name that cannot name a Service deploys nothing", func(t *testing.T) {
		mustCreate(t, c, waypoint("demo", "my.waypoint"))
		poll(t, "an InvalidName event", func(ctx context.Context) (bool, error) {
			for _, e := range events(t, c, "demo", "my.waypoint") {
				if e.Reason == ReasonInvalidName {
					return true, nil
				}
			}
			return false, nil
		})
		if exists(t, c, "demo", "my.waypoint", &appsv1.Deployment{}) {
			t.Error("deployment demo/my.waypoint exists; want nothing deployed")
		}
	})

	t.Run("a deleted GatewayClass is created again", func(t *testing.T) {
		var class gatewayv1.GatewayClass
		exists(t, c, "", ClassName, &class)
		old := class.UID
		if err := c.Delete(t.Context(), &class); err != nil {
			t.Fatal(err)
		}
		poll(t, "a new GatewayClass", func(ctx context.Context) (bool, error) {
			return exists(t, c, "", ClassName, &class) && class.UID != old, nil
		})
	})
}
