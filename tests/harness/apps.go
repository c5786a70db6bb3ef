package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Echo is a TCP application bound to a pod address. For each connection it
// first writes one line, "<name> <client address>\n", then echoes every
// byte back, and half-closes when the client does.
type Echo struct {
	Name string
	Addr netip.AddrPort
	l    net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartEcho runs an Echo on addr until the test ends.
func StartEcho(t testing.TB, name string, addr netip.AddrPort) *Echo {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("echo app %s: %v", name, err)
	}
	e := &Echo{Name: name, Addr: addr, l: l, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(e.Close)
	return e
}

func (e *Echo) serve() {
	defer e.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := e.l.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() {
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
				c.Close()
			}()
			fmt.Fprintf(c, "%s %s\n", e.Name, c.RemoteAddr())
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// Close stops the app and closes its connections.
func (e *Echo) Close() {
	e.l.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// Hello reads the first line an Echo sends: its name and the client
// address it saw.
func Hello(c net.Conn) (name string, client netip.AddrPort, r *bufio.Reader, err error) {
	r = bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", netip.AddrPort{}, r, fmt.Errorf("reading hello: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", netip.AddrPort{}, r, errors.New("bad hello line " + line)
	}
	client, err = netip.ParseAddrPort(f[1])
	return f[0], client, r, err
}

// EchoReply is what an HTTPEcho answers, as JSON: its name, what it
// received and the client address it saw.
type EchoReply struct {
	Name   string      `json:"name"`
	Method string      `json:"method"`
	Path   string      `json:"path"`
	Host   string      `json:"host"`
	Proto  string      `json:"proto"`
	Remote string      `json:"remote"` // the client address the app saw
	Header http.Header `json:"header"` // x-forwarded-for, baggage, traceparent...
}

// HTTPEcho is an HTTP application (HTTP/1.1 and h2c prior knowledge)
// bound to a pod address. It answers every request 200 with an EchoReply.
// A request carrying the header X-Echo-Close gets "Connection: close", so
// that the HTTP connection ends with that request.
type HTTPEcho struct {
	Name string
	Addr netip.AddrPort
	srv  *http.Server
	done chan struct{}
	n    atomic.Int64
}

// StartHTTPEcho runs an HTTPEcho on addr until the test ends.
func StartHTTPEcho(t testing.TB, name string, addr netip.AddrPort) *HTTPEcho {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("http echo app %s: %v", name, err)
	}
	e := &HTTPEcho{Name: name, Addr: addr, done: make(chan struct{})}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	e.srv = &http.Server{
		Handler:           http.HandlerFunc(e.serveHTTP),
		Protocols:         &protos,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(e.done)
		e.srv.Serve(l)
	}()
	t.Cleanup(e.Close)
	return e
}

func (e *HTTPEcho) serveHTTP(w http.ResponseWriter, r *http.Request) {
	e.n.Add(1)
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	if r.Header.Get("X-Echo-Close") != "" {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(EchoReply{
		Name: e.Name, Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host,
		Proto: r.Proto, Remote: r.RemoteAddr, Header: r.Header,
	})
}

// Requests is the number of requests the app has received.
func (e *HTTPEcho) Requests() int64 { return e.n.Load() }

// Close stops the app and closes its connections.
func (e *HTTPEcho) Close() {
	e.srv.Close()
	<-e.done
}

// HTTPClient is an HTTP client for the pod at src: every connection goes
// through src's ztunnel (Dial), one connection per request.
func HTTPClient(src netip.Addr) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return Dial(ctx, src, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

// GRPCHealth is a gRPC application bound to a pod address serving the
// standard health service (grpc.health.v1.Health), SERVING.
type GRPCHealth struct {
	Addr netip.AddrPort
	srv  *grpc.Server
	done chan struct{}
}

// StartGRPCHealth runs a GRPCHealth on addr until the test ends.
func StartGRPCHealth(t testing.TB, addr netip.AddrPort) *GRPCHealth {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("grpc app: %v", err)
	}
	g := &GRPCHealth{Addr: addr, srv: grpc.NewServer(), done: make(chan struct{})}
	healthpb.RegisterHealthServer(g.srv, health.NewServer())
	go func() {
		defer close(g.done)
		g.srv.Serve(l)
	}()
	t.Cleanup(func() {
		g.srv.Stop()
		<-g.done
	})
	return g
}
