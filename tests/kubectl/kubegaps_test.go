package kubectl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
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
	c, log := startCluster(t, objects)
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
// policy reaches the xDS client (named by the workload it selects), gets
// its status, and a waypoint Gateway gets its Deployment.
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
			break
		}
		if time.Since(applied) > deadline {
			t.Fatalf("the policy applied after its CRD was installed did not reach the xDS client within %v", deadline)
		}
		select {
		case <-x.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}

	// The status writer and the waypoint deployer, set up at start without
	// these kinds, take them up too.
	waitCondition(t, c, "from-client", func(cond map[string]any) bool { return cond["status"] == "True" })
	apply(t, c, `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`)
	eventually(t, waitTimeout, "the waypoint's Deployment", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := c.Kubectl(ctx, "-n", "demo", "get", "deployment", "waypoint")
		return err
	})
}

// forwarder is a loopback TCP proxy standing for the istiod Service's
// virtual IP: each new connection goes to the current backend (kube-proxy
// picks a ready replica per connection).
type forwarder struct {
	ln      net.Listener
	mu      sync.Mutex
	backend string
	conns   []net.Conn
	done    chan struct{}
}

func newForwarder(t *testing.T, backend string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, backend: backend, done: make(chan struct{})}
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		<-f.done
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	return f
}

func (f *forwarder) set(backend string) {
	f.mu.Lock()
	f.backend = backend
	f.mu.Unlock()
}

func (f *forwarder) serve() {
	defer close(f.done)
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		backend := f.backend
		f.mu.Unlock()
		b, err := net.DialTimeout("tcp", backend, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, b)
		f.mu.Unlock()
		go func() { _, _ = io.Copy(b, c); b.Close() }()
		go func() { _, _ = io.Copy(c, b); c.Close() }()
	}
}

// TestZtunnelSwitchesReplica: a ztunnel's xDS client reaches istiod-lite
// through the Service address over TLS (verifying the name
// istiod.istio-system.svc against the mesh root); when its replica stops,
// it reconnects to the other one, which has the same root (the serving
// certificate verifies), and it keeps every resource and gets new ones.
func TestZtunnelSwitchesReplica(t *testing.T) {
	c, log := startCluster(t, objects)
	a, stopA := startIstiod(t, c, log.With("replica", "a"))
	b, _ := startIstiod(t, c, log.With("replica", "b"))
	fwd := newForwarder(t, a.Addr().String())

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.RootPEM())
	token := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca"))
	st := &xdsState{addrs: map[string]*workloadapi.Address{}, changed: make(chan struct{}, 1)}
	var connects atomic.Int32
	cl, err := xds.NewClient(xds.ClientConfig{
		Target: fwd.ln.Addr().String(),
		Token:  func(context.Context) (string, error) { return token, nil },
		DialOptions: []grpc.DialOption{
			grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS13})),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				connects.Add(1)
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}),
		},
		Node:       &adspb.Node{Id: "ztunnel~198.18.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local"},
		TypeURLs:   []string{workloadapi.AddressTypeURL},
		MaxBackoff: 500 * time.Millisecond,
		Logger:     log.With("component", "xds-client"),
		Handler:    xds.HandlerFunc(st.handle),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")
	st.waitFor(t, "echo from replica a", func(m map[string]*workloadapi.Address) bool {
		return workload(m, "demo", "echo") != nil && m["demo/echo.demo.svc.cluster.local"] != nil
	})
	if n := connects.Load(); n != 1 {
		t.Fatalf("connections before the switch = %d, want 1", n)
	}

	fwd.set(b.Addr().String())
	stopA()
	runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.1.11")
	st.waitFor(t, "a pod created after the switch, from replica b", func(m map[string]*workloadapi.Address) bool {
		return workload(m, "demo", "late") != nil && workload(m, "demo", "echo") != nil
	})
	if n := connects.Load(); n < 2 {
		t.Errorf("connections = %d, want a reconnection to replica b", n)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.removed) > 0 {
		t.Errorf("the client was told to remove %q when it moved to the other replica; want nothing removed", st.removed)
	}
}
