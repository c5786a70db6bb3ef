// Package h3 carries HBONE over QUIC: HTTP/3 CONNECT streams (RFC 9114
// §4.4) over mutual TLS on UDP port 15008, next to HBONE's HTTP/2 over TCP
// on TCP 15008 (package hbone).
//
// It is built on github.com/quic-go/quic-go and its http3 package. The
// client side is a [Pool] of QUIC connections keyed like hbone's pool, by
// {source identity, destination identities, destination address, source
// address}; [Pool.Dial] opens one request stream, sends CONNECT with only
// :method and :authority (plus the optional forwarded, baggage and
// traceparent headers) and returns the stream as a [Conn] once the server
// answered 200. The server side ([Server]) hands every CONNECT to a
// [Handler] as the same [hbone.Request] the TCP server builds, and the
// handler answers through its [Tunnel]: Accept (200, after the upstream
// dial succeeded; the stream is then taken over with http3.HTTPStreamer) or
// Reject (400, 401, 503 with hbone's reason header).
//
// Identities are those of HBONE over TCP: the TLS configurations come from
// the caller (pkg/identity's ClientTLSConfig and ServerTLSConfig in the
// mesh), and this package only changes their ALPN to h3. TLS 1.3, a client
// certificate is required, and the client checks the server's URI SAN
// against the destination's identities, as on TCP.
//
// A stream FIN is the TCP FIN of the tunnelled connection ([Conn.CloseWrite]);
// closing a [Conn] before both directions ended resets the stream with
// H3_CONNECT_ERROR, the reset of a TCP connection.
package h3

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// ALPN is the application protocol HBONE over QUIC negotiates.
const ALPN = "h3"

// Port is the UDP port of HBONE over QUIC, the same number as TCP HBONE.
const Port = hbone.Port

// ErrCodeConnect is H3_CONNECT_ERROR (RFC 9114 §8.1): the stream of a
// CONNECT is reset with it when the tunnelled TCP connection is reset or
// aborted.
const ErrCodeConnect = 0x10f

// errCodeNoError is H3_NO_ERROR, for closing an idle connection.
const errCodeNoError = 0x100

// Defaults shared by both sides, as HBONE over TCP's.
const (
	defaultHandshakeTimeout = 10 * time.Second
	defaultKeepAlive        = 10 * time.Second // hbone's PING interval
	defaultMaxIdle          = 20 * time.Second // hbone's PING timeout: no packet for this long ends a connection
	defaultIdleTimeout      = 5 * time.Minute  // a pooled connection without streams
	defaultMaxStreams       = 200              // the server's concurrent streams per connection
	streamWindow            = 4 << 20          // hbone's HTTP/2 window per stream
	connWindow              = 16 << 20         // hbone's HTTP/2 window per connection
)

// ErrPoolClosed is returned by [Pool.Dial] after [Pool.Close].
var ErrPoolClosed = errors.New("h3: pool closed")

// ErrHandshake is wrapped by the errors of [Pool.Dial] that come before a
// QUIC connection to the peer was established (no UDP socket, no answer to
// the handshake, a refused certificate): the CONNECT was never sent, so the
// caller may fall back to HBONE over TCP.
var ErrHandshake = errors.New("h3: no quic connection")

// ErrPeerSilent is wrapped by the errors of [Pool.Dial] on a pooled
// connection whose peer sent nothing for PoolConfig.PeerTimeout after the
// CONNECT (it was killed, or its UDP is now dropped, and no
// CONNECTION_CLOSE came): the connection left the pool, and the caller may
// fall back to HBONE over TCP. The CONNECT may have reached
// the peer before it went silent, but not one byte of the tunnel was sent.
var ErrPeerSilent = errors.New("h3: peer silent")

// ErrServerClosed is returned by [Server.Serve] after [Server.Close].
var ErrServerClosed = fmt.Errorf("h3: server closed: %w", net.ErrClosed)

// quicConfig returns the QUIC parameters of both sides.
func quicConfig(handshake time.Duration, maxStreams int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           handshake,
		MaxIdleTimeout:                 defaultMaxIdle,
		KeepAlivePeriod:                defaultKeepAlive,
		InitialStreamReceiveWindow:     streamWindow / 4,
		MaxStreamReceiveWindow:         streamWindow,
		InitialConnectionReceiveWindow: connWindow / 4,
		MaxConnectionReceiveWindow:     connWindow,
		MaxIncomingStreams:             maxStreams,
		MaxIncomingUniStreams:          8, // HTTP/3 control and QPACK streams
	}
}

// ClientTLS returns cfg (an HBONE client configuration) with ALPN h3.
func ClientTLS(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{ALPN}
	return cfg
}

// ServerTLS returns cfg (an HBONE server configuration) with ALPN h3, also
// in the configuration its GetConfigForClient returns per handshake (which
// picks the destination workload's certificate from the local address).
func ServerTLS(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{ALPN}
	if get := cfg.GetConfigForClient; get != nil {
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if err != nil || c == nil {
				return c, err
			}
			c = c.Clone()
			c.NextProtos = []string{ALPN}
			return c, nil
		}
	}
	return cfg
}

// checkPeer checks that the verified peer identity is one of want (any if
// empty), as hbone's client does after its handshake: the TLS
// configuration already verified it; this is defence in depth.
func checkPeer(cs *tls.ConnectionState, want []spiffeid.ID) error {
	id, err := hbone.PeerIDFromState(cs)
	if err != nil {
		return err
	}
	if len(want) > 0 && !slices.Contains(want, id) {
		return fmt.Errorf("h3: server identity %v is not one of %v", id, want)
	}
	return nil
}
