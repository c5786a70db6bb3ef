package kube

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// startKubelet starts the harness's scheduler and kubelet loop: it binds
// unscheduled pods to harness nodes (round-robin, honouring a
// kubernetes.io/hostname node selector), runs bound pods through
// Config.RunPod and force-deletes terminating pods after Config.StopPod.
// It starts each node's kubelet server (streaming.go) and registers it in
// the Node's status.
func (c *Cluster) startKubelet(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(c.Clientset, 0)
	pods := factory.Core().V1().Pods()
	inf := pods.Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName]())
	enqueue := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			queue.Add(podKey(p))
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("kubelet: pod informer did not sync")
	}

	servers, err := c.startKubeletServers(ctx, pods.Lister())
	if err != nil {
		cancel()
		factory.Shutdown()
		t.Fatal(err)
	}

	k := &kubelet{c: c, lister: pods.Lister(), started: map[types.UID]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			key, shutdown := queue.Get()
			if shutdown {
				return
			}
			if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
				c.log.Warn("kubelet sync failed", "pod", key.String(), "err", err)
				queue.AddRateLimited(key)
			} else {
				queue.Forget(key)
			}
			queue.Done(key)
		}
	}()
	t.Cleanup(func() {
		closeKubeletServers(servers)
		cancel()
		queue.ShutDown()
		<-done
		k.wg.Wait()
		factory.Shutdown()
	})
}

type kubelet struct {
	c       *Cluster
	lister  corelisters.PodLister
	mu      sync.Mutex
	started map[types.UID]bool
	next    int
	wg      sync.WaitGroup
}

func (k *kubelet) sync(ctx context.Context, key types.NamespacedName) error {
	pod, err := k.lister.Pods(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	c := k.c
	_, onHarnessNode := c.nodes[pod.Spec.NodeName]
	switch {
	case pod.DeletionTimestamp != nil:
		if !onHarnessNode {
			return nil
		}
		if c.cfg.StopPod != nil {
			c.cfg.StopPod(ctx, pod.DeepCopy())
		}
		k.mu.Lock()
		delete(k.started, pod.UID)
		k.mu.Unlock()
		opts := metav1.NewDeleteOptions(0)
		opts.Preconditions = metav1.NewUIDPreconditions(string(pod.UID))
		err := c.Clientset.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, *opts)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	case pod.Spec.NodeName == "":
		return c.BindPod(ctx, pod.Namespace, pod.Name, k.pickNode(pod))
	case onHarnessNode && c.cfg.RunPod != nil && pod.Status.PodIP == "":
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.started[pod.UID] {
			return nil
		}
		k.started[pod.UID] = true
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			k.run(ctx, pod.DeepCopy())
		}()
	}
	return nil
}

func (k *kubelet) run(ctx context.Context, pod *corev1.Pod) {
	c := k.c
	log := c.log.With("pod", pod.Namespace+"/"+pod.Name, "node", pod.Spec.NodeName)
	ips, err := c.cfg.RunPod(ctx, pod)
	if err != nil {
		log.Warn("RunPod failed; the pod stays Pending", "err", err)
		return
	}
	if len(ips) == 0 {
		// RunPod writes the pod's status itself (package podrun).
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.SetPodStatus(sctx, pod.Namespace, pod.Name, PodStatus{IPs: ips, Ready: true}); err != nil && !apierrors.IsNotFound(err) {
		log.Warn("setting pod status failed", "err", err)
	}
}

func (k *kubelet) pickNode(pod *corev1.Pod) string {
	if n := pod.Spec.NodeSelector[corev1.LabelHostname]; n != "" {
		return n
	}
	if n := affinityNode(pod); n != "" {
		return n
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	nodes := k.c.cfg.Nodes
	n := nodes[k.next%len(nodes)].Name
	k.next++
	return n
}

// affinityNode is the node a required node affinity on metadata.name
// names, as the DaemonSet controller writes into its pods; "" if none.
func affinityNode(pod *corev1.Pod) string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}
