package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/tests/netns"
)

// Waypoint ports inside the waypoint's pod, as the Deployment istiod-lite
// renders for a Gateway (istiod-lite/deployer): HBONE, metrics and
// readiness on every address of the pod, admin on its loopback.
const (
	WaypointHBONEPort     = 15008
	WaypointMetricsPort   = 15020
	WaypointReadinessPort = 15021
	WaypointAdminAddr     = "127.0.0.1:15000"
)

// WaypointSpec describes a waypoint: a Gateway of class istio-waypoint with
// the single listener {mesh, 15008, HBONE}.
type WaypointSpec struct {
	// Namespace and Name name the Gateway, and so its ServiceAccount (the
	// waypoint's identity), its Service and its pod's gateway-name label.
	Namespace, Name string
	// VIP is the cluster IP of the waypoint's Service; default
	// netns.VIP(200+k) for the cluster's k-th waypoint.
	VIP netip.Addr
	// For is the Gateway's istio.io/waypoint-for label (service, workload,
	// all, none); default none set (service, Istio's default).
	For string
	// Labels and Annotations are more of the Gateway's metadata (e.g. the
	// annotation istio.io/for-service-account). Optional.
	Labels, Annotations map[string]string
}

// Waypoint is a waypoint Gateway of the cluster and the one pod that serves
// it: a pod namespace that is not captured (istio.io/dataplane-mode: none,
// as istiod-lite's deployer labels the Deployment's pods) running the
// waypoint binary with the pod's address, as the kubelet would run the
// Deployment's container. In local mode the waypoint authenticates with its
// node's token and asks the CA for its ServiceAccount's identity by
// impersonation (the CA grants it because the pod runs on that node), and
// reaches istiod-lite over TLS, verified with the mesh root, like the
// node's ztunnel. In cluster mode (Node.RunWaypointPod) the pod is the one
// the Deployment istiod-lite wrote, run with its own arguments,
// environment and volumes: the waypoint authenticates with its
// ServiceAccount's projected token.
type Waypoint struct {
	*process
	// Spec is the waypoint's spec, defaults filled in.
	Spec WaypointSpec
	// Pod is the waypoint's pod.
	Pod *Pod

	c       *Cluster
	file    string // Gateway, ServiceAccount and Service in the config directory (local mode)
	volumes string // the pod's volumes (cluster mode, RunWaypointPod)

	stopOnce sync.Once
	stopErr  error
}

// ID is the waypoint's SPIFFE identity, its ServiceAccount's.
func (w *Waypoint) ID() string {
	return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", w.Spec.Namespace, w.Spec.Name)
}

// IP is the waypoint pod's address.
func (w *Waypoint) IP() netip.Addr { return w.Pod.IP }

// Hostname is the waypoint's Service hostname, the GatewayAddress
// istiod-lite binds services and workloads to.
func (w *Waypoint) Hostname() string {
	return fmt.Sprintf("%s.%s.svc.cluster.local", w.Spec.Name, w.Spec.Namespace)
}

// Metrics fetches the waypoint's Prometheus metrics (/stats/prometheus),
// from inside its pod.
func (w *Waypoint) Metrics(ctx context.Context) ([]byte, error) {
	return HTTPClient{NS: w.Pod.NS}.Get(ctx, fmt.Sprintf("http://%s/stats/prometheus", netip.AddrPortFrom(w.Pod.IP, WaypointMetricsPort)))
}

// Requests sums the waypoint's istio_requests_total samples (reporter
// waypoint) whose label set contains every one of labels, each written as
// in the exposition format: `response_code="200"`.
func (w *Waypoint) Requests(ctx context.Context, labels ...string) (float64, error) {
	b, err := w.Metrics(ctx)
	if err != nil {
		return 0, fmt.Errorf("waypoint metrics: %w", err)
	}
	var sum float64
next:
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "istio_requests_total{") || !strings.Contains(line, `reporter="waypoint"`) {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// Admin fetches path from the waypoint's admin server (e.g. /config_dump).
func (w *Waypoint) Admin(ctx context.Context, path string) ([]byte, error) {
	return HTTPClient{NS: w.Pod.NS}.Get(ctx, "http://"+WaypointAdminAddr+path)
}

// AddWaypoint runs a waypoint on the node as the cluster's runtime would
// for a Gateway that istiod-lite's deployer rendered: it writes the
// Gateway, its ServiceAccount and its Service (named after the Gateway,
// with a cluster IP, ports 15021 and 15008) to the config directory,
// creates the pod (its Pod object first unready, then its namespace; the
// CNI plugin's ADD runs as for any pod, and ztunnel leaves the pod alone),
// routes the pod to istiod-lite, starts the waypoint process in the pod
// and, once /healthz/ready answers, publishes the pod Ready. It returns
// once istiod-lite reports the Gateway Programmed. Local mode only. On
// error, what was made is removed.
func (n *Node) AddWaypoint(spec WaypointSpec) (*Waypoint, error) {
	c := n.c
	if c.opts.Kube != nil {
		return nil, errors.New("AddWaypoint: local mode only (with Options.Kube, istiod-lite's deployer makes the objects and the kubelet runs the pod with RunWaypointPod)")
	}
	if spec.Namespace == "" || spec.Name == "" {
		return nil, errors.New("AddWaypoint: Namespace and Name are required")
	}
	bin, err := WaypointBinary()
	if err != nil {
		return nil, err
	}
	c.wpMu.Lock()
	if !spec.VIP.IsValid() {
		spec.VIP = netns.VIP(200 + c.wpCount)
	}
	c.wpCount++
	w := &Waypoint{Spec: spec, c: c, file: fmt.Sprintf("waypoint-%s-%s.yaml", spec.Namespace, spec.Name)}
	c.waypoints = append(c.waypoints, w)
	c.wpMu.Unlock()
	if err := w.start(n, bin); err != nil {
		return nil, errors.Join(fmt.Errorf("waypoint %s/%s: %w", spec.Namespace, spec.Name, err), w.Delete())
	}
	return w, nil
}

func (w *Waypoint) start(n *Node, bin string) error {
	c, spec := w.c, w.Spec
	if err := c.write(w.file, w.objectsYAML()); err != nil {
		return err
	}
	pod, err := n.AddPod(PodSpec{
		Namespace:      spec.Namespace,
		Name:           spec.Name + "-0",
		ServiceAccount: spec.Name,
		Labels:         waypointPodLabels(spec.Name),
		Unready:        true,
	})
	if err != nil {
		return err
	}
	w.Pod = pod
	if err := pod.RouteUnderlay(); err != nil {
		return err
	}
	// The token file, as the kubelet mounts a projected token.
	dir, err := os.MkdirTemp("", "waypoint-token-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir) // read once at start
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte(c.Token(n.Name)), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin,
		"--namespace", spec.Namespace,
		"--gateway", spec.Name,
		"--service-account", spec.Name,
		"--pod-name", pod.Spec.Name,
		"--pod-ip", pod.IP.String(),
		"--xds-address", c.IstiodAddr().String(),
		"--ca-root", c.rootFile,
		"--token-file", tokenFile,
		"--impersonate",
		"--hbone-addr", netip.AddrPortFrom(pod.IP, WaypointHBONEPort).String(),
		"--metrics-addr", fmt.Sprintf(":%d", WaypointMetricsPort),
		"--readiness-addr", fmt.Sprintf(":%d", WaypointReadinessPort),
		"--admin-addr", WaypointAdminAddr,
		"--log-level", "info",
	)
	proc, err := startProcess(pod.NS, "waypoint "+spec.Namespace+"/"+spec.Name, cmd)
	if err != nil {
		return err
	}
	w.process = proc
	ready := fmt.Sprintf("http://%s/healthz/ready", netip.AddrPortFrom(pod.IP, WaypointReadinessPort))
	if err := proc.waitReady(pod.NS, ready, 20*time.Second); err != nil {
		return err
	}
	if err := pod.SetReady(true); err != nil {
		return err
	}
	return w.waitProgrammed(10 * time.Second)
}

// waitProgrammed waits until istiod-lite reports the Gateway
// Programmed=True with addresses: from then on, it binds what uses it.
func (w *Waypoint) waitProgrammed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	key := w.Spec.Namespace + "/" + w.Spec.Name
	var last *model.GatewayStatus
	for {
		for _, st := range w.c.Istiod.GatewayStatuses() {
			if st.Key() != key {
				continue
			}
			last = st
			for _, cond := range st.Conditions {
				if cond.Type == "Programmed" && cond.Status == "True" && len(st.Addresses) > 0 {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			if last == nil {
				return fmt.Errorf("istiod-lite reports no status for Gateway %s within %v", key, timeout)
			}
			return fmt.Errorf("Gateway %s not Programmed within %v: conditions %v, addresses %v", key, timeout, last.Conditions, last.Addresses)
		}
		select {
		case <-w.process.done:
			return fmt.Errorf("exited: %v; logs:\n%s", w.process.err, w.process.tail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waypointPodLabels are the labels istiod-lite's deployer puts on a
// waypoint's pods.
func waypointPodLabels(gw string) map[string]string {
	return map[string]string{
		model.LabelGatewayName:                         gw,
		"gateway.networking.k8s.io/gateway-class-name": model.WaypointGatewayClass,
		model.LabelGatewayManaged:                      model.GatewayManagedMesh,
		"istio.io/dataplane-mode":                      "none",
		"sidecar.istio.io/inject":                      "false",
		"service.istio.io/canonical-name":              gw,
		"service.istio.io/canonical-revision":          "latest",
	}
}

// objectsYAML is the Gateway and what the deployer creates for it but the
// Deployment (its pod is run by AddWaypoint): the ServiceAccount and the
// Service, named after the Gateway.
func (w *Waypoint) objectsYAML() string {
	s := w.Spec
	gwLabels := maps.Clone(s.Labels)
	if gwLabels == nil {
		gwLabels = map[string]string{}
	}
	if s.For != "" {
		gwLabels[model.LabelWaypointFor] = s.For
	}
	owned := map[string]string{
		model.LabelGatewayName:                         s.Name,
		"gateway.networking.k8s.io/gateway-class-name": model.WaypointGatewayClass,
		model.LabelGatewayManaged:                      model.GatewayManagedMesh,
	}
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: %[3]s
  annotations: %[4]s
spec:
  gatewayClassName: %[5]s
  listeners:
  - name: mesh
    port: %[6]d
    protocol: HBONE
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: %[7]s
---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: %[7]s
spec:
  type: ClusterIP
  clusterIP: %[8]s
  selector: %[9]s
  ports:
  - name: status-port
    port: %[10]d
    targetPort: %[10]d
    appProtocol: tcp
  - name: mesh
    port: %[6]d
    targetPort: %[6]d
    appProtocol: hbone
`, s.Name, s.Namespace, flow(gwLabels), flow(s.Annotations), model.WaypointGatewayClass, WaypointHBONEPort,
		flow(owned), s.VIP, flow(map[string]string{model.LabelGatewayName: s.Name}), WaypointReadinessPort)
}

// Stop stops the waypoint process (SIGTERM; it drains). The pod and the
// objects stay; stopping twice is not an error.
func (w *Waypoint) Stop() error {
	w.stopOnce.Do(func() {
		if w.process != nil {
			w.stopErr = w.process.Stop()
		}
	})
	return w.stopErr
}

// Delete removes the waypoint as deleting its Gateway does: the process
// stops, the pod goes (CNI DEL, its namespace), then, in local mode, the
// Gateway, ServiceAccount and Service leave the config directory (in
// cluster mode the garbage collector deletes them). Deleting twice is not
// an error.
func (w *Waypoint) Delete() error {
	errs := []error{w.Stop()}
	if w.Pod != nil {
		errs = append(errs, w.Pod.Delete())
	}
	if w.file != "" {
		errs = append(errs, w.c.removeFile(w.file))
	}
	errs = append(errs, w.removeVolumes())
	c := w.c
	c.wpMu.Lock()
	for i, x := range c.waypoints {
		if x == w {
			c.waypoints = append(c.waypoints[:i], c.waypoints[i+1:]...)
			break
		}
	}
	c.wpMu.Unlock()
	return errors.Join(errs...)
}

// Waypoints returns the cluster's waypoints.
func (c *Cluster) Waypoints() []*Waypoint {
	c.wpMu.Lock()
	defer c.wpMu.Unlock()
	return append([]*Waypoint(nil), c.waypoints...)
}
