package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/harness"
)

// impostor is a pod in demo, on node-b, that claims ip: it is created after
// echo-0, as an attacker's (or a churning cluster's) pod would be.
func impostor(ip netip.Addr) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: impostor
  namespace: demo
  creationTimestamp: "2026-01-02T00:00:00Z"
  labels: {app: impostor}
spec:
  nodeName: node-b
  serviceAccountName: impostor
  containers:
  - name: app
    image: app
status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "True"
`, ip)
}

// TestTransientIPConflictKeepsPolicy is issue 9 item 3: a second pod
// claiming echo-0's IP, then removed, must not leave echo-0 out of the mesh
// (plaintext, no policy). The client that echo-0's ALLOW policy denies
// stays denied during and after the conflict, the allowed one still goes
// through HBONE to echo-0's identity, and istiod-lite reports the conflict.
func TestTransientIPConflictKeepsPolicy(t *testing.T) {
	a := newAuthzMesh(t)
	zb, za := a.Ztunnel("node-b"), a.Ztunnel("node-a")
	a.Write("policy.yaml", allowBar)
	eventually(t, 5*time.Second, "foo denied by the allow policy", func() error { return denied(a.try(a.foo)) })

	conflict := func() error {
		for _, err := range a.Istiod.Errors() {
			if strings.Contains(err.Error(), "demo/impostor") && strings.Contains(err.Error(), a.echo.String()) {
				return nil
			}
		}
		return fmt.Errorf("istiod-lite errors %v, want the conflict of demo/impostor on %s", a.Istiod.Errors(), a.echo)
	}
	a.Write("impostor.yaml", impostor(a.echo))
	eventually(t, 5*time.Second, "conflict reported", conflict)
	for i := range 5 {
		if err := denied(a.try(a.foo)); err != nil {
			t.Fatalf("during the conflict, try %d from foo: %v", i, err)
		}
	}

	a.Remove("impostor.yaml")
	eventually(t, 5*time.Second, "conflict gone", func() error {
		if conflict() == nil {
			return errors.New("still reported")
		}
		for _, z := range []*harness.Ztunnel{za, zb} {
			for _, w := range z.Store().Dump().Workloads {
				if w.Name == "impostor" {
					return fmt.Errorf("ztunnel %s still has the impostor", z.Node)
				}
			}
		}
		return nil
	})
	for _, z := range []*harness.Ztunnel{za, zb} {
		w := z.Store().WorkloadByAddr(a.echo)
		if w == nil || w.Name != "echo-0" {
			t.Fatalf("ztunnel %s: WorkloadByAddr(%s) = %v, want echo-0", z.Node, a.echo, w)
		}
	}
	for i := range 5 {
		if err := denied(a.try(a.foo)); err != nil {
			t.Fatalf("after the conflict, try %d from foo: %v", i, err)
		}
	}
	drain(za)
	drain(zb)
	if err := a.try(a.bar); err != nil {
		t.Fatalf("after the conflict, bar: %v, want it allowed", err)
	}
	const echoID = "spiffe://cluster.local/ns/demo/sa/echo"
	rec := harness.WaitRecord(t, za, 2*time.Second, func(r accesslog.Record) bool {
		return r.Direction == accesslog.Outbound && r.SrcNamespace == "bar" && r.DstAddr.Addr() == a.echo
	})
	if rec.DstAddr != netip.AddrPortFrom(a.echo, 15008) || rec.DstIdentity != echoID || rec.DstWorkload != "echo-0" {
		t.Errorf("bar → echo-0 outbound record: hbone %v, identity %q, workload %q; want HBONE to %s, %s, echo-0",
			rec.DstAddr, rec.DstIdentity, rec.DstWorkload, netip.AddrPortFrom(a.echo, 15008), echoID)
	}
	harness.WaitRecord(t, zb, 2*time.Second, func(r accesslog.Record) bool {
		return r.Direction == accesslog.Inbound && r.SrcNamespace == "bar" && r.SrcIdentity == "spiffe://cluster.local/ns/bar/sa/client" &&
			r.DstWorkload == "echo-0"
	})
}

// drain discards the access log records z has written so far.
func drain(z *harness.Ztunnel) {
	for {
		select {
		case <-z.Records:
		default:
			return
		}
	}
}
