// Package kube is istiod-lite's cluster-mode configuration source: the
// informer caches of a controller-runtime manager watching the objects the
// model reads (Namespaces, Pods, Services, ServiceAccounts, Istio's
// AuthorizationPolicy and PeerAuthentication, Gateway API Gateways,
// GatewayClasses, HTTPRoutes, GRPCRoutes, TCPRoutes and ReferenceGrants,
// EndpointSlices) and Nodes, which it will read.
//
// It is level-based: any event on any watched kind schedules a rebuild,
// and a rebuild lists every kind from the caches into one Snapshot, whose
// Inputs feed the same model as local mode (package localdir). Events
// within Config.Debounce are coalesced into one rebuild.
//
// The source runs on every replica (it is not subject to leader election).
// Kinds whose CRDs are not installed when the Source is built are logged and
// skipped, then watched as soon as their CRD appears: the Source watches
// CustomResourceDefinitions (metadata only) and tries the skipped kinds
// again on every CRD event, and every Config.RetryInterval in case that
// watch is not allowed. Skipped returns the kinds skipped at start (what
// the status writer and waypoint deployer, set up once, go by).
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// DefaultDebounce is the default of Config.Debounce.
const DefaultDebounce = 100 * time.Millisecond

// NewScheme returns a scheme with the built-in Kubernetes types, Istio's
// security.istio.io/v1 and the Gateway API's gateway.networking.k8s.io/v1.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, securityv1.AddToScheme, gatewayv1.Install} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("kube: scheme: %w", err)
		}
	}
	return s, nil
}

// Snapshot is one consistent view of the caches. Its objects are shared
// with the caches and must not be modified.
type Snapshot struct {
	// Inputs is what the model translates.
	Inputs *model.Inputs
	// Nodes are watched but not used by the model yet. Gateways,
	// EndpointSlices and HTTPRoutes are Inputs' (also here for the
	// waypoint deployer and tests).
	Nodes          []*corev1.Node
	EndpointSlices []*discoveryv1.EndpointSlice
	Gateways       []*gatewayv1.Gateway
	HTTPRoutes     []*gatewayv1.HTTPRoute
}

// Config configures a Source. OnUpdate is required.
type Config struct {
	// Debounce coalesces the events within this window into one rebuild;
	// default DefaultDebounce.
	Debounce time.Duration
	// Logger; default discard.
	Logger *slog.Logger
	// OnUpdate is called from Start's goroutine with the first snapshot
	// once the caches have synced, then after changes; the next rebuild
	// waits until it returns.
	OnUpdate func(*Snapshot)
	// OnWatched, if set, is called (from a goroutine of the Source) when
	// a kind whose CRD was missing at start is watched, before the
	// rebuild that includes it.
	OnWatched func(kind string)
	// RetryInterval is how often the kinds whose CRD was missing are
	// tried again besides on CRD events; default DefaultRetryInterval.
	RetryInterval time.Duration
}

// DefaultRetryInterval is the default of Config.RetryInterval.
const DefaultRetryInterval = 30 * time.Second

// Source is the cluster-mode configuration source; it is a
// manager.Runnable that runs on every replica.
type Source struct {
	cfg     Config
	log     *slog.Logger
	cache   cache.Cache
	client  client.Client
	handler toolscache.ResourceEventHandler
	skipped []string // at start
	changed chan struct{}
	retry   chan struct{} // a CRD changed: try the missing kinds

	mu      sync.Mutex
	kinds   map[string]bool // watched kinds, by Kind
	missing []client.Object // optional kinds not watched yet
}

var (
	_ manager.Runnable               = (*Source)(nil)
	_ manager.LeaderElectionRunnable = (*Source)(nil)
)

// watched are the kinds Source watches; optional ones are skipped when
// their CRD is not installed.
var watched = []struct {
	obj      client.Object
	optional bool
}{
	{&corev1.Namespace{}, false},
	{&corev1.Pod{}, false},
	{&corev1.Service{}, false},
	{&corev1.ServiceAccount{}, false},
	{&corev1.Node{}, false},
	{&discoveryv1.EndpointSlice{}, false},
	{&securityv1.AuthorizationPolicy{}, true},
	{&securityv1.PeerAuthentication{}, true},
	{&gatewayv1.Gateway{}, true},
	{&gatewayv1.GatewayClass{}, true},
	{&gatewayv1.HTTPRoute{}, true},
	{&gatewayv1.GRPCRoute{}, true},
	{&gatewayv1.TCPRoute{}, true},
	{&gatewayv1.ReferenceGrant{}, true},
}

// New registers an informer for every watched kind with mgr's cache and
// adds the Source to mgr. mgr's scheme must include NewScheme's types.
func New(ctx context.Context, mgr manager.Manager, cfg Config) (*Source, error) {
	if cfg.OnUpdate == nil {
		return nil, errors.New("kube: Config.OnUpdate is required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{
		cfg:     cfg,
		log:     log.With("component", "kube-source"),
		cache:   mgr.GetCache(),
		client:  mgr.GetClient(),
		kinds:   map[string]bool{},
		changed: make(chan struct{}, 1),
		retry:   make(chan struct{}, 1),
	}
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.trigger() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(client.Object)
			n, ok2 := newObj.(client.Object)
			if ok1 && ok2 && o.GetResourceVersion() == n.GetResourceVersion() {
				return // resync
			}
			s.trigger()
		},
		DeleteFunc: func(any) { s.trigger() },
	}
	s.handler = handler
	for _, w := range watched {
		gvk, err := mgr.GetClient().GroupVersionKindFor(w.obj)
		if err != nil {
			return nil, fmt.Errorf("kube: %T: %w", w.obj, err)
		}
		inf, err := s.cache.GetInformer(ctx, w.obj, cache.BlockUntilSynced(false))
		if err != nil {
			if w.optional && meta.IsNoMatchError(err) {
				s.log.Warn("kind not installed, not watched until its CRD appears", "kind", gvk.Kind, "group", gvk.Group, "version", gvk.Version)
				s.skipped = append(s.skipped, gvk.Kind)
				s.missing = append(s.missing, w.obj)
				continue
			}
			return nil, fmt.Errorf("kube: informer for %s: %w", gvk, err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("kube: event handler for %s: %w", gvk, err)
		}
		s.kinds[gvk.Kind] = true
	}
	if len(s.missing) > 0 {
		s.watchCRDs(ctx, mgr.GetAPIReader())
	}
	if err := mgr.Add(s); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return s, nil
}

// Skipped returns the kinds not watched at start because their CRD was
// not installed (they may be watched since).
func (s *Source) Skipped() []string { return s.skipped }

// Watched reports whether kind is watched now.
func (s *Source) Watched(kind string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kinds[kind]
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: the
// source runs on every replica.
func (s *Source) NeedLeaderElection() bool { return false }

func (s *Source) trigger() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Start waits for the caches to sync, calls OnUpdate with the first
// snapshot and then once per debounce window with changes, until ctx is
// done.
func (s *Source) Start(ctx context.Context) error {
	if !s.cache.WaitForCacheSync(ctx) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube: caches did not sync")
	}
	if s.hasMissing() {
		go s.retryMissing(ctx)
	}
	timer := time.NewTimer(0)
	<-timer.C
	for {
		// Drain the events that came before this rebuild: it sees them.
		select {
		case <-s.changed:
		default:
		}
		start := time.Now()
		snap, err := s.Snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.log.Debug("snapshot", "pods", len(snap.Inputs.Pods), "services", len(snap.Inputs.Services), "took", time.Since(start).String())
		s.cfg.OnUpdate(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		}
		timer.Reset(s.cfg.Debounce)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// Snapshot lists every watched kind from the caches.
func (s *Source) Snapshot(ctx context.Context) (*Snapshot, error) {
	in := &model.Inputs{}
	snap := &Snapshot{Inputs: in}
	var err error
	if in.Namespaces, err = list[corev1.Namespace](ctx, s, "Namespace", &corev1.NamespaceList{}, func(l *corev1.NamespaceList) []corev1.Namespace { return l.Items }); err != nil {
		return nil, err
	}
	if in.Pods, err = list[corev1.Pod](ctx, s, "Pod", &corev1.PodList{}, func(l *corev1.PodList) []corev1.Pod { return l.Items }); err != nil {
		return nil, err
	}
	if in.Services, err = list[corev1.Service](ctx, s, "Service", &corev1.ServiceList{}, func(l *corev1.ServiceList) []corev1.Service { return l.Items }); err != nil {
		return nil, err
	}
	if in.ServiceAccounts, err = list[corev1.ServiceAccount](ctx, s, "ServiceAccount", &corev1.ServiceAccountList{}, func(l *corev1.ServiceAccountList) []corev1.ServiceAccount { return l.Items }); err != nil {
		return nil, err
	}
	if snap.Nodes, err = list[corev1.Node](ctx, s, "Node", &corev1.NodeList{}, func(l *corev1.NodeList) []corev1.Node { return l.Items }); err != nil {
		return nil, err
	}
	if snap.EndpointSlices, err = list[discoveryv1.EndpointSlice](ctx, s, "EndpointSlice", &discoveryv1.EndpointSliceList{}, func(l *discoveryv1.EndpointSliceList) []discoveryv1.EndpointSlice { return l.Items }); err != nil {
		return nil, err
	}
	if in.AuthorizationPolicies, err = listPtr[securityv1.AuthorizationPolicy](ctx, s, "AuthorizationPolicy", &securityv1.AuthorizationPolicyList{}, func(l *securityv1.AuthorizationPolicyList) []*securityv1.AuthorizationPolicy { return l.Items }); err != nil {
		return nil, err
	}
	if in.PeerAuthentications, err = listPtr[securityv1.PeerAuthentication](ctx, s, "PeerAuthentication", &securityv1.PeerAuthenticationList{}, func(l *securityv1.PeerAuthenticationList) []*securityv1.PeerAuthentication { return l.Items }); err != nil {
		return nil, err
	}
	if snap.Gateways, err = list[gatewayv1.Gateway](ctx, s, "Gateway", &gatewayv1.GatewayList{}, func(l *gatewayv1.GatewayList) []gatewayv1.Gateway { return l.Items }); err != nil {
		return nil, err
	}
	in.Gateways = snap.Gateways
	in.EndpointSlices = snap.EndpointSlices
	if in.GatewayClasses, err = list[gatewayv1.GatewayClass](ctx, s, "GatewayClass", &gatewayv1.GatewayClassList{}, func(l *gatewayv1.GatewayClassList) []gatewayv1.GatewayClass { return l.Items }); err != nil {
		return nil, err
	}
	if snap.HTTPRoutes, err = list[gatewayv1.HTTPRoute](ctx, s, "HTTPRoute", &gatewayv1.HTTPRouteList{}, func(l *gatewayv1.HTTPRouteList) []gatewayv1.HTTPRoute { return l.Items }); err != nil {
		return nil, err
	}
	in.HTTPRoutes = snap.HTTPRoutes
	if in.GRPCRoutes, err = list[gatewayv1.GRPCRoute](ctx, s, "GRPCRoute", &gatewayv1.GRPCRouteList{}, func(l *gatewayv1.GRPCRouteList) []gatewayv1.GRPCRoute { return l.Items }); err != nil {
		return nil, err
	}
	if in.TCPRoutes, err = list[gatewayv1.TCPRoute](ctx, s, "TCPRoute", &gatewayv1.TCPRouteList{}, func(l *gatewayv1.TCPRouteList) []gatewayv1.TCPRoute { return l.Items }); err != nil {
		return nil, err
	}
	if in.ReferenceGrants, err = list[gatewayv1.ReferenceGrant](ctx, s, "ReferenceGrant", &gatewayv1.ReferenceGrantList{}, func(l *gatewayv1.ReferenceGrantList) []gatewayv1.ReferenceGrant { return l.Items }); err != nil {
		return nil, err
	}
	return snap, nil
}

// list lists one kind from the cache (nil when it is not watched) without
// deep copies: the items are shared with the cache and read only.
func list[T any, L client.ObjectList](ctx context.Context, s *Source, kind string, l L, items func(L) []T) ([]*T, error) {
	if !s.Watched(kind) {
		return nil, nil
	}
	if err := s.cache.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("kube: list %s: %w", kind, err)
	}
	it := items(l)
	out := make([]*T, len(it))
	for i := range it {
		out[i] = &it[i]
	}
	return out, nil
}

// listPtr is list for the lists whose Items are pointers (Istio's).
func listPtr[T any, L client.ObjectList](ctx context.Context, s *Source, kind string, l L, items func(L) []*T) ([]*T, error) {
	if !s.Watched(kind) {
		return nil, nil
	}
	if err := s.cache.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("kube: list %s: %w", kind, err)
	}
	return items(l), nil
}
