package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// routedYAML adds to meshYAML a ready waypoint, Service echo that uses
// it, Service echo-v2 and an HTTPRoute splitting echo's traffic.
const routedYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec:
  nodeName: node-a
  serviceAccountName: waypoint
  containers: [{name: proxy, image: waypoint}]
status:
  phase: Running
  podIP: 10.1.0.9
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.1
  selector: {app: echo}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: demo}
spec:
  clusterIP: 10.96.0.2
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
`

// TestWaypointRoutesPublished: a waypoint's stream subscribed to
// WaypointRoutesTypeURL receives the Routes of the Service its route is
// attached to; a ztunnel's stream, subscribed to the Workload API types,
// never receives one; and the route's status is Accepted.
func TestWaypointRoutesPublished(t *testing.T) {
	s, _ := startLocal(t)
	if err := os.WriteFile(filepath.Join(s.cfg.ConfigDir, "routes.yaml"), []byte(routedYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	const key = "demo/echo.demo.svc.cluster.local"
	deadline := time.Now().Add(10 * time.Second)
	for s.XDS().Version(workloadapi.WaypointRoutesTypeURL, key) == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no Routes %s published within 10s; errors: %v", key, s.Errors())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn := dial(t, s.PlaintextAddr().String(), nil, nil)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer token-node-a"), 10*time.Second)
	defer cancel()

	// The waypoint.
	wp, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := wp.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node:    &corev3.Node{Id: "router~10.1.0.9~waypoint-0.demo~demo.svc.cluster.local"},
		TypeUrl: workloadapi.WaypointRoutesTypeURL,
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := wp.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTypeUrl() != workloadapi.WaypointRoutesTypeURL || len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != key {
		t.Fatalf("waypoint's first response = %v, want the Routes %s", resp, key)
	}
	var got waypoint.Routes
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(&got); err != nil {
		t.Fatal(err)
	}
	want := &waypoint.Routes{Service: key, Http: []*waypoint.HTTPRouteEntry{{
		Route: "demo/split", Kind: "HTTPRoute", Port: 80,
		Match: &waypoint.HTTPMatch{Path: &waypoint.StringMatch{Type: waypoint.StringMatch_PREFIX, Value: "/"}},
		Backends: []*waypoint.Backend{
			{Service: key, Port: 80, Weight: 90},
			{Service: "demo/echo-v2.demo.svc.cluster.local", Port: 80, Weight: 10},
		},
		Retry: &waypoint.Retry{Attempts: 2, Codes: []uint32{503}},
	}}}
	if !proto.Equal(&got, want) {
		t.Errorf("waypoint's Routes = %v, want %v", &got, want)
	}

	// The ztunnel: every response it gets is of a type it asked for.
	zt, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "ztunnel~127.0.0.1~ztunnel-node-a.istio-system~istio-system.svc.cluster.local"}
	for _, typ := range []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL} {
		if err := zt.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
		resp, err := zt.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetTypeUrl() != typ {
			t.Fatalf("ztunnel's response to %s is of type %s", typ, resp.GetTypeUrl())
		}
		for _, r := range resp.GetResources() {
			if r.GetResource().GetTypeUrl() == workloadapi.WaypointRoutesTypeURL {
				t.Errorf("ztunnel received Routes %s", r.GetName())
			}
		}
	}

	var accepted bool
	for _, st := range s.RouteStatuses() {
		if st.Kind == "HTTPRoute" && st.Namespace == "demo" && st.Name == "split" && len(st.Parents) == 1 &&
			st.Parents[0].Conditions[0].Type == "Accepted" && st.Parents[0].Conditions[0].Status == "True" {
			accepted = true
		}
	}
	if !accepted {
		t.Errorf("RouteStatuses() = %v, want demo/split Accepted", s.RouteStatuses())
	}
}
