package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/harness"
)

// authzMesh has, in ambient namespaces, the clients foo/client and
// bar/client on node-a and the server demo/echo-0 on node-b (port 9000).
type authzMesh struct {
	*demoMesh
	foo, bar, echo netip.Addr
	target         string
}

func newAuthzMesh(t *testing.T) *authzMesh {
	m := harness.New(t, harness.Options{})
	a := &authzMesh{demoMesh: &demoMesh{Mesh: m}, foo: m.PodIP(0, 0), bar: m.PodIP(0, 1), echo: m.PodIP(1, 0)}
	a.target = netip.AddrPortFrom(a.echo, 9000).String()
	harness.StartEcho(t, "echo-0", netip.AddrPortFrom(a.echo, 9000))
	var docs []string
	for _, ns := range []string{"demo", "foo", "bar"} {
		docs = append(docs, fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    istio.io/dataplane-mode: ambient\n", ns))
	}
	docs = append(docs,
		pod("foo", "client", "client", "node-a", a.foo, "app: client"),
		pod("bar", "client", "client", "node-a", a.bar, "app: client"),
		pod("demo", "echo-0", "echo", "node-b", a.echo, "app: echo"))
	m.Write("apps.yaml", strings.Join(docs, "---\n"))
	for _, src := range []netip.Addr{a.foo, a.bar} {
		waitMeshed(t, a.demoMesh, "node-b", src, netip.AddrPortFrom(a.echo, 9000), 5*time.Second)
	}
	return a
}

// try dials target from src and reads the echo hello: nil when it got
// through, else the error (a *harness.SOCKSError when the client's ztunnel
// refused it).
func (a *authzMesh) try(src netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := harness.Dial(ctx, src, a.target)
	if err != nil {
		return err
	}
	defer c.Close()
	_, _, _, err = harness.Hello(c)
	return err
}

// eventually polls check every 20ms until it returns nil, or fails the
// test after timeout with its last error.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// denied is nil when err is the SOCKS5 "not allowed" reply (2), which the
// client's ztunnel sends when the destination answered 401.
func denied(err error) error {
	var se *harness.SOCKSError
	if errors.As(err, &se) && se.Code == 2 {
		return nil
	}
	return fmt.Errorf("got %v, want SOCKS5 reply 2 (not allowed)", err)
}

const denyFoo = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-foo
  namespace: demo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["foo"]
`

const allowBar = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-bar
  namespace: demo
spec:
  selector:
    matchLabels:
      app: echo
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bar/sa/client"]
`

func TestAuthorizationPolicies(t *testing.T) {
	a := newAuthzMesh(t)
	zb, za := a.Ztunnel("node-b"), a.Ztunnel("node-a")

	t.Run("deny from namespace foo", func(t *testing.T) {
		a.Write("policy.yaml", denyFoo)
		eventually(t, 5*time.Second, "foo denied", func() error { return denied(a.try(a.foo)) })
		// The record of the refused CONNECT (a 401), not that of a probe
		// connection opened before the policy arrived and closed by it.
		rec := harness.WaitRecord(t, zb, 2*time.Second, func(r accesslog.Record) bool {
			return r.Direction == accesslog.Inbound && r.ResponseFlags == "DENY" && r.SrcNamespace == "foo" &&
				r.Err != nil && strings.Contains(r.Err.Error(), "401")
		})
		if rec.Policy != "demo/deny-foo" {
			t.Errorf("destination record: policy %q, error %v; want demo/deny-foo and a 401", rec.Policy, rec.Err)
		}
		harness.WaitRecord(t, za, 2*time.Second, func(r accesslog.Record) bool {
			return r.Direction == accesslog.Outbound && r.ResponseFlags == "DENY" && r.SrcNamespace == "foo"
		})
		if err := a.try(a.bar); err != nil {
			t.Errorf("bar: %v, want it still allowed", err)
		}
	})

	t.Run("allow one principal", func(t *testing.T) {
		a.Write("policy.yaml", allowBar)
		// foo stays denied, now because no ALLOW policy matches it.
		eventually(t, 5*time.Second, "foo denied by the allow policy", func() error {
			if err := denied(a.try(a.foo)); err != nil {
				return err
			}
			for {
				select {
				case r := <-zb.Records:
					if r.ResponseFlags == "DENY" && r.SrcNamespace == "foo" && r.Policy == "" {
						return nil
					}
				default:
					return errors.New("no record of a deny without a policy yet")
				}
			}
		})
		if err := a.try(a.bar); err != nil {
			t.Errorf("bar: %v, want it allowed", err)
		}
	})

	t.Run("delete the policy", func(t *testing.T) {
		a.Remove("policy.yaml")
		eventually(t, 5*time.Second, "foo allowed again", func() error { return a.try(a.foo) })
		if err := a.try(a.bar); err != nil {
			t.Errorf("bar: %v, want it allowed", err)
		}
	})

	t.Run("established connection closed by a new policy", func(t *testing.T) {
		open := func(src netip.Addr) (*net.TCPConn, io.Reader) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := harness.Dial(ctx, src, a.target)
			if err != nil {
				t.Fatalf("dial from %s: %v", src, err)
			}
			t.Cleanup(func() { c.Close() })
			_, _, r, err := harness.Hello(c)
			if err != nil {
				t.Fatal(err)
			}
			return c, r
		}
		fooConn, fooR := open(a.foo)
		barConn, barR := open(a.bar)

		a.Write("policy.yaml", denyFoo)
		var applied time.Time
		eventually(t, 5*time.Second, "policy at node-b", func() error {
			if _, ok := zb.Store().Policies()["demo/deny-foo"]; !ok {
				return errors.New("not yet")
			}
			applied = time.Now()
			return nil
		})
		fooConn.SetReadDeadline(applied.Add(time.Second))
		if _, err := io.ReadAll(fooR); err != nil {
			t.Errorf("foo's connection not closed within 1s of the policy reaching ztunnel: %v", err)
		}
		rec := harness.WaitRecord(t, zb, 2*time.Second, func(r accesslog.Record) bool {
			return r.Direction == accesslog.Inbound && r.SrcNamespace == "foo" && r.Err != nil && r.Err.Error() == "connection closed due to policy change"
		})
		if rec.Policy != "demo/deny-foo" || rec.ResponseFlags != "DENY" {
			t.Errorf("record of the closed connection: error %v, policy %q, flags %q", rec.Err, rec.Policy, rec.ResponseFlags)
		}
		// bar's connection keeps flowing.
		barConn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(barConn, "still here\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("still here\n"))
		if _, err := io.ReadFull(barR, buf); err != nil || string(buf) != "still here\n" {
			t.Errorf("bar's connection after the policy change: read %q, %v", buf, err)
		}
	})

	t.Run("invalid policies are reported and change nothing", func(t *testing.T) {
		// deny-foo (policy.yaml) is in force.
		a.Write("bad-cidr.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-cidr
  namespace: demo
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/40"]
`)
		a.Write("bad-action.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-action
  namespace: demo
spec:
  action: REJECT
`)
		// An invalid edit of an enforced policy keeps its last good version.
		a.Write("policy.yaml", strings.Replace(denyFoo, "action: DENY", "action: DENNY", 1))
		eventually(t, 5*time.Second, "errors reported", func() error {
			var msgs []string
			for _, err := range a.Istiod.Errors() {
				msgs = append(msgs, err.Error())
			}
			all := strings.Join(msgs, "\n")
			for _, want := range []string{"bad-cidr.yaml:11:", "10.0.0.0/40", "bad-action.yaml:7:", "REJECT", "policy.yaml:7:", "DENNY"} {
				if !strings.Contains(all, want) {
					return fmt.Errorf("errors %q do not mention %q", all, want)
				}
			}
			return nil
		})
		if _, ok := zb.Store().Policies()["demo/bad-cidr"]; ok {
			t.Error("the invalid policy demo/bad-cidr reached ztunnel")
		}
		if err := denied(a.try(a.foo)); err != nil {
			t.Errorf("foo: %v (deny-foo must stay in force)", err)
		}
		if err := a.try(a.bar); err != nil {
			t.Errorf("bar: %v, want it allowed", err)
		}
	})
}
