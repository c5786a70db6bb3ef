// Package socks5 is the part of SOCKS5 (RFC 1928) the mesh speaks: the
// CONNECT command without authentication. In local mode an application
// reaches the mesh through the SOCKS5 listener ztunnel binds on its pod's
// address, in place of transparent capture: ztunnel reads the greeting and
// request with ReadRequest and answers with WriteReply; tests and tools
// play the application with Connect.
//
// It is protocol only: no listener, no dialing, no policy. The glue that
// serves a listener is ztunnel/proxy's socks5.go. x/net/proxy has a SOCKS5
// client, but it neither binds the local address nor reports the reply
// code (its errors are strings), which tests need.
package socks5

import (
	"fmt"
	"net/netip"
)

// Version is the protocol version byte of every SOCKS5 message.
const Version = 5

// Reply codes (RFC 1928 §6).
const (
	Succeeded               byte = 0x00
	GeneralFailure          byte = 0x01
	NotAllowed              byte = 0x02 // connection not allowed by ruleset
	NetworkUnreachable      byte = 0x03
	HostUnreachable         byte = 0x04
	ConnectionRefused       byte = 0x05
	TTLExpired              byte = 0x06
	CommandNotSupported     byte = 0x07
	AddressTypeNotSupported byte = 0x08
)

// Address types of a request (RFC 1928 §5).
const (
	addrIPv4   = 0x01
	addrDomain = 0x03
	addrIPv6   = 0x04
)

const (
	cmdConnect = 0x01
	noAuth     = 0x00
	noMethod   = 0xff // no acceptable method
)

// Request is a parsed CONNECT: an IP address and port, or a host name (and
// then Addr holds only the port). Early holds bytes the client sent after
// the request without waiting for the reply (normally none): they belong
// to the tunnelled stream.
type Request struct {
	Addr  netip.AddrPort
	Host  string
	Early []byte
}

// ReplyError is a reply other than Succeeded, as Connect returns it.
type ReplyError struct{ Code byte }

func (e *ReplyError) Error() string { return fmt.Sprintf("socks5 reply %d", e.Code) }
