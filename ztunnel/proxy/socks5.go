package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// SOCKS5 (RFC 1928), the CONNECT command without authentication: just
// enough for local mode, where apps reach the mesh through the SOCKS5
// listener on their pod address instead of being captured.

const socksVersion = 5

// SOCKS5 reply codes.
const (
	socksSucceeded          = 0x00
	socksGeneralFailure     = 0x01
	socksNotAllowed         = 0x02
	socksHostUnreachable    = 0x04
	socksConnectionRefused  = 0x05
	socksCommandUnsupported = 0x07
	socksAddrUnsupported    = 0x08
)

// socksRequest is a parsed CONNECT: an IP address and port, or a host name
// (and then Addr holds only the port).
type socksRequest struct {
	Addr netip.AddrPort
	Host string
}

// readSOCKSRequest performs the greeting and reads the CONNECT request. It
// answers errors itself. The deadline bounds the whole handshake.
func readSOCKSRequest(c net.Conn, timeout time.Duration) (socksRequest, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})

	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return socksRequest{}, fmt.Errorf("socks5 greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return socksRequest{}, fmt.Errorf("socks5 greeting: version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return socksRequest{}, fmt.Errorf("socks5 greeting: %w", err)
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		_, _ = c.Write([]byte{socksVersion, 0xff})
		return socksRequest{}, errors.New("socks5 greeting: client does not offer no-auth")
	}
	if _, err := c.Write([]byte{socksVersion, 0}); err != nil {
		return socksRequest{}, fmt.Errorf("socks5 greeting: %w", err)
	}

	var req [4]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
	}
	if req[0] != socksVersion {
		return socksRequest{}, fmt.Errorf("socks5 request: version %d", req[0])
	}
	if req[1] != 1 { // CONNECT
		writeSOCKSReply(c, socksCommandUnsupported)
		return socksRequest{}, fmt.Errorf("socks5 request: command %d not supported", req[1])
	}
	var r socksRequest
	switch req[3] {
	case 1, 4: // IPv4, IPv6
		b := make([]byte, 4)
		if req[3] == 4 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		r.Addr = netip.AddrPortFrom(a.Unmap(), 0)
	case 3: // domain name
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		b := make([]byte, n[0])
		if _, err := io.ReadFull(c, b); err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		if a, err := netip.ParseAddr(string(b)); err == nil {
			r.Addr = netip.AddrPortFrom(a.Unmap(), 0)
		} else {
			r.Host = string(b)
		}
		if r.Host == "" && !r.Addr.Addr().IsValid() {
			writeSOCKSReply(c, socksAddrUnsupported)
			return socksRequest{}, errors.New("socks5 request: empty host")
		}
	default:
		writeSOCKSReply(c, socksAddrUnsupported)
		return socksRequest{}, fmt.Errorf("socks5 request: address type %d not supported", req[3])
	}
	var p [2]byte
	if _, err := io.ReadFull(c, p[:]); err != nil {
		return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
	}
	// For a host name, Addr carries only the port.
	r.Addr = netip.AddrPortFrom(r.Addr.Addr(), binary.BigEndian.Uint16(p[:]))
	return r, nil
}

// writeSOCKSReply answers the CONNECT; the bound address is reported as
// 0.0.0.0:0, which clients ignore.
func writeSOCKSReply(c net.Conn, code byte) error {
	_, err := c.Write([]byte{socksVersion, code, 0, 1, 0, 0, 0, 0, 0, 0})
	return err
}
