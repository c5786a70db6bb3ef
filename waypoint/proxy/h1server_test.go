package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// answer is one response as the client read it; Date is dropped.
type answer struct {
	Proto, Status string
	Header        http.Header
	Body          string
}

// script is what a client does on one connection to the waypoint: write
// parts (each its own write, so its own HBONE DATA frame), then read
// answers; after EOF it expects the connection closed.
type script struct {
	name  string
	steps []step
	want  []string // status lines of the answers, in order
	eof   bool     // the waypoint closes the connection after the answers
}

type step struct {
	write   string
	answers int // answers to read after the write
}

func req(method, target, header, body string) string {
	return method + " " + target + " HTTP/1.1\r\nHost: " + echoHost + "\r\n" + header + "\r\n" + body
}

// h1Scripts are the boundaries of serveH1: what it serves, what it hands
// to net/http (with the bytes read so far) and what net/http refuses.
var h1Scripts = []script{
	{name: "pipelined requests in one write",
		steps: []step{{write: req("POST", echoBodyPath, "Content-Length: 3\r\n", "one") + req("GET", echoBodyPath, "", "") + req("POST", echoBodyPath, "Content-Length: 5\r\n", "three"), answers: 3}},
		want:  []string{"200 OK", "200 OK", "200 OK"}},
	{name: "request split across reads",
		steps: []step{{write: "POST " + echoBodyPath + " HT"}, {write: "TP/1.1\r\nHost: " + echoHost + "\r"}, {write: "\nContent-Length: 6\r\n\r\nab"}, {write: "cdef", answers: 1}},
		want:  []string{"200 OK"}},
	{name: "bare LF line ends",
		steps: []step{{write: "GET " + echoBodyPath + " HTTP/1.1\nHost: " + echoHost + "\n\n", answers: 1}},
		want:  []string{"200 OK"}},
	{name: "Expect: 100-continue goes to net/http",
		steps: []step{{write: req("POST", echoBodyPath, "Content-Length: 4\r\nExpect: 100-continue\r\n", ""), answers: 1}, {write: "body", answers: 2}},
		// The endpoint's own 100 Continue is relayed too (as before serveH1).
		want: []string{"100 Continue", "100 Continue", "200 OK"}},
	{name: "a fast request, then a chunked one for net/http",
		steps: []step{{write: req("GET", echoBodyPath, "", "") + req("POST", echoBodyPath, "Transfer-Encoding: chunked\r\n", "4\r\nbody\r\n0\r\n\r\n"), answers: 2}},
		want:  []string{"200 OK", "200 OK"}},
	{name: "Connection: keep-alive",
		steps: []step{{write: req("POST", echoBodyPath, "Content-Length: 2\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n", "hi") + req("GET", echoBodyPath, "", ""), answers: 2}},
		want:  []string{"200 OK", "200 OK"}},
	{name: "Connection naming a header",
		steps: []step{{write: req("GET", echoBodyPath, "Connection: X-Hop\r\nX-Hop: 1\r\n", "") + req("GET", echoBodyPath, "", ""), answers: 2}},
		want:  []string{"200 OK", "200 OK"}},
	{name: "Connection: close",
		steps: []step{{write: req("POST", echoBodyPath, "Content-Length: 2\r\nConnection: close\r\n", "hi"), answers: 1}},
		want:  []string{"200 OK"}, eof: true},
	{name: "HTTP/1.0",
		steps: []step{{write: "POST " + echoBodyPath + " HTTP/1.0\r\nHost: " + echoHost + "\r\nContent-Length: 2\r\n\r\nhi", answers: 1}},
		want:  []string{"200 OK"}, eof: true},
	{name: "a body larger than the fast path's",
		steps: []step{{write: req("POST", echoBodyPath, "Content-Length: 20000\r\n", strings.Repeat("b", 20000)), answers: 1}},
		want:  []string{"200 OK"}},
	{name: "a request line longer than the fast path's buffer",
		steps: []step{{write: req("GET", echoBodyPath+"?q="+strings.Repeat("a", 6000), "", ""), answers: 1}},
		want:  []string{"200 OK"}},
	{name: "headers too large: 431",
		steps: []step{{write: req("GET", echoBodyPath, "X-Big: "+strings.Repeat("h", 1<<20+8192)+"\r\n", ""), answers: 1}},
		want:  []string{"431 Request Header Fields Too Large"}, eof: true},
	{name: "malformed header: 400",
		steps: []step{{write: req("GET", echoBodyPath, "Bad Header\r\n", ""), answers: 1}},
		want:  []string{"400 Bad Request"}, eof: true},
	{name: "control byte in a value: 400",
		steps: []step{{write: req("GET", echoBodyPath, "X-Bad: a\x01b\r\n", ""), answers: 1}},
		want:  []string{"400 Bad Request"}, eof: true},
	{name: "no Host: 400",
		steps: []step{{write: "GET " + echoBodyPath + " HTTP/1.1\r\n\r\n", answers: 1}},
		want:  []string{"400 Bad Request: missing required Host header"}, eof: true},
	{name: "two Hosts: 400",
		steps: []step{{write: req("GET", echoBodyPath, "Host: other\r\n", ""), answers: 1}},
		want:  []string{"400 Bad Request"}, eof: true},
	{name: "invalid path: 400 from the waypoint, connection kept",
		steps: []step{{write: req("GET", "/a%00b", "", "") + req("GET", echoBodyPath, "", ""), answers: 2}},
		want:  []string{"400 Bad Request", "200 OK"}},
	{name: "unsupported version: 505",
		steps: []step{{write: "GET / HTTP/3.0\r\nHost: " + echoHost + "\r\n\r\n", answers: 1}},
		want:  []string{"505 HTTP Version Not Supported: unsupported protocol version"}, eof: true},
	{name: "HEAD",
		steps: []step{{write: req("HEAD", echoBodyPath, "", "") + req("GET", echoBodyPath, "", ""), answers: 2}},
		want:  []string{"200 OK", "200 OK"}},
}

// TestH1ServerAsNetHTTP runs h1Scripts against the waypoint with serveH1
// and with net/http's server alone: serveH1(script) = net/http(script), the
// answers (status, headers but Date, body) and whether the connection is
// closed, and both are the answers wanted.
func TestH1ServerAsNetHTTP(t *testing.T) {
	run := func(fast bool) map[string][]answer {
		useH1Server = fast
		defer func() { useH1Server = true }()
		m := newMesh(t)
		out := map[string][]answer{}
		for _, s := range h1Scripts {
			out[s.name] = runScript(t, m, s)
		}
		return out
	}
	viaNetHTTP := run(false)
	viaH1 := run(true)
	for _, s := range h1Scripts {
		if diff := cmp.Diff(viaNetHTTP[s.name], viaH1[s.name]); diff != "" {
			t.Errorf("%s: serveH1 differs from net/http (-net/http +serveH1):\n%s", s.name, diff)
		}
		var got []string
		for _, a := range viaH1[s.name] {
			got = append(got, a.Status)
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: answers mismatch (-want +got):\n%s", s.name, diff)
		}
	}
	if b := viaH1["pipelined requests in one write"]; len(b) == 3 && (b[0].Body != "one" || b[2].Body != "three") {
		t.Errorf("pipelined answers = %q, %q, want the bodies echoed", b[0].Body, b[2].Body)
	}
	if b := viaH1["request split across reads"]; len(b) == 1 && b[0].Body != "abcdef" {
		t.Errorf("split request's answer = %q, want abcdef", b[0].Body)
	}
}

// runScript plays s on a new connection and returns the answers read; a
// last answer with Status "EOF" says the connection was closed after them.
func runScript(t *testing.T, m *mesh, s script) []answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portHTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var out []answer
	for _, st := range s.steps {
		if len(st.write) > 16<<10 {
			go io.WriteString(c, st.write) // may wait for the answer to be read
		} else if _, err := io.WriteString(c, st.write); err != nil {
			t.Fatalf("%s: write: %v", s.name, err)
		}
		for range st.answers {
			method := http.MethodGet
			if s.name == "HEAD" && len(out) == 0 {
				method = http.MethodHead
			}
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Errorf("%s: read answer %d: %v", s.name, len(out)+1, err)
				return out
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Header.Del("Date")
			out = append(out, answer{Proto: resp.Proto, Status: resp.Status, Header: resp.Header, Body: string(b)})
		}
	}
	if s.eof {
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: after the answers read %v, want EOF (connection closed)", s.name, err)
		}
	}
	return out
}

// TestDrainClosesIdleH1Connection: a connection served by serveH1 and
// waiting for its next request is closed when the proxy drains, as
// net/http's Shutdown closes its idle ones, rather than held until the
// drain's deadline.
func TestDrainClosesIdleH1Connection(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portHTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req("GET", echoBodyPath, "", ""))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	m.proxy.Drain(ctx)
	if ctx.Err() != nil {
		t.Errorf("Drain ran until its deadline, want it to close the idle connection at once")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Errorf("idle connection still open after Drain")
	}
}

// TestH1IdleTimeout: a connection served by serveH1 is closed once it has
// carried no request for IdleTimeout, also when that is shorter than the
// header timeout armed for its first request, and kept while requests
// come.
func TestH1IdleTimeout(t *testing.T) {
	m := newMesh(t)
	m.proxy.cfg.IdleTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portHTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 3 {
		io.WriteString(c, req("GET", echoBodyPath, "", ""))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	start := time.Now()
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read %v, want EOF", err)
	}
	if idle := time.Since(start); idle < 250*time.Millisecond {
		t.Errorf("connection closed after %v idle, want the idle timeout (300ms)", idle)
	}
}

// FuzzH1Head feeds bytes to the fast path's head reader and parser. A head
// it accepts must parse to the same request with http.ReadRequest over the
// whole input, end with its first empty line, and have a Host and no
// control byte in a value.
func FuzzH1Head(f *testing.F) {
	f.Add([]byte("GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: h:80\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("GET / HTTP/1.1\nHost: h\n\n"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), h1ReadBuffer)
		n, err := headEnd(br)
		if err != nil || n < 0 {
			return
		}
		head, _ := br.Peek(n)
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("head %q does not end with an empty line", head)
		}
		if i := bytes.Index(head, []byte("\n\n")); i >= 0 && i+2 < n {
			t.Fatalf("head %q goes past its first empty line", head)
		}
		if i := bytes.Index(head, []byte("\n\r\n")); i >= 0 && i+3 < n {
			t.Fatalf("head %q goes past its first empty line", head)
		}
		r := parseHead(head)
		if r == nil {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatalf("parseHead accepted %q, http.ReadRequest refuses the input: %v", head, err)
		}
		if r.Method != want.Method || r.RequestURI != want.RequestURI || r.Host != want.Host || !cmp.Equal(r.Header, want.Header) {
			t.Fatalf("parseHead(%q) = %s %s %s %v, want %s %s %s %v", head, r.Method, r.RequestURI, r.Host, r.Header, want.Method, want.RequestURI, want.Host, want.Header)
		}
		if r.Host == "" {
			t.Fatalf("parseHead accepted %q without Host", head)
		}
		for _, vv := range r.Header {
			for _, v := range vv {
				if !plainFieldValue(v) {
					t.Fatalf("parseHead accepted a control byte in %q", v)
				}
			}
		}
	})
}

var _ net.Conn = (*prefixConn)(nil)
