// Package status writes the model's policy status conditions onto the
// AuthorizationPolicy objects of the API server, as Istio's ambient control
// plane does: one condition of type ZtunnelAccepted in .status.conditions
// (istio.io/api meta/v1alpha1 IstioStatus), saying whether ztunnel
// enforces the policy, only in part (e.g. HTTP rules that need a
// waypoint), or not at all.
//
// The Writer is level-based: after every model update, and after a failed
// write, it compares each AuthorizationPolicy in the cache with the status
// the model computed for it and writes the status subresource only where
// they differ. Conditions of other types (written by waypoints) are kept.
// It is a manager.Runnable that runs only on the elected leader; the
// replicas that are not leaders only remember the latest statuses.
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
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// DefaultRetry is the default of Config.Retry.
const DefaultRetry = time.Second

// Config configures a Writer. Client is required.
type Config struct {
	// Client lists AuthorizationPolicies (usually from the manager's
	// cache) and writes their status subresource.
	Client client.Client
	// Retry is how long to wait before comparing again after a failed
	// write (a conflict, usually); default DefaultRetry.
	Retry  time.Duration
	Logger *slog.Logger // default: discard
	// Now returns the time written as lastTransitionTime; default time.Now.
	Now func() time.Time
}

// Writer writes AuthorizationPolicy status conditions.
type Writer struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}

	mu       sync.Mutex
	statuses map[string]*model.PolicyStatus
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

// Writes returns how many status writes succeeded (for tests and logs).
func (w *Writer) Writes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// Start writes statuses until ctx is done.
func (w *Writer) Start(ctx context.Context) error {
	w.log.Info("writing policy status (leader)")
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
			w.log.Warn("policy status not written, retrying", "error", err.Error(), "retry", w.cfg.Retry.String())
			retry.Stop()
			retry.Reset(w.cfg.Retry)
		}
	}
}

// Sync compares every AuthorizationPolicy with its latest status once and
// writes those that differ. It returns the first error after trying all.
func (w *Writer) Sync(ctx context.Context) error {
	w.mu.Lock()
	statuses := w.statuses
	w.mu.Unlock()
	if statuses == nil {
		return nil // no model output yet
	}
	var l securityv1.AuthorizationPolicyList
	if err := w.cfg.Client.List(ctx, &l); err != nil {
		return fmt.Errorf("status: list AuthorizationPolicies: %w", err)
	}
	var first error
	for _, p := range l.Items {
		st := statuses[model.KindAuthorizationPolicy+"/"+p.Namespace+"/"+p.Name]
		if st != nil && st.Generation != p.Generation {
			continue // the model has not seen this generation yet; a later update will bring it
		}
		conds, changed := Conditions(p.Status.Conditions, st, p.Generation, w.cfg.Now())
		if !changed {
			continue
		}
		p.Status.Conditions = conds
		if err := w.cfg.Client.Status().Update(ctx, p); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			if first == nil {
				first = fmt.Errorf("status: AuthorizationPolicy %s/%s: %w", p.Namespace, p.Name, err)
			}
			continue
		}
		w.mu.Lock()
		w.writes++
		w.mu.Unlock()
		for _, c := range conds {
			if c.Type == model.ConditionZtunnelAccepted {
				w.log.Info("policy status written", "namespace", p.Namespace, "name", p.Name,
					"condition", c.Type, "status", c.Status, "reason", c.Reason)
			}
		}
	}
	if err := w.recordConflicts(ctx, statuses); err != nil && first == nil {
		first = err
	}
	return first
}

// recordConflicts records a Warning Event on each pod whose address
// conflict is new or changed since the last Event.
func (w *Writer) recordConflicts(ctx context.Context, statuses map[string]*model.PolicyStatus) error {
	w.mu.Lock()
	if w.evented == nil {
		w.evented = map[string]string{}
	}
	for k := range w.evented {
		if _, ok := statuses[k]; !ok {
			delete(w.evented, k)
		}
	}
	w.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(statuses)) {
		st := statuses[k]
		if st.Kind != model.KindPod || len(st.Conditions) == 0 {
			continue
		}
		msg := st.Conditions[0].Message
		w.mu.Lock()
		done := w.evented[k] == msg
		w.mu.Unlock()
		if done {
			continue
		}
		var pod corev1.Pod
		if err := w.cfg.Client.Get(ctx, client.ObjectKey{Namespace: st.Namespace, Name: st.Name}, &pod); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("status: Pod %s/%s: %w", st.Namespace, st.Name, err)
		}
		now := metav1.NewTime(w.cfg.Now())
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + ".", Namespace: pod.Namespace},
			InvolvedObject: corev1.ObjectReference{
				APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name,
				UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			},
			Reason: st.Conditions[0].Reason, Message: msg, Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: EventComponent},
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
			ReportingController: EventComponent, ReportingInstance: EventComponent,
		}
		if err := w.cfg.Client.Create(ctx, ev); err != nil {
			return fmt.Errorf("status: event on Pod %s/%s: %w", st.Namespace, st.Name, err)
		}
		w.mu.Lock()
		w.evented[k] = msg
		w.mu.Unlock()
		w.log.Warn("pod not served: address conflict", "namespace", pod.Namespace, "name", pod.Name, "message", msg)
	}
	return nil
}

// EventComponent is the source of the Events the Writer records.
const EventComponent = "istiod-lite"

// Conditions returns the conditions to write: have with the conditions
// of st (nil: none of ours) replacing those of the same types, stamped with
// generation and, when a condition's status changes, lastTransitionTime
// now. changed is false when have already says the same.
func Conditions(have []*metav1alpha1.IstioCondition, st *model.PolicyStatus, generation int64, now time.Time) (conds []*metav1alpha1.IstioCondition, changed bool) {
	want := map[string]model.PolicyCondition{}
	if st != nil {
		for _, c := range st.Conditions {
			want[c.Type] = c
		}
	}
	// Ours is the ZtunnelAccepted type, whether or not st has it: a policy
	// that left ztunnel's scope loses it.
	ours := func(t string) bool {
		_, ok := want[t]
		return ok || t == model.ConditionZtunnelAccepted
	}
	seen := map[string]bool{}
	for _, c := range have {
		if c == nil {
			continue
		}
		if !ours(c.Type) {
			conds = append(conds, c)
			continue
		}
		w, ok := want[c.Type]
		if !ok || seen[c.Type] {
			changed = true // dropped
			continue
		}
		seen[c.Type] = true
		if c.Status == w.Status && c.Reason == w.Reason && c.Message == w.Message && c.ObservedGeneration == generation {
			conds = append(conds, c)
			continue
		}
		changed = true
		nc := &metav1alpha1.IstioCondition{
			Type: w.Type, Status: w.Status, Reason: w.Reason, Message: w.Message,
			ObservedGeneration: generation, LastTransitionTime: c.LastTransitionTime,
		}
		if c.Status != w.Status || nc.LastTransitionTime == nil {
			nc.LastTransitionTime = timestamppb.New(now)
		}
		conds = append(conds, nc)
	}
	types := make([]string, 0, len(want))
	for t := range want {
		if !seen[t] {
			types = append(types, t)
		}
	}
	slices.Sort(types)
	for _, t := range types {
		w := want[t]
		changed = true
		conds = append(conds, &metav1alpha1.IstioCondition{
			Type: w.Type, Status: w.Status, Reason: w.Reason, Message: w.Message,
			ObservedGeneration: generation, LastTransitionTime: timestamppb.New(now),
		})
	}
	return conds, changed
}
