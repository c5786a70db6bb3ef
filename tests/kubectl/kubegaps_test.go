package kubectl

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/tests/kube"
)

// selectorless is a Service without selector, its EndpointSlice (written
// by hand, as an operator of an external backend does) with a ready and a
// not-ready endpoint outside the cluster and one naming the pod backend.
const selectorless = `
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-1
  namespace: demo
  labels:
    kubernetes.io/service-name: ext
    endpointslice.kubernetes.io/managed-by: tests.ambient-go
addressType: IPv4
ports: [{name: http, port: 9000, protocol: TCP}]
endpoints:
- addresses: [198.18.3.10]
  conditions: {ready: true}
- addresses: [198.18.3.11]
  conditions: {ready: false}
- addresses: [198.18.2.20]
  targetRef: {kind: Pod, namespace: demo, name: backend}
`

// TestServiceWithoutSelector: a Service without selector and its
// EndpointSlice, applied with kubectl, reach an xDS client as Istio's
// istiod serves them: the Service, one workload per endpoint that is not a
// pod (HEALTHY when ready, UNHEALTHY otherwise: ztunnel sends only to
// ready ones), and the Service among the Services of the pod an endpoint
// names. Deleting the slice removes them.
func TestServiceWithoutSelector(t *testing.T) {
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	c := kube.Start(t, kube.Config{CRDDirs: []string{crds}, Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)
	ist, _ := startIstiod(t, c, log)
	x := startXDS(t, c, ist.PlaintextAddr().String(), log)
	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "backend", Namespace: "demo"},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.20")
	apply(t, c, selectorless)

	const key = "demo/ext.demo.svc.cluster.local"
	sliceUID := func(ip string) string { return "Kubernetes/discovery.k8s.io/EndpointSlice/demo/ext-1/" + ip }
	x.waitFor(t, "the service, its two external endpoints and the backend pod in it", func(a map[string]*workloadapi.Address) bool {
		svc := a[key].GetService()
		ready, notReady := a[sliceUID("198.18.3.10")].GetWorkload(), a[sliceUID("198.18.3.11")].GetWorkload()
		backend := workload(a, "demo", "backend")
		return svc != nil && len(svc.GetAddresses()) == 1 &&
			ready.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && notReady.GetStatus() == workloadapi.WorkloadStatus_UNHEALTHY &&
			backend.GetServices()[key] != nil
	})
	x.mu.Lock()
	ready := x.addrs[sliceUID("198.18.3.10")].GetWorkload()
	backend := workload(x.addrs, "demo", "backend")
	x.mu.Unlock()
	if got, want := ready.GetServices()[key].GetPorts(), []*workloadapi.Port{{ServicePort: 80, TargetPort: 9000}}; len(got) != 1 || got[0].ServicePort != 80 || got[0].TargetPort != 9000 {
		t.Errorf("external endpoint's ports = %v, want %v (the slice's port, by name)", got, want)
	}
	if a, _ := netip.AddrFromSlice(ready.GetAddresses()[0]); a != netip.MustParseAddr("198.18.3.10") || ready.GetNetworkMode() != workloadapi.NetworkMode_HOST_NETWORK || ready.GetTunnelProtocol() != workloadapi.TunnelProtocol_NONE {
		t.Errorf("external endpoint = %v; want 198.18.3.10, HOST_NETWORK, no tunnel", ready)
	}
	if got := backend.GetServices()[key].GetPorts(); len(got) != 1 || got[0].TargetPort != 8080 {
		t.Errorf("backend's ports in ext = %v, want 80 -> 8080 (the Service's targetPort)", got)
	}

	c.MustKubectl(t, "-n", "demo", "delete", "endpointslice", "ext-1")
	x.waitFor(t, "the slice's workloads gone and backend out of ext", func(a map[string]*workloadapi.Address) bool {
		return a[sliceUID("198.18.3.10")] == nil && a[sliceUID("198.18.3.11")] == nil &&
			workload(a, "demo", "backend") != nil && workload(a, "demo", "backend").GetServices()[key] == nil
	})
}

// TestCRDInstalledAfterStart: istiod-lite starts on a cluster without
// Istio's and the Gateway API's CRDs; they are installed afterwards and an
// AuthorizationPolicy applied: within seconds, without a restart, the
// policy reaches the xDS client (named by the workload it selects).
func TestCRDInstalledAfterStart(t *testing.T) {
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	c := kube.Start(t, kube.Config{Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)
	ist, _ := startIstiod(t, c, log)
	x := startXDS(t, c, ist.PlaintextAddr().String(), log)
	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")
	x.waitFor(t, "the echo workload", func(a map[string]*workloadapi.Address) bool { return workload(a, "demo", "echo") != nil })

	c.MustKubectl(t, "apply", "--server-side", "-k", crds)
	c.MustKubectl(t, "wait", "crd", "--all", "--for=condition=Established", "--timeout=30s")
	// kubectl's discovery may lag the new CRDs by a moment.
	var applied time.Time
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		out, err := c.KubectlStdin(ctx, strings.NewReader(l4Policy), "apply", "-f", "-")
		cancel()
		if err == nil {
			applied = time.Now()
			break
		}
		if i == 20 {
			t.Fatalf("applying the policy: %v: %s", err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Well inside DefaultRetryInterval (30s): the CRD watch, not the
	// fallback poll, brings the kind in.
	deadline := 15 * time.Second
	for {
		x.mu.Lock()
		w := workload(x.addrs, "demo", "echo")
		ok := slices.Contains(w.GetAuthorizationPolicies(), "demo/from-client")
		x.mu.Unlock()
		if ok {
			t.Logf("policy served %v after it was applied", time.Since(applied).Round(10*time.Millisecond))
			return
		}
		if time.Since(applied) > deadline {
			t.Fatalf("the policy applied after its CRD was installed did not reach the xDS client within %v", deadline)
		}
		select {
		case <-x.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}
