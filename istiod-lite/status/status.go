// Package status writes the status the model computes back onto the
// user's objects, as Istio's ambient control plane does:
//
//   - AuthorizationPolicy: the conditions ZtunnelAccepted (whether ztunnel
//     enforces the policy, only in part, e.g. HTTP rules that need a
//     waypoint, or not at all) and WaypointAccepted (a policy with
//     targetRefs, bound to waypoints) in .status.conditions (istio.io/api
//     meta/v1alpha1 IstioStatus). Conditions of other types are kept.
//   - Gateway of class istio-waypoint: .status.addresses, the conditions
//     Accepted and Programmed, and the listener statuses
//     (model.GatewayStatus). Conditions of other types are kept; a Gateway
//     the model has no status for is never touched.
//   - Service: the condition istio.io/WaypointBound in
//     .status.conditions, and only that one; a Service the model no longer
//     binds (or refuses to bind) loses it.
//   - HTTPRoute, GRPCRoute, TCPRoute: .status.parents entries of
//     controller istio.io/gateway-controller, one per parentRef of kind
//     Service (or a waypoint Gateway), with Accepted, ResolvedRefs and
//     PartiallyInvalid (model.RouteStatus); other controllers' entries are
//     kept (route.go).
//
// Every condition keeps its lastTransitionTime while its status does not
// change, and carries the generation the model saw (observedGeneration).
//
// The Writer is level-based: after every model update, and after a failed
// write, it compares each object in the cache with the status the model
// computed for it and writes the status subresource only where they
// differ. It is a manager.Runnable that runs only on the elected leader;
// the replicas that are not leaders only remember the latest statuses.
//
// A pod that the model does not serve because another pod claims one of
// its IPs (a status of kind model.KindPod, reason AddressConflict) gets a
// Warning Event of reason AddressConflict, once per leader and conflict
// message: pod status belongs to the kubelet, and an Event is what
// kubectl describe pod shows.
package status

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// DefaultRetry is the default of Config.Retry.
const DefaultRetry = time.Second

// Config configures a Writer. Client is required.
type Config struct {
	// Client lists AuthorizationPolicies, Gateways, Services and routes
	// (usually from the manager's cache) and writes their status
	// subresource.
	Client client.Client
	// Skip are the kinds (model.KindAuthorizationPolicy,
	// model.KindGateway, model.KindHTTPRoute, ...) whose CRDs are not
	// installed: their status is not written. Default: none skipped.
	Skip []string
	// Watched, if set, is asked instead of Skip at every sync: a kind
	// for which it is false is skipped (kinds whose CRD is installed after
	// start get status once the source watches them).
	Watched func(kind string) bool
	// Retry is how long to wait before comparing again after a failed
	// write (a conflict, usually); default DefaultRetry.
	Retry  time.Duration
	Logger *slog.Logger // default: discard
	// Now returns the time written as lastTransitionTime; default time.Now.
	Now func() time.Time
}

// Writer writes the status of AuthorizationPolicies, waypoint Gateways
// and Services.
type Writer struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}

	mu       sync.Mutex
	statuses map[string]*model.PolicyStatus
	gateways map[string]*model.GatewayStatus
	routes   map[string]*model.RouteStatus
	writes   int
	// evented is the conflict message last recorded as an Event, per
	// pod status key.
	evented map[string]string
}

var (
	_ manager.Runnable               = (*Writer)(nil)
	_ manager.LeaderElectionRunnable = (*Writer)(nil)
)

// New returns a Writer; add it to a manager (or call Start) to run it.
func New(cfg Config) (*Writer, error) {
	if cfg.Client == nil {
		return nil, errors.New("status: Config.Client is required")
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{cfg: cfg, log: log.With("component", "status-writer"), changed: make(chan struct{}, 1)}, nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: only the
// leader writes.
func (w *Writer) NeedLeaderElection() bool { return true }

// Update records the latest statuses computed by the model (keyed as
// Output.PolicyStatuses) and wakes the writer. It never blocks.
func (w *Writer) Update(statuses map[string]*model.PolicyStatus) {
	w.mu.Lock()
	w.statuses = statuses
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// UpdateGateways records the latest waypoint Gateway statuses computed by
// the model (keyed as Output.GatewayStatuses) and wakes the writer. It
// never blocks.
func (w *Writer) UpdateGateways(statuses map[string]*model.GatewayStatus) {
	w.mu.Lock()
	w.gateways = statuses
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *Writer) wrote() {
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
}

// Writes returns how many status writes succeeded (for tests and logs).
func (w *Writer) Writes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// conflictRetry is how soon a write refused for a stale resourceVersion is
// retried.
const conflictRetry = 100 * time.Millisecond

// Start writes statuses until ctx is done.
func (w *Writer) Start(ctx context.Context) error {
	w.log.Info("writing status (leader)")
	retry := time.NewTimer(0)
	<-retry.C
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return nil
		case <-w.changed:
		case <-retry.C:
		}
		if err := w.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// A conflict is the cache lagging behind our own last write
			// (the object was listed before its update arrived): expected,
			// retried soon and quietly. Anything else is worth a warning.
			wait := w.cfg.Retry
			if apierrors.IsConflict(err) {
				wait = min(wait, conflictRetry)
				w.log.Debug("status not written, object changed since it was read; retrying", "error", err.Error(), "retry", wait.String())
			} else {
				w.log.Warn("status not written, retrying", "error", err.Error(), "retry", wait.String())
			}
			retry.Stop()
			retry.Reset(wait)
		}
	}
}

// skip reports whether kind's status is not written (its CRD is not
// installed).
func (w *Writer) skip(kind string) bool {
	if w.cfg.Watched != nil {
		return !w.cfg.Watched(kind)
	}
	return slices.Contains(w.cfg.Skip, kind)
}

// Sync compares every object with its latest status once and writes
// those that differ. It returns the first error after trying all.
func (w *Writer) Sync(ctx context.Context) error {
	w.mu.Lock()
	statuses, gateways, routes := w.statuses, w.gateways, w.routes
	w.mu.Unlock()
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if statuses != nil { // nil: no model output yet
		if !w.skip(model.KindAuthorizationPolicy) {
			keep(w.syncPolicies(ctx, statuses))
		}
		keep(w.syncServices(ctx, statuses))
		keep(w.recordConflicts(ctx, statuses))
	}
	if gateways != nil && !w.skip(model.KindGateway) {
		keep(w.syncGateways(ctx, gateways))
	}
	if routes != nil {
		keep(w.syncRoutes(ctx, routes))
	}
	return first
}
