package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// Get sends one HTTP/1.0 request from inside the pod over a plain socket,
// as an unmodified application does, and returns the body of a 200 answer.
func (p *Pod) Get(ctx context.Context, target netip.AddrPort, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, "tcp", target.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, target); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("answer %q", b)
	}
	return string(body), nil
}

// SeenRequest is one request an HTTPEcho served.
type SeenRequest struct {
	Remote netip.Addr // the client address the app saw
	XFF    string     // its X-Forwarded-For
}

// HTTPEcho is an HTTP server inside a pod that answers "<pod> <client
// address> <path>", closes every connection after its answer (so that each
// request is one connection, and one access log record, at every hop), and
// remembers who asked for each path.
type HTTPEcho struct {
	name string
	mu   sync.Mutex
	seen map[string][]SeenRequest
}

// StartHTTPEcho serves an HTTPEcho on the pod's port until the test ends.
func StartHTTPEcho(t testing.TB, p *Pod, port int) *HTTPEcho {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, uint16(port)).String())
	if err != nil {
		t.Fatalf("app in %s: %v", p.Key(), err)
	}
	a := &HTTPEcho{name: p.Spec.Name, seen: map[string][]SeenRequest{}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			remote, _ := netip.ParseAddrPort(r.RemoteAddr)
			a.mu.Lock()
			a.seen[r.URL.Path] = append(a.seen[r.URL.Path], SeenRequest{remote.Addr(), r.Header.Get("X-Forwarded-For")})
			a.mu.Unlock()
			w.Header().Set("Connection", "close")
			fmt.Fprintf(w, "%s %s %s", a.name, r.RemoteAddr, r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return a
}

// Requests returns the requests the app served for path.
func (a *HTTPEcho) Requests(path string) []SeenRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seen[path])
}
