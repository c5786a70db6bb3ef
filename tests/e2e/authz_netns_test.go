package e2e

// L4 authorization in the network namespace topology (issue 5): the same
// policies as in local mode, enforced on transparently captured traffic,
// including plaintext from outside the mesh under PeerAuthentication.

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

const denyFooShop = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-foo
  namespace: shop
spec:
  selector:
    matchLabels:
      app: echo
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["foo"]
`

const strictShopNS = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: shop
spec:
  mtls:
    mode: STRICT
`

func TestAuthorizationInNetns(t *testing.T) {
	m := newCaptureMesh(t)
	m.Namespace("foo", ambient)
	intruder, err := m.Node(1).AddPod(cluster.PodSpec{Namespace: "foo", Name: "intruder"})
	if err != nil {
		t.Fatal(err)
	}
	m.Namespace("outside", nil) // not in the mesh: plaintext
	outsider, err := m.Node(1).AddPod(cluster.PodSpec{Namespace: "outside", Name: "outsider"})
	if err != nil {
		t.Fatal(err)
	}
	z1, z2 := m.Node(1).Ztunnel(), m.Node(2).Ztunnel()
	ctx := t.Context()
	for _, p := range []*cluster.Pod{m.client, intruder, outsider} {
		eventually(t, 10*time.Second, p.Key()+" reaches echo before any policy", func() error {
			_, err := p.Get(ctx, m.echoAddr(), "/")
			return err
		})
	}

	// An established connection from foo, idle, that the policy must end.
	idle, err := intruder.Dial(ctx, "tcp", m.echoAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	closed := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, idle)
		closed <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond) // let the tunnel be established and registered

	fromZ1, fromZ2 := z1.Mark(), z2.Mark()
	applied := time.Now()
	m.Write("deny-foo.yaml", denyFooShop)

	t.Run("established connection from foo closed", func(t *testing.T) {
		select {
		case at := <-closed:
			t.Logf("closed %s after the policy file was written", at.Sub(applied))
			if d := at.Sub(applied); d > time.Second {
				t.Errorf("closed %s after the policy was written, want within 1s", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the established connection from foo is still open 5s after the DENY policy")
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, _, err := z2.WaitLog(lctx, fromZ2, func(l cluster.Log) bool {
			return l.String("msg") == accesslog.Message && l.String(accesslog.KeySrcIdentity) == "spiffe://cluster.local/ns/foo/sa/intruder" &&
				l.String("error") == "connection closed due to policy change"
		}); err != nil {
			t.Errorf("node-2 logged no 'connection closed due to policy change' for foo: %v", err)
		}
	})

	t.Run("new connections from foo denied, others allowed", func(t *testing.T) {
		if _, err := intruder.Get(ctx, m.echoAddr(), "/denied"); err == nil {
			t.Error("foo's request went through a DENY policy")
		}
		got, err := m.client.Get(ctx, m.echoAddr(), "/allowed")
		if err != nil {
			t.Fatalf("shop's client is denied too: %v", err)
		}
		want(t, got, "echo-0", m.client.IP, "/allowed")
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		l, _, err := z2.WaitLog(lctx, fromZ2, func(l cluster.Log) bool {
			return l.String("msg") == accesslog.Message && l.String("response_flags") == "DENY" &&
				l.String(accesslog.KeySrcIdentity) == "spiffe://cluster.local/ns/foo/sa/intruder" && l.String("policy") == "shop/deny-foo"
		})
		if err != nil {
			t.Errorf("node-2 logged no DENY by shop/deny-foo for foo: %v", err)
		} else if l.String(accesslog.KeyDirection) != accesslog.Inbound {
			t.Errorf("DENY record direction %q, want inbound", l.String(accesslog.KeyDirection))
		}
		if _, _, err := z1.WaitLog(lctx, fromZ1, func(l cluster.Log) bool {
			return l.String("msg") == accesslog.Message && l.String(accesslog.KeyDirection) == accesslog.Outbound &&
				l.String("response_flags") == "DENY"
		}); err != nil {
			t.Errorf("node-1 (the client's ztunnel) logged no DENY: %v", err)
		}
	})

	t.Run("deleting the policy lets foo through again", func(t *testing.T) {
		m.Remove("deny-foo.yaml")
		eventually(t, 5*time.Second, "foo reaches echo after the policy is deleted", func() error {
			_, err := intruder.Get(ctx, m.echoAddr(), "/again")
			return err
		})
	})

	t.Run("STRICT mTLS refuses plaintext from outside the mesh", func(t *testing.T) {
		m.Write("strict.yaml", strictShopNS)
		defer m.Remove("strict.yaml")
		eventually(t, 5*time.Second, "plaintext refused under STRICT", func() error {
			if _, err := outsider.Get(ctx, m.echoAddr(), "/plain"); err == nil {
				return errors.New("plaintext request answered")
			}
			return nil
		})
		// Mesh clients still get through (they have a principal).
		if _, err := m.client.Get(ctx, m.echoAddr(), "/mtls"); err != nil {
			t.Errorf("mesh client refused under STRICT: %v", err)
		}
	})
}
