package waypoint

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// TestConfigDump: /config_dump shows the waypoint's Gateway and pod, the L7
// policies and routes it holds as received (what meshctl explain
// evaluates) and its certificate (meshctl proxy-status' expiry).
func TestConfigDump(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	pol := &waypoint.Authorization{
		Name: "deny-admin", Namespace: "default", Action: waypoint.Action_DENY,
		Targets: []*waypoint.Target{{Kind: &waypoint.Target_Service{Service: "default/echo.default.svc.cluster.local"}}},
		Rules:   []*waypoint.Rule{{To: []*waypoint.Operation{{Paths: []string{"/admin"}}}}},
	}
	routes := &waypoint.Routes{Service: "default/echo.default.svc.cluster.local", Http: []*waypoint.HTTPRouteEntry{{
		Route: "default/echo", Kind: "HTTPRoute", Port: 80,
		Backends: []*waypoint.Backend{{Service: "default/echo-v2.default.svc.cluster.local", Port: 80, Weight: 1}},
	}}}
	srv := &ads{
		nodes:  make(chan string, 4),
		tokens: make(chan string, 4),
		resources: map[string][]*discoveryv3.Resource{
			workloadapi.WaypointAuthorizationTypeURL: {res(t, "default/deny-admin", pol)},
			workloadapi.WaypointRoutesTypeURL:        {res(t, "default/echo.default.svc.cluster.local", routes)},
		},
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gl)
	defer gs.Stop()

	w, err := New(Config{
		Namespace: "default", Gateway: "wp", PodName: "wp-0", PodIP: netip.MustParseAddr("127.0.2.2"),
		XDSAddress: gl.Addr().String(), Token: "node-token", CA: &signer{ca: ca, ids: make(chan spiffeid.ID, 4)},
		HBONEAddr: "127.0.2.2:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("waypoint not ready within 10s")
	}

	resp, err := http.Get("http://" + w.Admin().AdminAddr().String() + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var d struct {
		Gateway        string            `json:"gateway"`
		Pod            string            `json:"pod"`
		Policies       []string          `json:"waypointPolicies"`
		Authorizations []json.RawMessage `json:"waypointAuthorizations"`
		Routes         []json.RawMessage `json:"waypointRoutes"`
		Certificates   []struct {
			Identity string    `json:"identity"`
			NotAfter time.Time `json:"notAfter"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("/config_dump = %s: %v", b, err)
	}
	if d.Gateway != "default/wp" || d.Pod != "wp-0" {
		t.Errorf("/config_dump gateway, pod = %q, %q, want %q, %q", d.Gateway, d.Pod, "default/wp", "wp-0")
	}
	if diff := cmp.Diff([]string{"default/deny-admin"}, d.Policies); diff != "" {
		t.Errorf("/config_dump waypointPolicies (-want +got):\n%s", diff)
	}
	var got []*waypoint.Authorization
	for _, raw := range d.Authorizations {
		a := &waypoint.Authorization{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Fatalf("waypointAuthorizations entry %s: %v", raw, err)
		}
		got = append(got, a)
	}
	if diff := cmp.Diff([]*waypoint.Authorization{pol}, got, protocmp.Transform()); diff != "" {
		t.Errorf("/config_dump waypointAuthorizations (-want +got):\n%s", diff)
	}
	var gotRoutes []*waypoint.Routes
	for _, raw := range d.Routes {
		r := &waypoint.Routes{}
		if err := protojson.Unmarshal(raw, r); err != nil {
			t.Fatalf("waypointRoutes entry %s: %v", raw, err)
		}
		gotRoutes = append(gotRoutes, r)
	}
	if diff := cmp.Diff([]*waypoint.Routes{routes}, gotRoutes, protocmp.Transform()); diff != "" {
		t.Errorf("/config_dump waypointRoutes (-want +got):\n%s", diff)
	}
	if w.l7.currentRoutes() == nil {
		t.Errorf("routes held but none compiled for the data path")
	}
	if len(d.Certificates) != 1 || d.Certificates[0].Identity != "spiffe://cluster.local/ns/default/sa/wp" || !d.Certificates[0].NotAfter.After(time.Now()) {
		t.Errorf("/config_dump certificates = %+v, want the waypoint's own, not expired", d.Certificates)
	}
}
