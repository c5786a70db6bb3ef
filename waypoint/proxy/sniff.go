package proxy

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// protocol is how the waypoint carries a stream.
type protocol uint8

const (
	protoUnknown protocol = iota // not declared: sniffed
	protoTCP                     // relayed as bytes
	protoHTTP                    // HTTP/1.1 or HTTP/2 (whatever the client speaks)
	protoHTTP2                   // HTTP/2 declared (http2, grpc, h2c): HTTP/2 upstream too
)

// servicePortProtocol returns the protocol svc declares for servicePort:
// the Workload API's app_protocol, which istiod-lite derives from the
// Service port's appProtocol or name as Istio does. UNKNOWN, and a port svc does not list, are sniffed.
func servicePortProtocol(svc *state.Service, servicePort uint16) protocol {
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() != uint32(servicePort) {
			continue
		}
		switch p.GetAppProtocol() {
		case workloadapi.AppProtocol_HTTP11:
			return protoHTTP
		case workloadapi.AppProtocol_HTTP2, workloadapi.AppProtocol_GRPC:
			return protoHTTP2
		case workloadapi.AppProtocol_TCP, workloadapi.AppProtocol_TLS:
			return protoTCP
		}
		return protoUnknown
	}
	return protoUnknown
}

// h2Preface is the client connection preface of HTTP/2 (RFC 9113 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniffSize bounds the bytes read before deciding: a request line longer
// than this, from a known method, is taken as HTTP.
const sniffSize = 8 << 10

// sniff reads the first bytes of c, for at most timeout, and tells whether
// they start HTTP/2 with prior knowledge or an HTTP/1.x request (protoHTTP)
// or anything else, silence included (protoTCP). The returned conn replays
// what was read.
func sniff(c net.Conn, timeout time.Duration) (net.Conn, protocol) {
	br := bufio.NewReaderSize(c, sniffSize)
	out := &peekedConn{Conn: c, r: br}
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	n := 1
	for {
		_, err := br.Peek(n)           // wait for one more byte than classified so far
		b, _ := br.Peek(br.Buffered()) // and classify all that came
		if p, done := classify(b, len(b) >= sniffSize); done {
			return out, p
		}
		if err != nil {
			return out, protoTCP // EOF or timeout before a decision
		}
		n = br.Buffered() + 1
	}
}

// maxMethod is the longest method a stream may start with to be taken as
// HTTP/1 (the registered ones are at most 17 bytes).
const maxMethod = 20

// classify decides from the first bytes b of a stream; done is false while
// more bytes could change the answer. full says no more bytes will come.
func classify(b []byte, full bool) (p protocol, done bool) {
	if len(b) == 0 {
		return protoTCP, full
	}
	// The HTTP/2 preface, or a prefix of it.
	if k := min(len(b), len(h2Preface)); string(b[:k]) == h2Preface[:k] {
		if k == len(h2Preface) {
			return protoHTTP, true
		}
		if !full {
			return protoUnknown, false
		}
	}
	// An HTTP/1.x request line: method SP target SP HTTP/1.x CRLF.
	sp := bytes.IndexByte(b, ' ')
	method := b
	if sp >= 0 {
		method = b[:sp]
	}
	for _, ch := range method {
		if !isTokenChar(ch) {
			return protoTCP, true
		}
	}
	if len(method) > maxMethod {
		return protoTCP, true // whether or not its space has arrived yet
	}
	if sp < 0 {
		if full {
			return protoTCP, true
		}
		return protoUnknown, false
	}
	if sp == 0 {
		return protoTCP, true
	}
	eol := bytes.IndexByte(b, '\n')
	if eol < 0 {
		if full {
			if knownMethod(string(method)) {
				return protoHTTP, true
			}
			return protoTCP, true
		}
		return protoUnknown, false
	}
	line := strings.TrimSuffix(string(b[:eol]), "\r")
	_, rest, _ := strings.Cut(line, " ")
	target, version, ok := strings.Cut(rest, " ")
	if ok && target != "" && (version == "HTTP/1.1" || version == "HTTP/1.0") {
		return protoHTTP, true
	}
	return protoTCP, true
}

// isTokenChar reports whether ch may appear in an HTTP method (RFC 9110
// token).
func isTokenChar(ch byte) bool {
	switch {
	case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0
}

func knownMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return true
	}
	return false
}

// peekedConn is a connection whose first bytes were read ahead into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the underlying stream, for Relay.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
