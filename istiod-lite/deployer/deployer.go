// Package deployer deploys waypoints in cluster mode, as Istio's istiod
// does: it makes sure the GatewayClass istio-waypoint exists (controller
// istio.io/mesh-controller), and for each Gateway of that class it applies
// a ServiceAccount, a Deployment running the waypoint binary and a
// ClusterIP Service, all named after the Gateway, in its namespace, with an
// owner reference to it (the garbage collector deletes them with the
// Gateway) and Istio's labels (gateway.networking.k8s.io/gateway-name,
// gateway.istio.io/managed: istio.io-mesh-controller, and
// istio.io/dataplane-mode: none on the pods, so that ztunnel never
// captures a waypoint).
//
// The Deployer is a controller-runtime controller that runs only on the
// elected leader. It is level-based: every event on a Gateway, its
// GatewayClass or an object it owns reconciles that Gateway's objects with
// server-side apply under the field owner FieldOwner. Only the fields it
// sets are its own: a user's replicas, annotations or resources are kept,
// and an apply that changes nothing changes nothing (no new
// resourceVersion). An object of the same name that it did not deploy is
// left alone. Failures are reported as Warning Events on the Gateway and
// retried with backoff; nothing crashes.
//
// Status is not written here: the model computes each waypoint Gateway's
// status (Accepted, Programmed, addresses, listeners) and package status
// writes it. A Gateway with a wrong listener is deployed all the same, as
// Istio does: it binds nothing, and its listener status says why.
package deployer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Defaults of Config.
const (
	DefaultImage      = "ghcr.io/ambient-go/waypoint:latest"
	DefaultXDSAddress = "istiod-lite.istio-system.svc:15012"
)

// Istio's names for the waypoint GatewayClass.
const (
	// ClassName is the GatewayClass of waypoints.
	ClassName = "istio-waypoint"
	// ControllerName is the controllerName of the GatewayClass
	// istio-waypoint, Istio's mesh controller.
	ControllerName = "istio.io/mesh-controller"
	// ClassDescription is the description Istio gives the class.
	ClassDescription = "The default Istio waypoint GatewayClass"
	// FieldOwner is the server-side apply field manager of everything the
	// Deployer applies.
	FieldOwner = "istiod-lite"
	// EventComponent is the source of the Deployer's Events.
	EventComponent = "istiod-lite"
)

// Reasons of the Warning Events recorded on a Gateway.
const (
	// ReasonDeployFailed: applying an object failed (retried).
	ReasonDeployFailed = "DeployFailed"
	// ReasonNameConflict: an object of the waypoint's name exists and
	// was not deployed for this Gateway; it is left alone.
	ReasonNameConflict = "NameConflict"
	// ReasonInvalidName: the Gateway's name cannot name a Service (not a
	// DNS-1035 label); nothing is deployed.
	ReasonInvalidName = "InvalidName"
)

// Config configures a Deployer. Client is required.
type Config struct {
	// Client reads Gateways, GatewayClasses and the deployed objects
	// (usually from the manager's cache) and applies them.
	Client client.Client
	// Reader looks an object up when Client does not find it, before the
	// Deployer creates it: give the manager's APIReader when the cache of
	// Deployments is filtered (by ManagedLabel), so that a Deployment of
	// the same name that the cache does not show is never overwritten.
	// Default: Client only.
	Reader client.Reader
	// Image is the waypoint container image; default DefaultImage.
	Image string
	// XDSAddress is istiod-lite's xDS and CA address, as the waypoint
	// dials it; default DefaultXDSAddress.
	XDSAddress string
	// TrustDomain, DomainSuffix and ClusterID are the mesh's (see
	// model.Options); defaults "cluster.local", "cluster.local" and
	// "Kubernetes".
	TrustDomain, DomainSuffix, ClusterID string
	// Logger; default discard.
	Logger *slog.Logger
	// Now is the time of Events; default time.Now.
	Now func() time.Time
}

// Deployer deploys waypoint Gateways; see the package comment.
type Deployer struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	// evented is the last Warning recorded per Gateway (its UID, reason
	// and message), so that a failure retried with backoff is recorded
	// once.
	evented map[types.NamespacedName]string
}

var _ reconcile.Reconciler = (*Deployer)(nil)

// conflictRetry is how often a Gateway whose name is taken by another
// object is looked at again.
const conflictRetry = 30 * time.Second

// classRequest is the reconcile request of the GatewayClass.
var classRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: ClassName}}

// New returns a Deployer; SetupWithManager runs it.
func New(cfg Config) (*Deployer, error) {
	if cfg.Client == nil {
		return nil, errors.New("deployer: Config.Client is required")
	}
	cfg.Image = cmp.Or(cfg.Image, DefaultImage)
	cfg.XDSAddress = cmp.Or(cfg.XDSAddress, DefaultXDSAddress)
	cfg.TrustDomain = cmp.Or(cfg.TrustDomain, "cluster.local")
	cfg.DomainSuffix = cmp.Or(cfg.DomainSuffix, "cluster.local")
	cfg.ClusterID = cmp.Or(cfg.ClusterID, "Kubernetes")
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Deployer{cfg: cfg, log: log.With("component", "waypoint-deployer"), evented: map[types.NamespacedName]string{}}, nil
}

// SetupWithManager adds the Deployer to mgr as a controller that runs on
// the elected leader. mgr's scheme must know Gateway API v1, core/v1 and
// apps/v1. It returns an error satisfying meta.IsNoMatchError when the
// Gateway API CRDs are not installed.
func (d *Deployer) SetupWithManager(mgr ctrl.Manager) error {
	for _, obj := range []client.Object{&gatewayv1.Gateway{}, &gatewayv1.GatewayClass{}} {
		gvk, err := mgr.GetClient().GroupVersionKindFor(obj)
		if err != nil {
			return fmt.Errorf("deployer: %w", err)
		}
		if _, err := mgr.GetRESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("deployer: %s: %w", gvk.Kind, err)
		}
	}
	err := ctrl.NewControllerManagedBy(mgr).
		Named("waypoint-deployer").
		// Several managers in one process (replicas in tests) each run
		// one.
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true)}).
		For(&gatewayv1.Gateway{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Watches(&gatewayv1.GatewayClass{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if o.GetName() != ClassName {
				return nil
			}
			return []reconcile.Request{classRequest}
		})).
		// The class is created at start even when nothing changes.
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(classRequest)
			return nil
		})).
		Complete(d)
	if err != nil {
		return fmt.Errorf("deployer: %w", err)
	}
	return nil
}

// Reconcile implements reconcile.Reconciler: the GatewayClass (request
// without namespace) or one Gateway.
func (d *Deployer) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	if req == classRequest {
		return reconcile.Result{}, d.ensureClass(ctx)
	}
	var gw gatewayv1.Gateway
	if err := d.cfg.Client.Get(ctx, req.NamespacedName, &gw); err != nil {
		if apierrors.IsNotFound(err) {
			d.mu.Lock()
			delete(d.evented, req.NamespacedName)
			d.mu.Unlock()
			return reconcile.Result{}, nil // the garbage collector deletes what it owned
		}
		return reconcile.Result{}, fmt.Errorf("deployer: get Gateway %s: %w", req, err)
	}
	if string(gw.Spec.GatewayClassName) != ClassName || gw.DeletionTimestamp != nil || !managed(&gw) {
		return reconcile.Result{}, nil
	}
	var class gatewayv1.GatewayClass
	switch err := d.cfg.Client.Get(ctx, client.ObjectKey{Name: ClassName}, &class); {
	case err == nil && class.Spec.ControllerName != ControllerName:
		d.log.Debug("gateway class handled by another controller, not deploying", "controller", string(class.Spec.ControllerName))
		return reconcile.Result{}, nil
	case err != nil && !apierrors.IsNotFound(err):
		return reconcile.Result{}, fmt.Errorf("deployer: get GatewayClass: %w", err)
	}
	return d.deploy(ctx, &gw)
}

// managed is Istio's IsManaged: a Gateway that asks for more than one
// address, or for an address that is not an IP, names an existing
// deployment and is not deployed.
func managed(gw *gatewayv1.Gateway) bool {
	switch len(gw.Spec.Addresses) {
	case 0:
		return true
	case 1:
		t := gw.Spec.Addresses[0].Type
		return t == nil || *t == gatewayv1.IPAddressType
	}
	return false
}

// deploy applies the ServiceAccount, Service and Deployment of gw.
func (d *Deployer) deploy(ctx context.Context, gw *gatewayv1.Gateway) (reconcile.Result, error) {
	log := d.log.With("namespace", gw.Namespace, "gateway", gw.Name)
	if errs := validation.IsDNS1035Label(gw.Name); len(errs) > 0 {
		d.warn(ctx, gw, ReasonInvalidName, fmt.Sprintf("waypoint not deployed: the Gateway name %q cannot name a Service: %s", gw.Name, errs[0]))
		return reconcile.Result{}, nil // retrying cannot help; a new name is a new Gateway
	}
	objs := render(gw, &d.cfg)
	steps := []struct {
		kind string
		obj  client.Object
		ac   runtime.ApplyConfiguration
	}{
		{"ServiceAccount", &corev1.ServiceAccount{}, objs.serviceAccount},
		{"Service", &corev1.Service{}, objs.service},
		{"Deployment", &appsv1.Deployment{}, objs.deployment},
	}
	// Check every object before applying any: a waypoint is deployed
	// whole or not at all.
	key := client.ObjectKey{Namespace: gw.Namespace, Name: gw.Name}
	apply := make([]runtime.ApplyConfiguration, 0, len(steps))
	kinds := make([]string, 0, len(steps))
	for _, s := range steps {
		ours, err := d.owned(ctx, key, s.obj, gw)
		if err != nil {
			return reconcile.Result{}, fmt.Errorf("deployer: get %s %s: %w", s.kind, key, err)
		}
		if ours {
			apply, kinds = append(apply, s.ac), append(kinds, s.kind)
			continue
		}
		if s.kind == "ServiceAccount" {
			// A ServiceAccount the user made for the waypoint is used as
			// it is: applying would add our owner reference, and deleting
			// the Gateway would delete it.
			log.Debug("using an existing service account")
			continue
		}
		d.warn(ctx, gw, ReasonNameConflict, fmt.Sprintf("waypoint not deployed: %s %s exists and was not deployed for this Gateway", s.kind, key))
		// It may be in no cache (the cache of Deployments holds only
		// ours): look again later.
		return reconcile.Result{RequeueAfter: conflictRetry}, nil
	}
	for i, ac := range apply {
		if err := d.cfg.Client.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			msg := fmt.Sprintf("applying %s %s: %v", kinds[i], key, err)
			d.warn(ctx, gw, ReasonDeployFailed, msg)
			return reconcile.Result{}, fmt.Errorf("deployer: %s", msg)
		}
	}
	d.clearWarning(gw)
	log.Debug("waypoint applied")
	return reconcile.Result{}, nil
}

// owned reports whether the object key of obj's kind can be applied for
// gw: it does not exist, or it was deployed for gw (its owner reference,
// or Istio's labels naming the Gateway, as after an upgrade from Istio).
func (d *Deployer) owned(ctx context.Context, key client.ObjectKey, obj client.Object, gw *gatewayv1.Gateway) (bool, error) {
	err := d.cfg.Client.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) && d.cfg.Reader != nil {
		err = d.cfg.Reader.Get(ctx, key, obj)
	}
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	for _, ref := range obj.GetOwnerReferences() {
		if ref.UID == gw.UID {
			return true, nil
		}
	}
	l := obj.GetLabels()
	return l[ManagedLabel] == ManagedValue && l[GatewayNameLabel] == gw.Name, nil
}

// warn records a Warning Event on gw, once per distinct message until the
// Gateway deploys cleanly again.
func (d *Deployer) warn(ctx context.Context, gw *gatewayv1.Gateway, reason, msg string) {
	key, sig := client.ObjectKeyFromObject(gw), string(gw.UID)+"|"+reason+"|"+msg
	d.mu.Lock()
	seen := d.evented[key] == sig
	d.evented[key] = sig
	d.mu.Unlock()
	if seen {
		return
	}
	d.log.Warn("waypoint not deployed", "namespace", gw.Namespace, "gateway", gw.Name, "reason", reason, "message", msg)
	now := metav1.NewTime(d.cfg.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: gw.Name + ".", Namespace: gw.Namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Namespace: gw.Namespace, Name: gw.Name,
			UID: gw.UID, ResourceVersion: gw.ResourceVersion,
		},
		Reason: reason, Message: msg, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: EventComponent},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: EventComponent, ReportingInstance: EventComponent,
	}
	if err := d.cfg.Client.Create(ctx, ev); err != nil {
		d.log.Warn("event not recorded", "namespace", gw.Namespace, "gateway", gw.Name, "error", err.Error())
		d.mu.Lock()
		delete(d.evented, key)
		d.mu.Unlock()
	}
}

func (d *Deployer) clearWarning(gw *gatewayv1.Gateway) {
	d.mu.Lock()
	delete(d.evented, client.ObjectKeyFromObject(gw))
	d.mu.Unlock()
}
