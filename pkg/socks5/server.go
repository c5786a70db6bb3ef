package socks5

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

// reader reads the handshake through a buffer big enough for the longest
// greeting and request, so that a handshake costs one read per client
// message instead of one per field.
type reader struct {
	c    net.Conn
	buf  [2 + 255 + 4 + 1 + 255 + 2]byte
	r, w int
}

// next returns the next n bytes, reading what the client sent so far.
func (s *reader) next(n int) ([]byte, error) {
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

// ReadRequest is the server's side of the handshake: it answers the
// greeting (accepting only no authentication) and reads the CONNECT
// request. It answers the errors it finds itself (a command other than
// CONNECT, an address type it does not know, an empty or scoped host); the
// caller answers the request with WriteReply. timeout bounds the whole
// handshake; the deadline is cleared on return.
func ReadRequest(c net.Conn, timeout time.Duration) (Request, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	s := &reader{c: c}

	hdr, err := s.next(2)
	if err != nil {
		return Request{}, fmt.Errorf("socks5 greeting: %w", err)
	}
	if hdr[0] != Version {
		return Request{}, fmt.Errorf("socks5 greeting: version %d", hdr[0])
	}
	methods, err := s.next(int(hdr[1]))
	if err != nil {
		return Request{}, fmt.Errorf("socks5 greeting: %w", err)
	}
	if bytes.IndexByte(methods, noAuth) < 0 {
		_, _ = c.Write([]byte{Version, noMethod})
		return Request{}, errors.New("socks5 greeting: client does not offer no-auth")
	}
	if _, err := c.Write([]byte{Version, noAuth}); err != nil {
		return Request{}, fmt.Errorf("socks5 greeting: %w", err)
	}

	req, err := s.next(4)
	if err != nil {
		return Request{}, fmt.Errorf("socks5 request: %w", err)
	}
	if req[0] != Version {
		return Request{}, fmt.Errorf("socks5 request: version %d", req[0])
	}
	if req[1] != cmdConnect {
		WriteReply(c, CommandNotSupported)
		return Request{}, fmt.Errorf("socks5 request: command %d not supported", req[1])
	}
	var r Request
	switch req[3] {
	case addrIPv4, addrIPv6:
		n := 4
		if req[3] == addrIPv6 {
			n = 16
		}
		b, err := s.next(n)
		if err != nil {
			return Request{}, fmt.Errorf("socks5 request: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		r.Addr = netip.AddrPortFrom(a.Unmap(), 0)
	case addrDomain:
		n, err := s.next(1)
		if err != nil {
			return Request{}, fmt.Errorf("socks5 request: %w", err)
		}
		b, err := s.next(int(n[0]))
		if err != nil {
			return Request{}, fmt.Errorf("socks5 request: %w", err)
		}
		if a, err := netip.ParseAddr(string(b)); err == nil {
			if a.Zone() != "" {
				// A scoped address never matches a workload: it
				// would leave the mesh in plaintext.
				WriteReply(c, AddressTypeNotSupported)
				return Request{}, errors.New("socks5 request: scoped IPv6 address")
			}
			r.Addr = netip.AddrPortFrom(a.Unmap(), 0)
		} else {
			r.Host = string(b)
		}
		if r.Host == "" && !r.Addr.Addr().IsValid() {
			WriteReply(c, AddressTypeNotSupported)
			return Request{}, errors.New("socks5 request: empty host")
		}
	default:
		WriteReply(c, AddressTypeNotSupported)
		return Request{}, fmt.Errorf("socks5 request: address type %d not supported", req[3])
	}
	p, err := s.next(2)
	if err != nil {
		return Request{}, fmt.Errorf("socks5 request: %w", err)
	}
	// For a host name, Addr carries only the port.
	r.Addr = netip.AddrPortFrom(r.Addr.Addr(), binary.BigEndian.Uint16(p))
	if s.w > s.r {
		r.Early = bytes.Clone(s.buf[s.r:s.w])
	}
	return r, nil
}

// WriteReply answers a CONNECT with code; the bound address is reported as
// 0.0.0.0:0, which clients ignore.
func WriteReply(w io.Writer, code byte) error {
	_, err := w.Write([]byte{Version, code, 0, addrIPv4, 0, 0, 0, 0, 0, 0})
	return err
}
