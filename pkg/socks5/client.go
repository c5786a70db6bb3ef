package socks5

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Connect is the client's side of the handshake on c, a connection to a
// SOCKS5 server: it offers no authentication and asks to CONNECT to
// target, "ip:port" or "host:port" (an IP is sent as an address, anything
// else as a host name). A reply other than Succeeded is a *ReplyError.
// Deadlines are the caller's: set one on c to bound the handshake.
func Connect(c net.Conn, target string) error {
	req, err := connectRequest(target)
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte{Version, 1, noAuth}); err != nil {
		return err
	}
	var b [4 + 255 + 2]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return err
	}
	if b[0] != Version || b[1] != noAuth {
		return fmt.Errorf("greeting answered %v", b[:2])
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	// The reply: version, code, reserved, then the bound address, which
	// is read and ignored.
	if _, err := io.ReadFull(c, b[:4]); err != nil {
		return err
	}
	if b[0] != Version {
		return fmt.Errorf("reply version %d", b[0])
	}
	code := b[1]
	var n int
	switch b[3] {
	case addrIPv4:
		n = 4
	case addrIPv6:
		n = 16
	case addrDomain:
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			return err
		}
		n = int(b[0])
	default:
		return fmt.Errorf("reply address type %d", b[3])
	}
	if _, err := io.ReadFull(c, b[:n+2]); err != nil {
		return err
	}
	if code != Succeeded {
		return &ReplyError{Code: code}
	}
	return nil
}

// connectRequest encodes the CONNECT request for target.
func connectRequest(target string) ([]byte, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	req := []byte{Version, cmdConnect, 0}
	a, err := netip.ParseAddr(host)
	switch {
	case err == nil && a.Is4():
		req = append(append(req, addrIPv4), a.AsSlice()...)
	case err == nil && a.Zone() == "":
		req = append(append(req, addrIPv6), a.AsSlice()...)
	default: // a host name, or a scoped address, which only a name can carry
		if len(host) == 0 || len(host) > 255 {
			return nil, errors.New("socks5: host name must be 1 to 255 bytes")
		}
		req = append(append(req, addrDomain, byte(len(host))), host...)
	}
	return append(req, byte(port>>8), byte(port)), nil
}
