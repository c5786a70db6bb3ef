package harness

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/waypoint"
)

// Waypoints in local mode. There is no API server and no kubelet, so the
// harness plays both, as the cluster runtime would: it writes the waypoint
// Gateway into the config directory, then what istiod-lite's deployer
// would create for it (ServiceAccount and Service named after the Gateway;
// WaypointObjectsYAML) and the pod the Deployment would get, not Ready;
// starts the waypoint in-process on the pod's address; marks the pod Ready
// once the waypoint answers ready (the readiness probe); and, once
// istiod-lite reports the Gateway Programmed, writes status.addresses back
// onto the Gateway (the status writer), so that the binding stays while the
// pods go unready, as in a cluster.
//
// Waypoint addresses: the pod is 127.X.<node>.(200+k) and the Service
// 127.X.100.(200+k), for the mesh's k-th waypoint; tests keep pod indexes
// and service indexes below 190.

// WaypointOption configures StartWaypoint.
type WaypointOption func(*WaypointSpec)

// WaypointFor sets the Gateway's istio.io/waypoint-for label (service,
// workload, all or none); none set means Istio's default, service.
func WaypointFor(v string) WaypointOption {
	return func(s *WaypointSpec) { s.For = v }
}

// ForServiceAccount sets the Gateway's istio.io/for-service-account
// annotation (our extension): the waypoint serves that account's workloads.
func ForServiceAccount(sa string) WaypointOption {
	return func(s *WaypointSpec) { s.ForServiceAccount = sa }
}

// WaypointSpec describes a waypoint Gateway and the objects of its one
// replica, as written into a local-mode config directory.
type WaypointSpec struct {
	Namespace, Gateway string
	// For is the istio.io/waypoint-for label; empty: none.
	For string
	// ForServiceAccount is the istio.io/for-service-account annotation;
	// empty: none.
	ForServiceAccount string
	// Node, PodIP and VIP place the replica and its Service.
	Node  string
	PodIP netip.Addr
	VIP   netip.Addr
	// Addresses, when set, are written as the Gateway's status.addresses
	// (what the status writer would have put there).
	Addresses []string
}

// PodName is the name of the waypoint's replica.
func (s *WaypointSpec) PodName() string { return s.Gateway + "-0" }

// GatewayYAML renders the waypoint Gateway: class istio-waypoint, one
// listener {mesh, 15008, HBONE}, the waypoint-for label and the
// for-service-account annotation when set, and status.addresses when set.
func (s *WaypointSpec) GatewayYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %s
  namespace: %s
`, s.Gateway, s.Namespace)
	if s.For != "" {
		fmt.Fprintf(&b, "  labels:\n    istio.io/waypoint-for: %s\n", s.For)
	}
	if s.ForServiceAccount != "" {
		fmt.Fprintf(&b, "  annotations:\n    istio.io/for-service-account: %s\n", s.ForServiceAccount)
	}
	b.WriteString(`spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`)
	if len(s.Addresses) > 0 {
		b.WriteString("status:\n  addresses:\n")
		for _, a := range s.Addresses {
			typ := "IPAddress"
			if _, err := netip.ParseAddr(a); err != nil {
				typ = "Hostname"
			}
			fmt.Fprintf(&b, "  - type: %s\n    value: %s\n", typ, a)
		}
	}
	return b.String()
}

// ObjectsYAML renders what the cluster would run for the Gateway: the
// ServiceAccount and the Service that istiod-lite's deployer creates
// (named after the Gateway, with Istio's labels; the Service selects the
// gateway-name label, on ports 15021 status-port and 15008 mesh) and the
// one pod of its Deployment (on Node at PodIP, running as the Gateway's
// ServiceAccount, labelled gateway-name and istio.io/dataplane-mode: none
// so that no ztunnel captures it), Ready or not.
func (s *WaypointSpec) ObjectsYAML(ready bool) string {
	status := "False"
	if ready {
		status = "True"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata:
  name: %[1]s
  namespace: %[2]s
  labels:
    gateway.networking.k8s.io/gateway-name: %[1]s
    gateway.istio.io/managed: istio.io-mesh-controller
---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
  labels:
    gateway.networking.k8s.io/gateway-name: %[1]s
    gateway.istio.io/managed: istio.io-mesh-controller
spec:
  type: ClusterIP
  clusterIP: %[3]s
  selector:
    gateway.networking.k8s.io/gateway-name: %[1]s
  ports:
  - name: status-port
    port: 15021
    targetPort: 15021
    appProtocol: tcp
  - name: mesh
    port: 15008
    targetPort: 15008
    appProtocol: hbone
---
apiVersion: v1
kind: Pod
metadata:
  name: %[4]s
  namespace: %[2]s
  labels:
    gateway.networking.k8s.io/gateway-name: %[1]s
    gateway.istio.io/managed: istio.io-mesh-controller
    istio.io/dataplane-mode: none
    service.istio.io/canonical-name: %[1]s
    service.istio.io/canonical-revision: latest
spec:
  nodeName: %[5]s
  serviceAccountName: %[1]s
  containers:
  - name: waypoint
    image: waypoint
    ports:
    - name: mesh
      containerPort: 15008
    - name: metrics
      containerPort: 15020
    - name: status-port
      containerPort: 15021
status:
  phase: Running
  podIP: %[6]s
  conditions:
  - type: Ready
    status: "%[7]s"
`, s.Gateway, s.Namespace, s.VIP, s.PodName(), s.Node, s.PodIP, status)
}

// Waypoint is a waypoint running in-process for a Gateway of the mesh's
// config directory.
type Waypoint struct {
	*waypoint.Waypoint
	Spec WaypointSpec
	// Records are the waypoint's access log records (one per request, or
	// per TCP stream).
	Records <-chan accesslog.Record
	run     *running
	unsub   func()
}

func (m *Mesh) waypointFiles(ns, gw string) (gateway, objects string) {
	base := "waypoint-" + ns + "-" + gw
	return base + ".yaml", base + "-objects.yaml"
}

// StartWaypoint plays istiod-lite's deployer and the container runtime for
// the waypoint Gateway namespace/gateway: it writes the Gateway (with
// opts), its ServiceAccount, Service and a pod on node into the config
// directory, starts the waypoint in-process on the pod's address with
// node's token (impersonating the waypoint's identity, as local mode
// does), waits until it is ready, marks its pod Ready and waits until
// istiod-lite reports the Gateway Programmed, then writes the addresses
// into the Gateway's status. The waypoint stops in t.Cleanup. Starting a
// waypoint again after StopWaypoint reuses its addresses and Gateway.
func (m *Mesh) StartWaypoint(node, namespace, gateway string, opts ...WaypointOption) *Waypoint {
	m.t.Helper()
	ni := slices.Index(m.opts.Nodes, node)
	if ni < 0 {
		m.t.Fatalf("StartWaypoint: no node %q", node)
	}
	key := namespace + "/" + gateway
	m.mu.Lock()
	if m.waypoints[key] != nil {
		m.mu.Unlock()
		m.t.Fatalf("StartWaypoint: waypoint %s is running", key)
	}
	if m.waypointSpecs == nil {
		m.waypointSpecs = map[string]*WaypointSpec{}
		m.waypoints = map[string]*Waypoint{}
	}
	spec := m.waypointSpecs[key]
	if spec == nil {
		k := len(m.waypointSpecs)
		spec = &WaypointSpec{
			Namespace: namespace, Gateway: gateway, Node: node,
			PodIP: netip.AddrFrom4([4]byte{127, m.base, byte(ni + 1), byte(200 + k)}),
			VIP:   netip.AddrFrom4([4]byte{127, m.base, 100, byte(200 + k)}),
		}
		for _, o := range opts {
			o(spec)
		}
		m.waypointSpecs[key] = spec
	}
	m.mu.Unlock()

	gwFile, objFile := m.waypointFiles(namespace, gateway)
	m.Write(gwFile, spec.GatewayYAML())
	m.Write(objFile, spec.ObjectsYAML(false))

	w, err := waypoint.New(waypoint.Config{
		Namespace:     namespace,
		Gateway:       gateway,
		PodName:       spec.PodName(),
		PodIP:         spec.PodIP,
		XDSAddress:    m.IstiodAddr(),
		Token:         m.Token(node),
		Impersonate:   true,
		CertTTL:       m.opts.CertTTL,
		HBONEAddr:     netip.AddrPortFrom(spec.PodIP, 15008).String(),
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   "127.0.0.1:0",
		ReadinessAddr: "127.0.0.1:0",
		DrainTimeout:  200 * time.Millisecond,
		Logger:        logger(m.t, "waypoint-"+namespace+"-"+gateway),
	})
	if err != nil {
		m.t.Fatalf("waypoint %s: %v", key, err)
	}
	records, unsub := w.AccessLog().Subscribe(1024)
	r := start(w.Start)
	wp := &Waypoint{Waypoint: w, Spec: *spec, Records: records, run: r, unsub: unsub}
	m.mu.Lock()
	m.waypoints[key] = wp
	m.mu.Unlock()
	m.t.Cleanup(func() { m.stopWaypoint(key) })
	select {
	case <-w.Ready():
	case err := <-r.done:
		r.done <- err
		m.t.Fatalf("waypoint %s stopped: %v", key, err)
	case <-time.After(10 * time.Second):
		m.t.Fatalf("waypoint %s not ready within 10s", key)
	}
	// The kubelet's readiness probe passes: the pod is Ready.
	m.Write(objFile, spec.ObjectsYAML(true))
	addrs := m.WaitGatewayProgrammed(namespace, gateway, 10*time.Second)
	// The status writer's write, read back by the model.
	m.mu.Lock()
	spec.Addresses = addrs
	wp.Spec = *spec
	m.mu.Unlock()
	m.Write(gwFile, spec.GatewayYAML())
	return wp
}

// WaitGatewayProgrammed waits until istiod-lite reports the Gateway
// namespace/name Programmed=True with addresses, and returns them; it
// fails the test after timeout.
func (m *Mesh) WaitGatewayProgrammed(namespace, name string, timeout time.Duration) []string {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		m.mu.Lock()
		s := m.Istiod
		m.mu.Unlock()
		if s != nil {
			for _, st := range s.GatewayStatuses() {
				if st.Namespace != namespace || st.Name != name {
					continue
				}
				last = fmt.Sprint(st.Conditions)
				var addrs []string
				for _, a := range st.Addresses {
					addrs = append(addrs, a.Value)
				}
				for _, c := range st.Conditions {
					if c.Type == "Programmed" && c.Status == metav1.ConditionTrue && len(addrs) > 0 {
						return addrs
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.t.Fatalf("Gateway %s/%s not Programmed with addresses within %s; last conditions %s", namespace, name, timeout, last)
	return nil
}

// Waypoint returns the running waypoint namespace/gateway, or nil.
func (m *Mesh) Waypoint(namespace, gateway string) *Waypoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.waypoints[namespace+"/"+gateway]
}

// StopWaypoint stops the waypoint namespace/gateway and marks its pod not
// Ready, as the kubelet would once the readiness probe fails. The Gateway,
// its Service and the status addresses stay, as in a cluster: traffic
// bound to the waypoint keeps going to it, and fails.
func (m *Mesh) StopWaypoint(namespace, gateway string) {
	m.t.Helper()
	key := namespace + "/" + gateway
	m.stopWaypoint(key)
	m.mu.Lock()
	spec := m.waypointSpecs[key]
	m.mu.Unlock()
	if spec != nil {
		_, objFile := m.waypointFiles(namespace, gateway)
		m.Write(objFile, spec.ObjectsYAML(false))
	}
}

func (m *Mesh) stopWaypoint(key string) {
	m.mu.Lock()
	w := m.waypoints[key]
	delete(m.waypoints, key)
	m.mu.Unlock()
	if w == nil {
		return
	}
	if err := w.run.stop(); err != nil {
		m.t.Errorf("waypoint %s: %v", key, err)
	}
	w.unsub()
}

// WaitRecord returns the first access log record of w that matches, or
// fails the test after timeout.
func (w *Waypoint) WaitRecord(t testing.TB, timeout time.Duration, match func(accesslog.Record) bool) accesslog.Record {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case r := <-w.Records:
			if match(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("waypoint %s/%s: no matching access log record within %s", w.Spec.Namespace, w.Spec.Gateway, timeout)
			return accesslog.Record{}
		}
	}
}

// Collect returns the records that arrive on ch within d.
func Collect(ch <-chan accesslog.Record, d time.Duration) []accesslog.Record {
	var out []accesslog.Record
	deadline := time.After(d)
	for {
		select {
		case r := <-ch:
			out = append(out, r)
		case <-deadline:
			return out
		}
	}
}

// Drain discards the records already queued on ch.
func Drain(ch <-chan accesslog.Record) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
