package proxy

import (
	"bytes"
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
// (and then Addr holds only the port). Early holds bytes the client sent
// after the request without waiting for the reply (normally none): they
// belong to the tunnelled stream.
type socksRequest struct {
	Addr  netip.AddrPort
	Host  string
	Early []byte
}

// socksReader reads the handshake through a buffer big enough for the
// longest greeting and request, so that a handshake costs one read per
// client message instead of one per field.
type socksReader struct {
	c    net.Conn
	buf  [2 + 255 + 4 + 1 + 255 + 2]byte
	r, w int
}

// next returns the next n bytes, reading what the client sent so far.
func (s *socksReader) next(n int) ([]byte, error) {
	for s.w-s.r < n {
		m, err := s.c.Read(s.buf[s.w:])
		s.w += m
		if s.w-s.r >= n {
			break
		}
		if err == io.EOF && s.w > s.r {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
	}
	b := s.buf[s.r : s.r+n]
	s.r += n
	return b, nil
}

// readSOCKSRequest performs the greeting and reads the CONNECT request. It
// answers errors itself. The deadline bounds the whole handshake.
func readSOCKSRequest(c net.Conn, timeout time.Duration) (socksRequest, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	s := &socksReader{c: c}

	hdr, err := s.next(2)
	if err != nil {
		return socksRequest{}, fmt.Errorf("socks5 greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return socksRequest{}, fmt.Errorf("socks5 greeting: version %d", hdr[0])
	}
	methods, err := s.next(int(hdr[1]))
	if err != nil {
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

	req, err := s.next(4)
	if err != nil {
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
		n := 4
		if req[3] == 4 {
			n = 16
		}
		b, err := s.next(n)
		if err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		r.Addr = netip.AddrPortFrom(a.Unmap(), 0)
	case 3: // domain name
		n, err := s.next(1)
		if err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		b, err := s.next(int(n[0]))
		if err != nil {
			return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
		}
		if a, err := netip.ParseAddr(string(b)); err == nil {
			if a.Zone() != "" {
				// A scoped address never matches a workload: it
				// would leave the mesh in plaintext.
				writeSOCKSReply(c, socksAddrUnsupported)
				return socksRequest{}, errors.New("socks5 request: scoped IPv6 address")
			}
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
	p, err := s.next(2)
	if err != nil {
		return socksRequest{}, fmt.Errorf("socks5 request: %w", err)
	}
	// For a host name, Addr carries only the port.
	r.Addr = netip.AddrPortFrom(r.Addr.Addr(), binary.BigEndian.Uint16(p))
	if s.w > s.r {
		r.Early = bytes.Clone(s.buf[s.r:s.w])
	}
	return r, nil
}

// earlyConn is a client connection whose first bytes were read during the
// SOCKS5 handshake: Read returns them first.
type earlyConn struct {
	net.Conn
	early []byte
}

func (c *earlyConn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the client connection.
func (c *earlyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// writeSOCKSReply answers the CONNECT; the bound address is reported as
// 0.0.0.0:0, which clients ignore.
func writeSOCKSReply(c net.Conn, code byte) error {
	_, err := c.Write([]byte{socksVersion, code, 0, 1, 0, 0, 0, 0, 0, 0})
	return err
}
