package kube

import (
	"context"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var crdGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

// watchCRDs asks for the missing kinds to be tried again on every event of
// a CustomResourceDefinition (metadata only). Without the permission to
// list CRDs (checked first, so that the cache never waits on an informer
// that cannot sync), the missing kinds are only retried every
// RetryInterval.
func (s *Source) watchCRDs(ctx context.Context, reader client.Reader) {
	probe := &metav1.PartialObjectMetadataList{}
	probe.SetGroupVersionKind(crdGVK.GroupVersion().WithKind("CustomResourceDefinitionList"))
	if err := reader.List(ctx, probe, client.Limit(1)); err != nil {
		s.log.Warn("CRDs not watched; kinds installed later are found by polling", "interval", s.cfg.RetryInterval.String(), "err", err.Error(), "forbidden", apierrors.IsForbidden(err))
		return
	}
	obj := &metav1.PartialObjectMetadata{}
	obj.SetGroupVersionKind(crdGVK)
	inf, err := s.cache.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
	if err == nil {
		poke := func(any) {
			select {
			case s.retry <- struct{}{}:
			default:
			}
		}
		_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: poke, DeleteFunc: poke, UpdateFunc: func(_, o any) { poke(o) }})
	}
	if err != nil {
		s.log.Warn("CRDs not watched; kinds installed later are found by polling", "interval", s.cfg.RetryInterval.String(), "err", err.Error())
	}
}

func (s *Source) hasMissing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.missing) > 0
}

// retryMissing tries the missing kinds on CRD events and every
// RetryInterval until all are watched or ctx ends.
func (s *Source) retryMissing(ctx context.Context) {
	t := time.NewTicker(s.cfg.RetryInterval)
	defer t.Stop()
	for s.hasMissing() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.retry:
		}
		s.tryMissing(ctx)
	}
}

// tryMissing starts an informer for every missing kind whose CRD is now
// served, waits for it to sync, then includes the kind in snapshots and
// schedules a rebuild.
func (s *Source) tryMissing(ctx context.Context) {
	s.mu.Lock()
	missing := slices.Clone(s.missing)
	s.mu.Unlock()
	for _, obj := range missing {
		gvk, err := s.client.GroupVersionKindFor(obj)
		if err != nil {
			continue
		}
		inf, err := s.cache.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			if !meta.IsNoMatchError(err) {
				s.log.Warn("informer for a newly installed kind failed", "kind", gvk.Kind, "err", err.Error())
			}
			continue
		}
		if _, err := inf.AddEventHandler(s.handler); err != nil {
			s.log.Warn("informer for a newly installed kind failed", "kind", gvk.Kind, "err", err.Error())
			continue
		}
		syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
		synced := toolscache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced)
		cancel()
		if !synced {
			continue // the handler stays; the kind is listed once synced on a later try
		}
		s.mu.Lock()
		s.kinds[gvk.Kind] = true
		s.missing = slices.DeleteFunc(s.missing, func(o client.Object) bool { return o == obj })
		s.mu.Unlock()
		s.log.Info("kind installed, now watched", "kind", gvk.Kind, "group", gvk.Group)
		if s.cfg.OnWatched != nil {
			s.cfg.OnWatched(gvk.Kind)
		}
		s.trigger()
	}
}
