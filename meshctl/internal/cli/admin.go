package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// proxyAdmin reaches one proxy's admin server (:15000).
type proxyAdmin struct {
	name string // node (ztunnel) or namespace/name (waypoint)
	addr string // host:port
	stop func()
}

func (a *proxyAdmin) close() {
	if a.stop != nil {
		a.stop()
	}
}

// ztunnelAdmin finds the admin server of the ztunnel of node (any ztunnel
// when node is empty): in local mode from --proxy-admin, in a cluster by
// port-forwarding to the ztunnel pod on that node (the admin server binds
// the pod's localhost, so the API server's pod proxy cannot reach it).
func (o *Options) ztunnelAdmin(ctx context.Context, node string) (*proxyAdmin, error) {
	if o.Local() || len(o.ProxyAdmin) > 0 {
		if node == "" {
			nodes := o.adminNodes()
			if len(nodes) == 0 {
				return nil, fmt.Errorf("local mode: name a ztunnel's admin address with --proxy-admin NODE=ADDR")
			}
			node = nodes[0]
		}
		addr, ok := o.ProxyAdmin[node]
		if !ok {
			return nil, fmt.Errorf("local mode: no --proxy-admin %s=ADDR for node %s", node, node)
		}
		return &proxyAdmin{name: node, addr: addr}, nil
	}
	kc, err := o.kube()
	if err != nil {
		return nil, err
	}
	pod, err := kc.findPod(ctx, istioSystem, "app=ztunnel", node)
	if err != nil {
		return nil, err
	}
	addr, stop, err := kc.portForward(ctx, pod, 15000)
	if err != nil {
		return nil, err
	}
	return &proxyAdmin{name: pod.Spec.NodeName, addr: addr, stop: stop}, nil
}

// adminNodes are the ztunnel nodes of --proxy-admin (names without "/"),
// sorted.
func (o *Options) adminNodes() []string {
	var out []string
	for k := range o.ProxyAdmin {
		if !strings.Contains(k, "/") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

// get fetches path from the admin server.
func (a *proxyAdmin) get(ctx context.Context, path string) ([]byte, error) {
	return a.do(ctx, http.MethodGet, path)
}

func (a *proxyAdmin) do(ctx context.Context, method, path string) ([]byte, error) {
	u := (&url.URL{Scheme: "http", Host: a.addr}).String() + path
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin of %s: %w", a.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("admin of %s: %w", a.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin of %s: %s %s: %s: %s", a.name, method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// configDump is a ztunnel's /config_dump.
type configDump struct {
	Node         string            `json:"node"`
	Workloads    []json.RawMessage `json:"workloads"`
	Services     []json.RawMessage `json:"services"`
	Policies     []json.RawMessage `json:"policies"`
	Certificates []certificate     `json:"certificates"`
	// Connections are the connections the ztunnel carries; nil from a
	// ztunnel that does not report them (older than this meshctl).
	Connections []connection `json:"connections,omitempty"`
}

// certificate is one entry of a proxy's /config_dump certificates.
type certificate = identity.CertificateInfo

type connection struct {
	Workload     string    `json:"workload"`
	Direction    string    `json:"direction"`
	Local        string    `json:"local"`
	Remote       string    `json:"remote"`
	RemoteTarget string    `json:"remoteTarget"`
	Protocol     string    `json:"protocol"`
	Start        time.Time `json:"start"`
}

func (a *proxyAdmin) configDump(ctx context.Context) (*configDump, error) {
	b, err := a.get(ctx, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d configDump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("admin of %s: config dump: %w", a.name, err)
	}
	return &d, nil
}

// waypointAdmin finds the admin server of waypoint namespace/name: in local
// mode from --proxy-admin NAMESPACE/NAME=ADDR, in a cluster by
// port-forwarding to a pod of the waypoint's Deployment. ok is false when
// local mode names no address for it.
func (o *Options) waypointAdmin(ctx context.Context, namespace, name string) (a *proxyAdmin, ok bool, err error) {
	key := namespace + "/" + name
	if o.Local() || len(o.ProxyAdmin) > 0 {
		addr, ok := o.ProxyAdmin[key]
		if !ok {
			return nil, false, nil
		}
		return &proxyAdmin{name: key, addr: addr}, true, nil
	}
	kc, err := o.kube()
	if err != nil {
		return nil, false, err
	}
	pod, err := kc.findPod(ctx, namespace, "gateway.networking.k8s.io/gateway-name="+name, "")
	if err != nil {
		return nil, false, err
	}
	addr, stop, err := kc.portForward(ctx, pod, 15000)
	if err != nil {
		return nil, false, err
	}
	return &proxyAdmin{name: key, addr: addr, stop: stop}, true, nil
}

// waypointDump is what explain and proxy-status read from a waypoint's
// /config_dump.
type waypointDump struct {
	Identity string `json:"identity"`
	// Gateway ("namespace/name") and Pod are empty from waypoints older
	// than this meshctl.
	Gateway string `json:"gateway"`
	Pod     string `json:"pod"`
	// Policies are the names of the L7 policies held; Authorizations the
	// policies themselves (ambientgo.waypoint.Authorization as protojson),
	// absent from older waypoints.
	Policies       []string          `json:"waypointPolicies"`
	Authorizations []json.RawMessage `json:"waypointAuthorizations"`
	Certificates   []certificate     `json:"certificates"`
}

func (a *proxyAdmin) waypointDump(ctx context.Context) (*waypointDump, error) {
	b, err := a.get(ctx, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d waypointDump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("admin of %s: config dump: %w", a.name, err)
	}
	return &d, nil
}

// authorizations decodes the L7 policies of d; nil when the waypoint does
// not dump them.
func (d *waypointDump) authorizations() ([]*waypoint.Authorization, error) {
	if d.Authorizations == nil {
		return nil, nil
	}
	out := make([]*waypoint.Authorization, 0, len(d.Authorizations))
	for _, raw := range d.Authorizations {
		a := &waypoint.Authorization{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, a); err != nil {
			return nil, fmt.Errorf("waypoint policy: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}
