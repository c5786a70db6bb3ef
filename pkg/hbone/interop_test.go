package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// Interop with x/net/http2, the other HTTP/2 implementation of Go, in
// both directions: its Transport against our Server, our Pool against
// its Server. Each direction echoes data, half-closes, moves a large
// transfer and runs many streams at once over mesh mTLS on loopback.

// interopPayload is the size of the large transfers: several stream
// windows (4 MiB), so flow control is exercised both ways.
const interopPayload = 12 << 20

// xnetClient is an x/net http2.ClientConn to e's server with a mesh
// client certificate.
func xnetClient(t *testing.T, e *confEnv) *http2.ClientConn {
	t.Helper()
	cfg, err := e.ca.PoolTLS(t, nil)(context.Background(), e.ca.ID("/ns/a/sa/client"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Timeout: confTimeout}
	tc, err := tls.DialWithDialer(&d, "tcp", e.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		tc.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// xnetConnect sends a CONNECT through cc; the returned writer is the
// request body (closing it half-closes the stream).
func xnetConnect(t *testing.T, cc *http2.ClientConn, authority string) (*http.Response, *io.PipeWriter) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctxTimeout(t), http.MethodConnect, "", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = authority
	req.URL.Host = authority
	resp, err := cc.RoundTrip(req)
	if err != nil {
		pw.Close()
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	t.Cleanup(func() {
		pw.Close()
		resp.Body.Close()
	})
	return resp, pw
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*confTimeout)
	t.Cleanup(cancel)
	return ctx
}

// sendAndCheck writes n seeded bytes to w from a goroutine (then calls
// done), reads everything from r and checks it is the same bytes.
func sendAndCheck(t *testing.T, w io.Writer, done func() error, r io.Reader, n int64) {
	t.Helper()
	werr := make(chan error, 1)
	want := sha256.New()
	go func() {
		_, err := io.Copy(w, io.TeeReader(seededBytes(n), want))
		if err == nil {
			err = done()
		}
		werr <- err
	}()
	got := sha256.New()
	m, err := io.Copy(got, r)
	if err != nil {
		t.Fatalf("reading the echo: %v after %d bytes", err, m)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if m != n || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("echo = %d bytes (sha256 %x), want %d bytes (sha256 %x)", m, got.Sum(nil), n, want.Sum(nil))
	}
}

// seededBytes is n bytes of a fixed pattern that does not repeat at
// frame or window boundaries.
func seededBytes(n int64) io.Reader {
	return io.LimitReader(&counterReader{}, n)
}

type counterReader struct{ i uint64 }

func (r *counterReader) Read(p []byte) (int, error) {
	for k := range p {
		r.i++
		p[k] = byte(r.i*2654435761>>13) ^ byte(r.i)
	}
	return len(p), nil
}

// TestInteropXNetTransport: x/net's http2.Transport, the HTTP/2 client
// of net/http, tunnels through our Server.
func TestInteropXNetTransport(t *testing.T) {
	var mu sync.Mutex
	var authorities []netip.AddrPort
	e := confServer(t, HandlerFunc(func(_ context.Context, req *Request, tun *Tunnel) {
		mu.Lock()
		authorities = append(authorities, req.Authority)
		mu.Unlock()
		if req.Authority.Port() == 403 {
			tun.Reject(http.StatusForbidden, "port 403")
			return
		}
		echoHandler().ServeHBONE(context.Background(), req, tun)
	}))
	cc := xnetClient(t, e)

	t.Run("echo and half-close", func(t *testing.T) {
		resp, pw := xnetConnect(t, cc, "10.0.0.1:80")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT status = %d, want 200", resp.StatusCode)
		}
		for _, msg := range []string{"hello", "hbone"} {
			if _, err := io.WriteString(pw, msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != msg {
				t.Fatalf("echo = %q, %v; want %q", got, err, msg)
			}
		}
		// END_STREAM from x/net: our handler sees EOF, half-closes,
		// and x/net reads EOF.
		pw.Close()
		if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
			t.Errorf("after the half-close: ReadAll = %q, %v; want EOF", rest, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		resp, _ := xnetConnect(t, cc, "10.0.0.1:403")
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get(ReasonHeader) != "port 403" {
			t.Errorf("CONNECT = %d %q, want 403 %q", resp.StatusCode, resp.Header.Get(ReasonHeader), "port 403")
		}
	})
	t.Run("large transfer", func(t *testing.T) {
		resp, pw := xnetConnect(t, cc, "10.0.0.1:80")
		sendAndCheck(t, pw, pw.Close, resp.Body, interopPayload)
	})
	t.Run("many streams", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 150)
		for i := range 150 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pr, pw := io.Pipe()
				req, _ := http.NewRequestWithContext(ctxTimeout(t), http.MethodConnect, "", pr)
				req.Host = fmt.Sprintf("10.0.0.%d:80", i%250+1)
				req.URL.Host = req.Host
				resp, err := cc.RoundTrip(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				msg := fmt.Sprintf("stream %d", i)
				go func() {
					io.WriteString(pw, msg)
					pw.Close()
				}()
				got, err := io.ReadAll(resp.Body)
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("stream %d: echo = %q, %v", i, got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if want := netip.MustParseAddrPort("10.0.0.1:80"); len(authorities) == 0 || authorities[0] != want {
		t.Errorf("first Request.Authority = %v, want %v", authorities, want)
	}
}

// xnetServer runs x/net's http2.Server with h on a loopback mTLS
// listener; it returns the address and the server's SPIFFE ID.
func xnetServer(t *testing.T, ca *identitytest.CA, h http.Handler) (netip.AddrPort, spiffeid.ID) {
	t.Helper()
	id := ca.ID("/ns/b/sa/xnet")
	cfg := ca.ServerTLS(t, id)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http2.Server{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(confTimeout))
				if err := tc.Handshake(); err != nil {
					tc.Close()
					return
				}
				tc.SetDeadline(time.Time{})
				srv.ServeConn(tc, &http2.ServeConnOpts{Handler: h})
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).AddrPort(), id
}

// xnetEcho is a CONNECT handler for x/net's Server: 200, then it echoes
// the request body, flushing each read, until the client half-closes;
// returning ends the stream (END_STREAM). Authority port 403 is refused.
func xnetEcho(seen chan<- *http.Request) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen <- r
		}
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		if _, port, _ := net.SplitHostPort(r.Host); port == "403" {
			w.Header().Set(ReasonHeader, "port 403")
			w.WriteHeader(http.StatusForbidden)
			return
		}
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		if err := rc.Flush(); err != nil {
			return
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if rc.Flush() != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

// TestInteropXNetServer: our Pool tunnels through x/net's http2.Server.
func TestInteropXNetServer(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	seen := make(chan *http.Request, 1000)
	addr, serverID := xnetServer(t, ca, xnetEcho(seen))
	clientID := ca.ID("/ns/a/sa/client")
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	t.Cleanup(func() { pool.Close() })
	target := func(authority string) Target {
		return Target{
			Addr: addr, Authority: authority, SourceID: clientID, DestIDs: []spiffeid.ID{serverID},
			Header: http.Header{"Forwarded": {`for="127.0.0.9:4242"`}},
		}
	}
	dial := func(t *testing.T, authority string) *Conn {
		t.Helper()
		c, err := pool.Dial(ctxTimeout(t), target(authority))
		if err != nil {
			t.Fatalf("Dial(%s) error = %v", authority, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("echo and half-close", func(t *testing.T) {
		c := dial(t, "10.0.0.1:80")
		r := <-seen
		if r.Method != http.MethodConnect || r.Host != "10.0.0.1:80" || r.Header.Get("Forwarded") != `for="127.0.0.9:4242"` {
			t.Errorf("x/net saw %s %q forwarded %q, want CONNECT %q forwarded %q", r.Method, r.Host, r.Header.Get("Forwarded"), "10.0.0.1:80", `for="127.0.0.9:4242"`)
		}
		c.SetDeadline(time.Now().Add(confTimeout))
		for _, msg := range []string{"hello", "hbone"} {
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				t.Fatalf("echo = %q, %v; want %q", got, err, msg)
			}
		}
		// Our END_STREAM ends x/net's request body; its handler
		// returns and its END_STREAM is our EOF.
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Errorf("after the half-close: ReadAll = %q, %v; want EOF", rest, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		c, err := pool.Dial(ctxTimeout(t), target("10.0.0.1:403"))
		<-seen
		var se *StatusError
		if !errors.As(err, &se) || se.Code != http.StatusForbidden || se.Reason != "port 403" {
			if c != nil {
				c.Close()
			}
			t.Errorf("Dial() = %v, want StatusError 403 %q", err, "port 403")
		}
	})
	t.Run("large transfer", func(t *testing.T) {
		c := dial(t, "10.0.0.1:80")
		<-seen
		c.SetDeadline(time.Now().Add(4 * confTimeout))
		sendAndCheck(t, c, c.CloseWrite, c, interopPayload)
	})
	t.Run("many streams", func(t *testing.T) {
		// More than MaxStreamsPerConn (100): the pool opens a second
		// connection to x/net's server.
		const n = 150
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := pool.Dial(ctxTimeout(t), target(fmt.Sprintf("10.0.0.%d:80", i%250+1)))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * confTimeout))
				msg := fmt.Sprintf("stream %d", i)
				io.WriteString(c, msg)
				c.CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("stream %d: echo = %q, %v", i, got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for range n {
			<-seen
		}
		for err := range errs {
			t.Error(err)
		}
	})
}
