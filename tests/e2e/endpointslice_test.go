package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/harness"
)

// TestServiceWithoutSelectorThroughMesh: a Service without selector whose
// EndpointSlice (written by hand, as for a backend outside the cluster)
// lists a ready and a not-ready endpoint is reachable from a meshed pod
// by its VIP: ztunnel sends every connection to the ready endpoint, in
// plaintext (the endpoint is not in the mesh), and logs the service.
func TestServiceWithoutSelectorThroughMesh(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	ready, notReady := d.PodIP(1, 5), d.PodIP(1, 6)
	harness.StartEcho(t, "ext-ready", netip.AddrPortFrom(ready, 9100))
	harness.StartEcho(t, "ext-not-ready", netip.AddrPortFrom(notReady, 9100))
	vip := d.VIP(1)
	d.Write("ext.yaml", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec:
  clusterIP: %s
  ports: [{name: tcp, port: 80, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-1
  namespace: demo
  labels: {kubernetes.io/service-name: ext}
addressType: IPv4
ports: [{name: tcp, port: 9100, protocol: TCP}]
endpoints:
- addresses: [%s]
  conditions: {ready: true}
- addresses: [%s]
  conditions: {ready: false}
`, vip, ready, notReady))

	target := netip.AddrPortFrom(vip, 80).String()
	waitReachable(t, d.client, target, 5*time.Second)
	for i := range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := harness.Dial(ctx, d.client, target)
		cancel()
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i, target, err)
		}
		name, seen, _, err := harness.Hello(c)
		c.Close()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if name != "ext-ready" {
			t.Errorf("connection %d answered by %s, want ext-ready (the only ready endpoint)", i, name)
		}
		if seen.Addr() != d.client {
			t.Errorf("connection %d: the endpoint saw %s, want the client pod's %s", i, seen.Addr(), d.client)
		}
	}
	r := harness.WaitRecord(t, d.Ztunnel("node-a"), 5*time.Second, func(r accesslog.Record) bool {
		return r.Direction == "outbound" && r.DstAddr == netip.AddrPortFrom(ready, 9100)
	})
	if r.DstService != "ext.demo.svc.cluster.local" {
		t.Errorf("outbound record's dst.service = %q, want ext.demo.svc.cluster.local", r.DstService)
	}
}
