package kubectl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/tests/kube"
)

const waypointGateway = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// l7DenyAdmin is bound to the echo Service's waypoint by its targetRefs.
const l7DenyAdmin = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`

// waypointPods runs the pods of waypoint Deployments: the harness kubelet
// gives each an IP of 198.18.3.0/24 and marks it Ready, except the pods of
// the Gateways in stuck, which stay Pending. Other pods are left to the
// test (runPod).
//
// With bin set, a pod runs the real waypoint binary with the arguments of
// the Deployment istiod-lite wrote (so a flag the binary does not know
// fails the test), on a loopback address instead, where only what a
// kubelet would provide is replaced: the projected token (a token of the
// pod's ServiceAccount, audience istio-ca), the listeners' host, and
// istiod-lite's address (its plaintext loopback port: no root
// certificate). The pod is Ready once the waypoint answers
// /healthz/ready, after it obtained its certificate and configuration.
type waypointPods struct {
	mu    sync.Mutex
	next  int
	stuck map[string]bool // Gateway names

	bin   string        // waypoint binary; "" runs nothing
	c     *kube.Cluster // set before any waypoint pod exists
	xds   string        // istiod-lite's plaintext address
	dir   string
	t     *testing.T
	procs map[string]*exec.Cmd // by pod UID
}

func (w *waypointPods) run(ctx context.Context, pod *corev1.Pod) ([]netip.Addr, error) {
	gw := pod.Labels["gateway.networking.k8s.io/gateway-name"]
	if gw == "" {
		return nil, errors.New("not a waypoint pod: the test runs it")
	}
	w.mu.Lock()
	if w.stuck[gw] {
		w.mu.Unlock()
		return nil, errors.New("waypoint " + gw + " does not start in this test")
	}
	w.next++
	n := w.next
	bin := w.bin
	w.mu.Unlock()
	if bin == "" {
		return []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 3, byte(n)})}, nil
	}
	ip := netip.AddrFrom4([4]byte{127, 0, 3, byte(n)})
	if err := w.start(ctx, pod, ip); err != nil {
		return nil, err
	}
	return []netip.Addr{ip}, nil
}

func (w *waypointPods) start(ctx context.Context, pod *corev1.Pod, ip netip.Addr) error {
	token, err := w.c.ServiceAccountToken(ctx, pod.Namespace, pod.Spec.ServiceAccountName, "istio-ca", pod)
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(w.dir, string(pod.UID)+".token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return err
	}
	expand := strings.NewReplacer("$(POD_NAMESPACE)", pod.Namespace, "$(SERVICE_ACCOUNT)", pod.Spec.ServiceAccountName,
		"$(POD_NAME)", pod.Name, "$(INSTANCE_IP)", ip.String())
	var args []string
	for _, a := range pod.Spec.Containers[0].Args {
		args = append(args, expand.Replace(a))
	}
	// What the kubelet and the cluster network would provide (the last
	// value of a flag wins).
	args = append(args, "--xds-address="+w.xds, "--ca-root=", "--token-file="+tokenFile,
		"--hbone-addr="+ip.String()+":15008", "--metrics-addr="+ip.String()+":15020",
		"--readiness-addr="+ip.String()+":15021", "--admin-addr="+ip.String()+":15000")
	cmd := exec.Command(w.bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	w.mu.Lock()
	w.procs[string(pod.UID)] = cmd
	w.mu.Unlock()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if w.t.Failed() {
			w.t.Logf("waypoint %s/%s output:\n%s", pod.Namespace, pod.Name, out.String())
		}
	})
	ready := "http://" + ip.String() + ":15021/healthz/ready"
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("waypoint exited: %v: %s", err, out.String())
		default:
		}
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("waypoint not ready after 20s: %s", out.String())
}

// stop ends the waypoint of a deleted pod.
func (w *waypointPods) stop(_ context.Context, pod *corev1.Pod) {
	w.mu.Lock()
	cmd := w.procs[string(pod.UID)]
	w.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(os.Interrupt)
	}
}

// lockedBuffer is a bytes.Buffer safe for a process's output and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestWaypointClusterMode drives waypoints with kubectl against a real API
// server: istiod-lite deploys what a waypoint Gateway needs, the harness
// runs its pod, and the statuses say what Istio's would.
func TestWaypointClusterMode(t *testing.T) {
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	bin := filepath.Join(t.TempDir(), "waypoint")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ambient-go/mesh/waypoint/cmd/waypoint").CombinedOutput(); err != nil {
		t.Fatalf("go build waypoint: %v\n%s", err, out)
	}
	pods := &waypointPods{stuck: map[string]bool{"stuck": true}, bin: bin, dir: t.TempDir(), t: t, procs: map[string]*exec.Cmd{}}
	c := kube.Start(t, kube.Config{CRDDirs: []string{crds}, RunPod: pods.run, StopPod: pods.stop, Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	apply(t, c, objects)
	ist, _ := startIstiod(t, c, log)
	pods.mu.Lock()
	pods.c, pods.xds = c, ist.PlaintextAddr().String()
	pods.mu.Unlock()
	x := startXDS(t, c, ist.PlaintextAddr().String(), log)
	runPod(t, c, "node-b", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{ServiceAccountName: "echo"}}, "198.18.2.10")

	apply(t, c, waypointGateway)
	gw := getObject(t, c, "gateway", "waypoint")

	t.Run("the GatewayClass istio-waypoint exists", func(t *testing.T) {
		waitKubectl(t, c, "GatewayClass istio-waypoint accepted", func() bool {
			out, err := c.Kubectl(t.Context(), "get", "gatewayclass", "istio-waypoint", "-o",
				"jsonpath={.spec.controllerName}|{.spec.description}|{.status.conditions[?(@.type=='Accepted')].status}")
			return err == nil && out == "istio.io/mesh-controller|The default Istio waypoint GatewayClass|True"
		})
	})

	t.Run("ServiceAccount, Deployment and Service appear, owned by the Gateway", func(t *testing.T) {
		for _, kind := range []string{"serviceaccount", "deployment", "service"} {
			waitKubectl(t, c, kind+" demo/waypoint", func() bool {
				_, err := c.Kubectl(t.Context(), "-n", "demo", "get", kind, "waypoint")
				return err == nil
			})
			obj := getObject(t, c, kind, "waypoint")
			refs := obj.Metadata.OwnerReferences
			if len(refs) != 1 || refs[0].Kind != "Gateway" || refs[0].Name != "waypoint" || refs[0].UID != gw.Metadata.UID ||
				refs[0].APIVersion != "gateway.networking.k8s.io/v1" {
				t.Errorf("%s owner references = %+v, want the Gateway demo/waypoint (uid %s)", kind, refs, gw.Metadata.UID)
			}
			if l := obj.Metadata.Labels; l["gateway.networking.k8s.io/gateway-name"] != "waypoint" || l["gateway.istio.io/managed"] != "istio.io-mesh-controller" {
				t.Errorf("%s labels = %v, want Istio's gateway-name and managed labels", kind, l)
			}
		}
		out := c.MustKubectl(t, "-n", "demo", "get", "deployment", "waypoint", "-o",
			`jsonpath={.spec.template.metadata.labels.istio\.io/dataplane-mode}|{.spec.template.spec.containers[0].readinessProbe.httpGet.path}:{.spec.template.spec.containers[0].readinessProbe.httpGet.port}`)
		if out != "none|/healthz/ready:15021" {
			t.Errorf("pod template dataplane-mode|readiness = %q, want none|/healthz/ready:15021", out)
		}
		out = c.MustKubectl(t, "-n", "demo", "get", "service", "waypoint", "-o",
			`jsonpath={range .spec.ports[*]}{.name}/{.port}/{.appProtocol} {end}`)
		if strings.TrimSpace(out) != "status-port/15021/tcp mesh/15008/hbone" {
			t.Errorf("service ports = %q, want status-port/15021/tcp mesh/15008/hbone", out)
		}
	})

	clusterIP := strings.TrimSpace(c.MustKubectl(t, "-n", "demo", "get", "service", "waypoint", "-o", "jsonpath={.spec.clusterIP}"))

	t.Run("the harness runs the pod and the Gateway becomes Programmed with addresses", func(t *testing.T) {
		waitGateway(t, c, "waypoint", func(g gatewayObject) bool {
			return g.condition("Accepted").Status == "True" && g.condition("Programmed").Status == "True" &&
				fmt.Sprint(g.Status.Addresses) == fmt.Sprintf("[{IPAddress %s} {Hostname waypoint.demo.svc.cluster.local}]", clusterIP)
		})
		g := getGateway(t, c, "waypoint")
		if p := g.condition("Programmed"); p.Reason != "Programmed" || p.ObservedGeneration != g.Metadata.Generation {
			t.Errorf("Programmed = %+v, want reason Programmed of generation %d", p, g.Metadata.Generation)
		}
		if len(g.Status.Listeners) != 1 || g.Status.Listeners[0].Name != "mesh" || g.Status.Listeners[0].Conditions.condition("Accepted").Status != "True" {
			t.Errorf("listeners = %+v, want mesh Accepted", g.Status.Listeners)
		}
		// The pod is the waypoint binary, run with the Deployment's
		// arguments: ready means it holds its certificate (the CA took
		// its ServiceAccount token) and its first xDS configuration.
		podIP := strings.TrimSpace(c.MustKubectl(t, "-n", "demo", "get", "pods", "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "jsonpath={.items[0].status.podIP}"))
		resp, err := http.Get("http://" + podIP + ":15021/healthz/ready")
		if err != nil {
			t.Fatalf("the waypoint's readiness endpoint: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /healthz/ready on the waypoint = %d, want 200", resp.StatusCode)
		}
	})

	t.Run("labelling the namespace binds the Service to the waypoint", func(t *testing.T) {
		c.MustKubectl(t, "label", "namespace", "demo", "istio.io/use-waypoint=waypoint")
		waitServiceBound(t, c, "echo", "True", "WaypointAccepted")
		x.waitFor(t, "Service demo/echo with the waypoint's hostname", func(a map[string]*workloadapi.Address) bool {
			return a["demo/echo.demo.svc.cluster.local"].GetService().GetWaypoint().GetHostname().GetHostname() == "waypoint.demo.svc.cluster.local"
		})
	})

	t.Run("an L7 policy bound to the Service is WaypointAccepted, and goes away", func(t *testing.T) {
		apply(t, c, l7DenyAdmin)
		waitPolicyCondition(t, c, "deny-admin", "WaypointAccepted", func(cond map[string]any) bool {
			return cond["status"] == "True" && cond["reason"] == "Accepted"
		})
		c.MustKubectl(t, "-n", "demo", "delete", "authorizationpolicies.security.istio.io", "deny-admin")
		if _, err := c.Kubectl(t.Context(), "-n", "demo", "get", "authorizationpolicies.security.istio.io", "deny-admin"); err == nil {
			t.Error("policy demo/deny-admin still exists after kubectl delete")
		}
	})

	t.Run("a policy targeting a missing Service is TargetNotFound", func(t *testing.T) {
		apply(t, c, strings.NewReplacer("deny-admin", "deny-missing", "name: echo", "name: missing").Replace(l7DenyAdmin))
		waitPolicyCondition(t, c, "deny-missing", "WaypointAccepted", func(cond map[string]any) bool {
			return cond["status"] == "False" && cond["reason"] == "TargetNotFound"
		})
	})

	t.Run("a Gateway with a wrong listener is refused, nothing else disturbed", func(t *testing.T) {
		apply(t, c, strings.NewReplacer("name: waypoint", "name: wrong", "{name: mesh, port: 15008, protocol: HBONE}", "{name: http, port: 8080, protocol: HTTP}").Replace(waypointGateway))
		waitGateway(t, c, "wrong", func(g gatewayObject) bool {
			return len(g.Status.Listeners) == 1 && g.Status.Listeners[0].Conditions.condition("Accepted").Status == "False" &&
				g.Status.Listeners[0].Conditions.condition("Accepted").Reason == "UnsupportedProtocol" &&
				g.condition("Accepted").Status == "False" && g.condition("Programmed").Status == "False"
		})
		if g := getGateway(t, c, "wrong"); len(g.Status.Addresses) != 0 {
			t.Errorf("addresses of a refused waypoint = %v, want none (it binds nothing)", g.Status.Addresses)
		}
		if g := getGateway(t, c, "waypoint"); g.condition("Programmed").Status != "True" {
			t.Errorf("waypoint Programmed = %+v after another Gateway was refused, want True", g.condition("Programmed"))
		}
		waitServiceBound(t, c, "echo", "True", "WaypointAccepted")
	})

	t.Run("a waypoint that is not ready is not Programmed", func(t *testing.T) {
		apply(t, c, strings.ReplaceAll(waypointGateway, "name: waypoint", "name: stuck"))
		waitGateway(t, c, "stuck", func(g gatewayObject) bool {
			p := g.condition("Programmed")
			return g.condition("Accepted").Status == "True" && p.Status == "False" && p.Reason == "AddressNotAssigned" && len(g.Status.Addresses) == 0
		})
		// A Service bound to it says so.
		apply(t, c, `
apiVersion: v1
kind: Service
metadata: {name: other, namespace: demo, labels: {istio.io/use-waypoint: stuck}}
spec:
  selector: {app: other}
  ports: [{name: http, port: 80}]
`)
		waitServiceBound(t, c, "other", "False", "WaypointIsNotReady")

		// The running waypoint's pod goes unready: Programmed=False; its
		// addresses stay (it came up once), as Istio does.
		pod := strings.TrimSpace(c.MustKubectl(t, "-n", "demo", "get", "pods", "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "jsonpath={.items[0].metadata.name}"))
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := c.SetPodReady(ctx, "demo", pod, false); err != nil {
			t.Fatal(err)
		}
		waitGateway(t, c, "waypoint", func(g gatewayObject) bool {
			return g.condition("Programmed").Status == "False" && len(g.Status.Addresses) == 2
		})
		if err := c.SetPodReady(ctx, "demo", pod, true); err != nil {
			t.Fatal(err)
		}
		waitGateway(t, c, "waypoint", func(g gatewayObject) bool { return g.condition("Programmed").Status == "True" })
	})

	t.Run("deleting the Gateway deletes its objects", func(t *testing.T) {
		c.MustKubectl(t, "-n", "demo", "delete", "gateway", "waypoint")
		for _, kind := range []string{"deployment", "service", "serviceaccount"} {
			waitKubectl(t, c, kind+" demo/waypoint deleted by the garbage collector", func() bool {
				_, err := c.Kubectl(t.Context(), "-n", "demo", "get", kind, "waypoint")
				return err != nil && strings.Contains(err.Error(), "NotFound")
			})
		}
		waitKubectl(t, c, "the waypoint's pods gone", func() bool {
			out, err := c.Kubectl(t.Context(), "-n", "demo", "get", "pods", "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "name")
			return err == nil && strings.TrimSpace(out) == ""
		})
		x.waitFor(t, "Service demo/echo without a waypoint", func(a map[string]*workloadapi.Address) bool {
			s := a["demo/echo.demo.svc.cluster.local"].GetService()
			return s != nil && s.GetWaypoint() == nil
		})
	})
}

// kubeObject is the metadata of an object read with kubectl -o json.
type kubeObject struct {
	Metadata struct {
		UID             string            `json:"uid"`
		Generation      int64             `json:"generation"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
			UID        string `json:"uid"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
}

func getObject(t *testing.T, c *kube.Cluster, kind, name string) kubeObject {
	t.Helper()
	var o kubeObject
	if err := json.Unmarshal([]byte(c.MustKubectl(t, "-n", "demo", "get", kind, name, "-o", "json")), &o); err != nil {
		t.Fatal(err)
	}
	return o
}

type condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason"`
	Message            string `json:"message"`
	ObservedGeneration int64  `json:"observedGeneration"`
}

type conditions []condition

func (cs conditions) condition(typ string) condition {
	for _, c := range cs {
		if c.Type == typ {
			return c
		}
	}
	return condition{}
}

type gatewayObject struct {
	kubeObject
	Status struct {
		Addresses []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"addresses"`
		Conditions conditions `json:"conditions"`
		Listeners  []struct {
			Name       string     `json:"name"`
			Conditions conditions `json:"conditions"`
		} `json:"listeners"`
	} `json:"status"`
}

func (g gatewayObject) condition(typ string) condition { return g.Status.Conditions.condition(typ) }

func getGateway(t *testing.T, c *kube.Cluster, name string) gatewayObject {
	t.Helper()
	var g gatewayObject
	if err := json.Unmarshal([]byte(c.MustKubectl(t, "-n", "demo", "get", "gateway", name, "-o", "json")), &g); err != nil {
		t.Fatal(err)
	}
	return g
}

// waitGateway waits until the Gateway demo/name, read with kubectl,
// satisfies ok.
func waitGateway(t *testing.T, c *kube.Cluster, name string, ok func(gatewayObject) bool) {
	t.Helper()
	var last gatewayObject
	waitKubectlOr(t, "Gateway demo/"+name, func() bool {
		last = getGateway(t, c, name)
		return ok(last)
	}, func() string { return fmt.Sprintf("%+v", last.Status) })
}

// waitServiceBound waits for the istio.io/WaypointBound condition of the
// Service demo/name.
func waitServiceBound(t *testing.T, c *kube.Cluster, name, status, reason string) {
	t.Helper()
	var last string
	waitKubectlOr(t, fmt.Sprintf("Service demo/%s istio.io/WaypointBound %s %s", name, status, reason), func() bool {
		out := c.MustKubectl(t, "-n", "demo", "get", "service", name, "-o", "jsonpath={.status.conditions}")
		last = out
		var cs conditions
		if out != "" {
			if err := json.Unmarshal([]byte(out), &cs); err != nil {
				t.Fatal(err)
			}
		}
		cond := cs.condition("istio.io/WaypointBound")
		return cond.Status == status && cond.Reason == reason
	}, func() string { return last })
}

// waitPolicyCondition waits until the condition typ of the
// AuthorizationPolicy demo/name satisfies ok.
func waitPolicyCondition(t *testing.T, c *kube.Cluster, name, typ string, ok func(map[string]any) bool) {
	t.Helper()
	var last string
	waitKubectlOr(t, fmt.Sprintf("AuthorizationPolicy demo/%s %s", name, typ), func() bool {
		last = c.MustKubectl(t, "-n", "demo", "get", "authorizationpolicies.security.istio.io", name, "-o", "jsonpath={.status.conditions}")
		var cs []map[string]any
		if last != "" {
			if err := json.Unmarshal([]byte(last), &cs); err != nil {
				t.Fatal(err)
			}
		}
		for _, cond := range cs {
			if cond["type"] == typ && ok(cond) {
				return true
			}
		}
		return false
	}, func() string { return last })
}

func waitKubectl(t *testing.T, c *kube.Cluster, what string, ok func() bool) {
	t.Helper()
	waitKubectlOr(t, what, ok, func() string { return "" })
}

// waitKubectlOr polls ok every 100 ms for waitTimeout; on timeout it fails
// with last().
func waitKubectlOr(t *testing.T, what string, ok func() bool, last func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out; last: %s", what, last())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
