package proxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// exchange is what one request through the waypoint gives: the request as
// the application saw it and the answer as the client got it.
type exchange struct {
	App     appRequest
	Status  int
	Header  http.Header
	Body    string
	Trailer http.Header
}

// TestForwardAsReverseProxy sends the same raw HTTP/1.1 requests through
// the waypoint with forward (forward.go) on serveH1 (h1server.go), and
// with httputil.ReverseProxy on net/http's server, as before both;
// forward(req) = what the reverse proxy gives, for what the application
// receives (hop-by-hop headers removed, Forwarded dropped, X-Forwarded-*
// kept or appended, no User-Agent added, the body) and what the client
// gets (hop-by-hop answer headers removed, a streamed body, trailers).
func TestForwardAsReverseProxy(t *testing.T) {
	reqs := []struct {
		name, raw string
	}{
		{"GET with forwarding headers", "GET /trailers?a=1&b=2 HTTP/1.1\r\nHost: " + echoHost + "\r\n" +
			"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Host: outside\r\nX-Forwarded-Proto: https\r\n" +
			"Forwarded: for=1.2.3.4\r\nProxy-Authorization: secret\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"},
		{"POST with a body, no User-Agent", "POST /trailers HTTP/1.1\r\nHost: " + echoHost + "\r\nContent-Length: 5\r\n" +
			"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nhello"},
		{"Connection: keep-alive", "GET /trailers HTTP/1.1\r\nHost: " + echoHost + "\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n" +
			"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"},
		{"User-Agent and repeated headers", "PUT /trailers HTTP/1.1\r\nHost: " + echoHost + "\r\nUser-Agent: curl/8\r\nX-Multi: a\r\nX-Multi: b\r\n" +
			"Content-Length: 0\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"},
	}
	run := func(fast bool) []exchange {
		useForward, useH1Server = fast, fast
		defer func() { useForward, useH1Server = true, true }()
		m := newMesh(t)
		var out []exchange
		for _, rq := range reqs {
			out = append(out, rawExchange(t, m, rq.raw))
		}
		return out
	}
	viaProxy := run(false)
	viaForward := run(true)
	for i, rq := range reqs {
		if diff := cmp.Diff(viaProxy[i], viaForward[i]); diff != "" {
			t.Errorf("%s: forward differs from the reverse proxy (-proxy +forward):\n%s", rq.name, diff)
		}
	}
	// And what both do, for the first request.
	got := viaForward[0]
	if xff, want := got.App.Header.Get("X-Forwarded-For"), "203.0.113.7, 198.51.100.1, "+clientIP.String(); xff != want {
		t.Errorf("app X-Forwarded-For = %q, want %q", xff, want)
	}
	for _, h := range []string{"Forwarded", "Proxy-Authorization", "User-Agent"} {
		if v, ok := got.App.Header[h]; ok {
			t.Errorf("app got %s: %q, want it removed", h, v)
		}
	}
	if got.Header.Get("X-Hop") != "" || got.Header.Get("Keep-Alive") != "" || got.Header.Get("X-Kept") != "1" {
		t.Errorf("answer headers = %v, want X-Kept and no hop-by-hop ones", got.Header)
	}
	if got.Body != "part one,part two" || got.Trailer.Get("X-Sum") != "42" || got.Trailer.Get("X-Late") != "late" {
		t.Errorf("answer body %q trailers %v, want both parts and X-Sum, X-Late", got.Body, got.Trailer)
	}
}

// rawExchange writes raw on a new tunnel to the echo service through the
// waypoint and reads the answer.
func rawExchange(t *testing.T, m *mesh, raw string) exchange {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portHTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer body: %v", err)
	}
	resp.Header.Del("Date")
	app := recv(t, m.appRequests, "request at the app")
	app.Header.Del("Traceparent") // passed through in both
	app.RemoteAddr = ""           // the upstream connection's port
	return exchange{App: app, Status: resp.StatusCode, Header: resp.Header, Body: string(b), Trailer: resp.Trailer}
}
