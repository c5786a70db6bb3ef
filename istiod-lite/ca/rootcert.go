package ca

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// The ConfigMap that holds the mesh root in every namespace, as istiod
// publishes it (ztunnel mounts it to verify istiod-lite's TLS listener).
const (
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// RootCertPublisher keeps the ConfigMap RootCertConfigMap, with the root
// under RootCertKey, in every namespace that is not terminating. It is
// level-based: each Trigger compares every namespace's ConfigMap with the
// root and creates or updates those that differ. It runs only on the
// elected leader.
type RootCertPublisher struct {
	// Client lists Namespaces and ConfigMaps (usually from a cache that
	// holds only ConfigMaps named RootCertConfigMap) and writes
	// ConfigMaps. Required.
	Client client.Client
	// RootPEM is the root certificate to publish. Required.
	RootPEM []byte
	// Retry is the wait after a failed write; default 1s.
	Retry  time.Duration
	Logger *slog.Logger // default: discard

	changed chan struct{}
}

var (
	_ manager.Runnable               = (*RootCertPublisher)(nil)
	_ manager.LeaderElectionRunnable = (*RootCertPublisher)(nil)
)

// NewRootCertPublisher returns a publisher; add it to a manager.
func NewRootCertPublisher(c client.Client, rootPEM []byte, log *slog.Logger) (*RootCertPublisher, error) {
	if c == nil || len(rootPEM) == 0 {
		return nil, errors.New("ca: RootCertPublisher needs a client and a root")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RootCertPublisher{Client: c, RootPEM: rootPEM, Retry: time.Second,
		Logger: log.With("component", "root-cert-publisher"), changed: make(chan struct{}, 1)}, nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (p *RootCertPublisher) NeedLeaderElection() bool { return true }

// Trigger asks for a comparison (after namespaces or the ConfigMaps
// changed). It never blocks.
func (p *RootCertPublisher) Trigger() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Start publishes until ctx is done.
func (p *RootCertPublisher) Start(ctx context.Context) error {
	retry := time.NewTimer(0) // first comparison at once
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return nil
		case <-p.changed:
		case <-retry.C:
		}
		if err := p.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.Logger.Warn("root certificate not published, retrying", "error", err.Error())
			retry.Stop()
			retry.Reset(p.Retry)
		}
	}
}

// Sync compares once and writes what differs; it returns the first error
// after trying every namespace.
func (p *RootCertPublisher) Sync(ctx context.Context) error {
	var nss corev1.NamespaceList
	if err := p.Client.List(ctx, &nss); err != nil {
		return fmt.Errorf("ca: list namespaces: %w", err)
	}
	var cms corev1.ConfigMapList
	if err := p.Client.List(ctx, &cms); err != nil {
		return fmt.Errorf("ca: list configmaps: %w", err)
	}
	have := map[string]*corev1.ConfigMap{}
	for i := range cms.Items {
		if cm := &cms.Items[i]; cm.Name == RootCertConfigMap {
			have[cm.Namespace] = cm
		}
	}
	want := string(bytes.TrimSpace(p.RootPEM)) + "\n"
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, ns := range nss.Items {
		if ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		cm, ok := have[ns.Name]
		switch {
		case !ok:
			err := p.Client.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns.Name,
					Labels: map[string]string{"istio.io/config": "true"}},
				Data: map[string]string{RootCertKey: want},
			})
			if apierrors.IsAlreadyExists(err) || apierrors.IsForbidden(err) && apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
				err = nil // the cache was behind; or the namespace is going away
			}
			if err == nil {
				p.Logger.Info("root certificate published", "namespace", ns.Name)
			}
			keep(err)
		case cm.Data[RootCertKey] != want:
			cm.Data = map[string]string{RootCertKey: want}
			err := p.Client.Update(ctx, cm)
			if apierrors.IsNotFound(err) {
				err = nil
			}
			if err == nil {
				p.Logger.Info("root certificate updated", "namespace", ns.Name)
			}
			keep(err)
		}
	}
	return first
}
