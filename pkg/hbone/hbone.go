// Package hbone implements HBONE, Istio ambient's tunnel: HTTP/2 CONNECT
// streams over mutual TLS to port 15008.
//
// The client side is a [Pool] of HTTP/2 connections keyed by source
// identity, destination identities, destination address and source address;
// [Pool.Dial] opens one CONNECT stream and returns it as a [Conn] once the
// server answered 200.
//
// Both sides share one small CONNECT-only HTTP/2 core built on the
// x/net/http2 Framer and hpack (h2conn.go, with stream.go and flow.go;
// clientconn.go and serverconn.go hold what differs): the stock
// http2.Server ends a stream when its handler returns and so cannot
// half-close towards the client while still reading from it, and the stock
// client costs a goroutine, an io.Pipe and a WINDOW_UPDATE per 4 KiB per
// stream. Conns write DATA frames directly, writes of concurrent streams
// share a flush, and window updates are batched. A [Handler] sees each CONNECT as a [Request] and
// answers it through its [Tunnel]: Accept (200, after the upstream dial
// succeeded) or Reject.
//
// [Relay] copies bytes both ways between two connections with half-close.
package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambient-go/mesh/pkg/hbone/internal/answer"
)

// Port is the HBONE port.
const Port = 15008

// ReasonHeader is the response header that carries the reason of a non-200
// answer, for debugging. HBONE responses never have a body.
const ReasonHeader = "x-hbone-reason"

// Sizes used on both sides of the tunnel.
const (
	streamWindow = 4 << 20  // HTTP/2 receive window per stream
	connWindow   = 16 << 20 // HTTP/2 receive window per connection
	maxFrameSize = 1 << 20  // SETTINGS_MAX_FRAME_SIZE we accept
)

// ErrServerClosed is returned by [Server.Serve] after [Server.Shutdown] or
// [Server.Close]. It matches net.ErrClosed with errors.Is.
var ErrServerClosed = fmt.Errorf("hbone: server closed: %w", net.ErrClosed)

// ErrPoolClosed is returned by [Pool.Dial] after [Pool.Close].
var ErrPoolClosed = errors.New("hbone: pool closed")

// Request is an accepted CONNECT as the server sees it.
type Request struct {
	Authority  netip.AddrPort // parsed :authority
	Header     http.Header    // forwarded, baggage, traceparent (all optional)
	PeerID     spiffeid.ID    // client's SPIFFE ID from its certificate
	LocalAddr  netip.AddrPort // of the underlying TLS connection (the address the client dialed)
	RemoteAddr netip.AddrPort // of the underlying TLS connection
}

// ForwardedFor returns the address in the request's `forwarded: for=...`
// header (RFC 7239; quoted, unquoted and bracketed IPv6 forms). ok is false
// if the header is absent, has no for= element, or it is not an ip:port.
func (r *Request) ForwardedFor() (netip.AddrPort, bool) {
	for _, line := range r.Header.Values("Forwarded") {
		// Only the first hop (element) matters: the client's own address.
		for _, elem := range strings.Split(line, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if !ok || !strings.EqualFold(strings.TrimSpace(k), "for") {
					continue
				}
				return parseForNode(strings.TrimSpace(v))
			}
		}
	}
	return netip.AddrPort{}, false
}

// parseForNode parses an RFC 7239 node: `"ip:port"`, `"[v6]:port"`, `ip:port`.
func parseForNode(v string) (netip.AddrPort, bool) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// StatusError is returned by [Pool.Dial] when the server answered the CONNECT
// with a status other than 200.
type StatusError struct {
	Code   int
	Reason string // the server's ReasonHeader, if any
}

func (e *StatusError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("hbone: CONNECT status %d", e.Code)
	}
	return fmt.Sprintf("hbone: CONNECT status %d: %s", e.Code, e.Reason)
}

// PeerIDFromState returns the SPIFFE ID of the peer's verified leaf
// certificate (its first URI SAN). It is the default [Server.PeerID].
func PeerIDFromState(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("hbone: peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("hbone: peer certificate: %w", err)
	}
	return id, nil
}

// addrPortOf converts a net.Addr of a TCP connection to a netip.AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// sanitizeReason makes reason safe as a header value and bounds its length.
func sanitizeReason(reason string) string { return answer.Reason(reason) }
