package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/socks5"
	"github.com/ambient-go/mesh/tests/harness"
)

const allowEchoToSecret = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-echo
  namespace: demo
spec:
  selector:
    matchLabels:
      app: secret
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/echo"]
`

// TestNoIdentityLaundering is the attack of issue 9: pod demo/secret admits
// only demo/echo; the client, denied directly, must stay denied when it
// tunnels to echo-0's SOCKS5 port (15080) and asks from there, through its
// own ztunnel or with its own HBONE client.
func TestNoIdentityLaundering(t *testing.T) {
	m := harness.New(t, harness.Options{})
	d := &demoMesh{Mesh: m, client: m.PodIP(0, 0), echo0: m.PodIP(1, 0)}
	secret := m.PodIP(1, 1)
	secretApp := netip.AddrPortFrom(secret, 9000)
	harness.StartEcho(t, "echo-0", netip.AddrPortFrom(d.echo0, 9000))
	harness.StartEcho(t, "secret", secretApp)
	m.Write("demo.yaml", strings.Join([]string{
		"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n",
		pod("demo", "client", "client", "node-a", d.client, "app: client"),
		pod("demo", "echo-0", "echo", "node-b", d.echo0, "app: echo"),
		pod("demo", "secret", "secret", "node-b", secret, "app: secret"),
	}, "---\n"))
	waitMeshed(t, d, "node-b", d.client, secretApp, 5*time.Second)
	m.Write("policy.yaml", allowEchoToSecret)

	// reach dials secret's app from src, directly through src's ztunnel.
	reach := func(src netip.Addr) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := harness.Dial(ctx, src, secretApp.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, _, _, err = harness.Hello(c)
		return err
	}
	eventually(t, 5*time.Second, "client denied by the policy", func() error { return denied(reach(d.client)) })
	if err := reach(d.echo0); err != nil {
		t.Fatalf("echo-0 to secret: %v, want it allowed", err)
	}

	// laundered asks, through the tunnel c to a SOCKS5 listener, for
	// secret's app; nil means the attack failed.
	laundered := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		defer c.SetDeadline(time.Time{})
		if err := socks5.Connect(c, secretApp.String()); err != nil {
			return nil // refused (a reply error) or cut: the attack failed
		}
		name, _, _, err := harness.Hello(c)
		if err != nil {
			return nil
		}
		return fmt.Errorf("reached %q with another pod's identity", name)
	}

	for _, port := range []uint16{15080, 15008, 15000, 15020, 15021, 15001, 15006} {
		target := netip.AddrPortFrom(d.echo0, port)
		t.Run(fmt.Sprintf("through the client's ztunnel to echo-0:%d", port), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := harness.Dial(ctx, d.client, target.String())
			if err == nil {
				defer c.Close()
				if err := laundered(c); err != nil {
					t.Fatal(err)
				}
				t.Fatalf("CONNECT to %s was accepted, want it refused", target)
			}
			if err := denied(err); err != nil {
				t.Errorf("CONNECT to %s: %v", target, err)
			}
		})
	}

	pool, clientID := meshClient(t, d)
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo")
	for _, port := range []uint16{15080, 15008, 15000, 15020, 15021, 15001, 15006} {
		target := netip.AddrPortFrom(d.echo0, port)
		t.Run(fmt.Sprintf("with its own HBONE client to echo-0:%d", port), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := pool.Dial(ctx, hbone.Target{
				Addr:      netip.AddrPortFrom(d.echo0, 15008),
				Authority: target.String(),
				SourceID:  clientID,
				DestIDs:   []spiffeid.ID{echoID},
			})
			if err == nil {
				defer c.Close()
				if err := laundered(c); err != nil {
					t.Fatal(err)
				}
				t.Fatalf("CONNECT %s answered 200, want 400", target)
			}
			var se *hbone.StatusError
			if !errors.As(err, &se) || se.Code != http.StatusBadRequest {
				t.Errorf("CONNECT %s = %v, want status 400", target, err)
			}
		})
	}
}
