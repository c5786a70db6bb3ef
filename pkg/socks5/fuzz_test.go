package socks5

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// fuzzConn is a client connection whose bytes come from the fuzzer: Read
// hands out at most chunk bytes at a time, then, once the input is used
// up, ends with io.EOF, or with the deadline error when hold is set (a
// client that stalls: the deadline fires). Read fails the test if no
// deadline is set, since the handshake must be bounded.
type fuzzConn struct {
	t        *testing.T
	in       []byte
	chunk    int
	hold     bool
	read     int // bytes handed out
	reads    int
	deadline time.Time
	set      []time.Time // every deadline set
	out      bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	c.reads++
	if c.reads > len(c.in)+c.read+4 {
		c.t.Fatalf("ReadRequest read %d times from %d bytes: it spins", c.reads, c.read+len(c.in))
	}
	if c.deadline.IsZero() {
		c.t.Fatal("ReadRequest reads without a deadline")
	}
	if len(c.in) == 0 {
		if c.hold {
			return 0, os.ErrDeadlineExceeded
		}
		return 0, io.EOF
	}
	n := copy(p, c.in[:min(c.chunk, len(c.in))])
	c.in = c.in[n:]
	c.read += n
	return n, nil
}

func (c *fuzzConn) Write(p []byte) (int, error)   { return c.out.Write(p) }
func (c *fuzzConn) Close() error                  { return nil }
func (c *fuzzConn) LocalAddr() net.Addr           { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr          { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }
func (c *fuzzConn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	c.set = append(c.set, t)
	return nil
}
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// errShort is refSOCKS's answer for an input that ends before the request
// does.
var errShort = errors.New("short")

// refSOCKS is a reference reading of a greeting and CONNECT request (RFC
// 1928, no authentication) from the whole input: the request, how many
// bytes it takes, and what the server answers before giving up or
// succeeding.
func refSOCKS(in []byte) (req Request, n int, reply []byte, err error) {
	bad := errors.New("invalid")
	if len(in) < 2 {
		return req, 0, nil, errShort
	}
	if in[0] != 5 {
		return req, 0, nil, bad
	}
	nm := int(in[1])
	if len(in) < 2+nm {
		return req, 0, nil, errShort
	}
	if bytes.IndexByte(in[2:2+nm], 0) < 0 {
		return req, 0, []byte{5, 0xff}, bad
	}
	reply = []byte{5, 0}
	in = in[2+nm:]
	n = 2 + nm
	if len(in) < 4 {
		return req, 0, reply, errShort
	}
	if in[0] != 5 {
		return req, 0, reply, bad
	}
	fail := func(code byte) (Request, int, []byte, error) {
		return Request{}, 0, append(reply, 5, code, 0, 1, 0, 0, 0, 0, 0, 0), bad
	}
	if in[1] != 1 {
		return fail(CommandNotSupported)
	}
	atyp := in[3]
	in, n = in[4:], n+4
	var alen int
	switch atyp {
	case 1:
		alen = 4
	case 4:
		alen = 16
	case 3:
		if len(in) < 1 {
			return req, 0, reply, errShort
		}
		alen = int(in[0])
		in, n = in[1:], n+1
	default:
		return fail(AddressTypeNotSupported)
	}
	if len(in) < alen {
		return req, 0, reply, errShort
	}
	var addr netip.Addr
	switch atyp {
	case 1:
		addr = netip.AddrFrom4([4]byte(in[:4]))
	case 4:
		addr = netip.AddrFrom16([16]byte(in[:16])).Unmap()
	case 3:
		name := string(in[:alen])
		if a, err := netip.ParseAddr(name); err == nil {
			if a.Zone() != "" {
				return fail(AddressTypeNotSupported)
			}
			addr = a.Unmap()
		} else if name == "" {
			return fail(AddressTypeNotSupported)
		} else {
			req.Host = name
		}
	}
	in, n = in[alen:], n+alen
	if len(in) < 2 {
		return Request{}, 0, reply, errShort
	}
	req.Addr = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(in))
	return req, n + 2, reply, nil
}

// FuzzSOCKSRequest feeds arbitrary bytes, read in chunks of any size and
// ending in EOF or a deadline, to ReadRequest as a client's greeting
// and request. Property: it sets a deadline before reading and clears it
// after, never spins, and agrees with refSOCKS: an input holding a valid
// request succeeds with the same target (an IP target valid, a host name
// non-empty, at most 255 bytes and not an IP literal), answers only the
// greeting, and returns as Early exactly the bytes read past the request;
// any other input fails with a zero request and the reply refSOCKS gives.
func FuzzSOCKSRequest(f *testing.F) {
	seeds := [][]byte{
		{5, 1, 0, 5, 1, 0, 1, 127, 1, 2, 3, 0x1f, 0x90},
		append(append([]byte{5, 1, 0, 5, 1, 0, 4}, netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()...), 0, 80),
		append(append([]byte{5, 1, 0, 5, 1, 0, 3, 4}, "echo"...), 0, 80),
		append(append([]byte{5, 1, 0, 5, 1, 0, 3, 8}, "10.0.0.1"...), 0, 80),
		append(append([]byte{5, 1, 0, 5, 1, 0, 3, 12}, "fe80::1%eth0"...), 0, 80),
		append(append([]byte{5, 2, 2, 0, 5, 1, 0, 3, 255}, strings.Repeat("a", 255)...), 0, 80, 'x'),
		{5, 1, 0, 5, 1, 0, 1, 127, 1, 2, 3, 0, 80, 'h', 'i'},
		{5, 1, 0, 5, 1, 0, 3, 0, 0, 80},
		{5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80},
		{5, 1, 0, 5, 1, 0, 9, 127, 0, 0, 1, 0, 80},
		{5, 1, 2},
		{5, 0},
		{4, 1, 0, 80, 127, 0, 0, 1, 0},
		{5, 1, 0, 5, 1, 0, 1, 127},
		append(append([]byte{5, 255}, make([]byte, 255)...), 5, 1, 0, 1, 1, 2, 3, 4, 0, 80),
	}
	for i, s := range seeds {
		f.Add(s, uint16(len(s)), i%2 == 0)
		f.Add(s, uint16(1), i%2 == 1)
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint16, hold bool) {
		if len(in) > 4096 {
			return
		}
		c := &fuzzConn{t: t, in: in, chunk: max(int(chunk), 1), hold: hold}
		const timeout = time.Minute
		start := time.Now()
		got, err := ReadRequest(c, timeout)
		if d := time.Since(start); d > time.Second {
			t.Errorf("ReadRequest took %v", d)
		}
		if !c.deadline.IsZero() {
			t.Errorf("ReadRequest left the deadline at %v", c.deadline)
		}
		if len(c.set) == 0 || c.set[0].Before(start.Add(timeout)) || c.set[0].After(time.Now().Add(timeout)) {
			t.Errorf("ReadRequest set the deadlines %v, want the first the handshake timeout (%v) after the start (%v)", c.set, timeout, start)
		}

		want, n, reply, werr := refSOCKS(in)
		if !bytes.Equal(c.out.Bytes(), reply) {
			t.Errorf("ReadRequest(%x) wrote %x, want %x", in, c.out.Bytes(), reply)
		}
		if werr != nil {
			if err == nil {
				t.Fatalf("ReadRequest(%x) = %v %q, want error (%v)", in, got.Addr, got.Host, werr)
			}
			if got.Addr.IsValid() || got.Host != "" || got.Early != nil {
				t.Errorf("ReadRequest(%x) failed (%v) with a half-filled request %v %q %x", in, err, got.Addr, got.Host, got.Early)
			}
			return
		}
		if err != nil {
			t.Fatalf("ReadRequest(%x) error = %v, want %v %q", in, err, want.Addr, want.Host)
		}
		if got.Addr != want.Addr || got.Host != want.Host {
			t.Errorf("ReadRequest(%x) = %v %q, want %v %q", in, got.Addr, got.Host, want.Addr, want.Host)
		}
		if got.Host == "" && !got.Addr.Addr().IsValid() {
			t.Errorf("ReadRequest(%x) = %v with no host: no target", in, got.Addr)
		}
		if got.Host != "" {
			if got.Addr.Addr().IsValid() || len(got.Host) > 255 {
				t.Errorf("ReadRequest(%x) = host %q (%d bytes) with address %v", in, got.Host, len(got.Host), got.Addr)
			}
			if _, err := netip.ParseAddr(got.Host); err == nil {
				t.Errorf("ReadRequest(%x) = host %q, an IP literal", in, got.Host)
			}
		}
		if early := in[n:c.read]; !bytes.Equal(got.Early, early) || (len(early) == 0) != (got.Early == nil) {
			t.Errorf("ReadRequest(%x) early = %x, want the %d bytes read past the request %x", in, got.Early, len(early), early)
		}
	})
}
