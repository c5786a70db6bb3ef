package zds

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Handler that records what it is given: for each added pod,
// the inode of the netns descriptor it received.
type recorder struct {
	mu     sync.Mutex
	added  map[string]uint64
	del    []string
	err    error
	block  chan struct{}
	called chan struct{}
}

func (r *recorder) AddPod(ctx context.Context, p Pod, netns *os.File) error {
	if r.called != nil {
		close(r.called)
	}
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(netns.Fd()), &st); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.added == nil {
		r.added = map[string]uint64{}
	}
	r.added[p.Key()] = st.Ino
	return r.err
}

func (r *recorder) DelPod(ctx context.Context, p Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.del = append(r.del, p.Key())
	return r.err
}

func startServer(t *testing.T, h Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "zds.sock")
	// A stale socket file from a previous run is removed.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{Socket: sock, Handler: h}
	l, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after Serve: %v", err)
		}
	})
	return sock
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestAddDelRoundTrip(t *testing.T) {
	r := &recorder{}
	c := &Client{Socket: startServer(t, r)}
	pod := Pod{UID: "u1", Name: "a", Namespace: "ns", IPs: []netip.Addr{netip.MustParseAddr("198.19.1.10")}, Netns: "/proc/self/ns/net"}
	if err := c.Add(context.Background(), pod); err != nil {
		t.Fatalf("Add = %v, want nil", err)
	}
	if err := c.Del(context.Background(), pod); err != nil {
		t.Fatalf("Del = %v, want nil", err)
	}
	// The descriptor ztunnel received is the pod's netns itself.
	if diff := cmp.Diff(map[string]uint64{"u1": inode(t, "/proc/self/ns/net")}, r.added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"u1"}, r.del); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	pod := Pod{UID: "u1", Name: "a", Namespace: "ns", Netns: "/proc/self/ns/net"}
	t.Run("handler error reaches the client", func(t *testing.T) {
		c := &Client{Socket: startServer(t, &recorder{err: errors.New("no capture for you")})}
		if err := c.Add(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "no capture for you") {
			t.Errorf("Add = %v, want the handler's error", err)
		}
		if err := c.Del(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "no capture for you") {
			t.Errorf("Del = %v, want the handler's error", err)
		}
	})
	t.Run("no ztunnel", func(t *testing.T) {
		c := &Client{Socket: filepath.Join(t.TempDir(), "none.sock")}
		if err := c.Del(context.Background(), pod); !errors.Is(err, ErrNoServer) {
			t.Errorf("Del = %v, want ErrNoServer", err)
		}
		if err := c.Add(context.Background(), pod); !errors.Is(err, ErrNoServer) {
			t.Errorf("Add = %v, want ErrNoServer", err)
		}
	})
	t.Run("netns that does not exist", func(t *testing.T) {
		c := &Client{Socket: startServer(t, &recorder{})}
		p := pod
		p.Netns = "/nonexistent/netns"
		if err := c.Add(context.Background(), p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Add = %v, want ErrNotExist", err)
		}
	})
	t.Run("client times out while ztunnel is stuck", func(t *testing.T) {
		r := &recorder{block: make(chan struct{}), called: make(chan struct{})}
		defer close(r.block)
		c := &Client{Socket: startServer(t, r), Timeout: 200 * time.Millisecond}
		if err := c.Add(context.Background(), pod); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Add = %v, want DeadlineExceeded", err)
		}
	})
}

func TestRegistry(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pods")
	if got, err := Records(dir); err != nil || got != nil {
		t.Fatalf("Records(missing dir) = %v, %v, want nil, nil", got, err)
	}
	a := Pod{UID: "b-uid", Name: "a", Namespace: "ns", IPs: []netip.Addr{netip.MustParseAddr("198.19.1.10")}, Netns: "/var/run/netns/a"}
	b := Pod{Name: "b", Namespace: "ns", Netns: "/var/run/netns/b"}
	for _, p := range []Pod{a, b, a} {
		if err := WriteRecord(dir, p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Records(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Pod{a, b}, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("Records (-want +got):\n%s", diff)
	}
	for _, p := range []Pod{a, a} {
		if err := RemoveRecord(dir, p); err != nil {
			t.Errorf("RemoveRecord(%s) = %v", p.Key(), err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = Records(dir)
	if err == nil {
		t.Errorf("Records with a broken record: err = nil, want an error")
	}
	if diff := cmp.Diff([]Pod{b}, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("Records (-want +got):\n%s", diff)
	}
}
