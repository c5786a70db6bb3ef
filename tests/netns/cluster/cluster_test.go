package cluster

import (
	"context"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/ztunnel/zds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRuntime plays the runtime for pods of a namespace outside the mesh:
// the CNI plugin hands them to ztunnel (records appear and go), and their
// traffic flows directly.
func TestRuntime(t *testing.T) {
	c := New(t, Options{})
	c.Namespace("plain", nil)
	a, err := c.Node(1).AddPod(PodSpec{Namespace: "plain", Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Node(2).AddPod(PodSpec{Namespace: "plain", Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		recs, err := zds.Records(n.PodStateDir)
		if err != nil || len(recs) != 1 {
			t.Errorf("%s: records = %v, %v; want one", n.Name, recs, err)
		}
	}

	l, err := b.Listen("tcp", netip.AddrPortFrom(b.IP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		s, err := l.Accept()
		if err != nil {
			return
		}
		s.Write([]byte("hi"))
		s.Close()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(b.IP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(conn)
	conn.Close()
	if string(got) != "hi" {
		t.Errorf("read %q, want hi", got)
	}

	if n, err := c.Node(1).Ztunnel().Goroutines(ctx); err != nil || n == 0 {
		t.Errorf("Goroutines() = %d, %v", n, err)
	}
	if n, err := c.Node(1).Ztunnel().FDs(); err != nil || n == 0 {
		t.Errorf("FDs() = %d, %v", n, err)
	}

	if err := a.Delete(); err != nil {
		t.Fatal(err)
	}
	if recs, _ := zds.Records(c.Node(1).PodStateDir); len(recs) != 0 {
		t.Errorf("records after delete: %v", recs)
	}
	if _, err := os.Stat(a.Path()); err == nil {
		t.Errorf("netns %s left after delete", a.Path())
	}
}
