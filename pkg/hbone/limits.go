package hbone

import (
	"context"
	"errors"
	"net"
	"time"
)

// Limits: what [Server.OnLimit] and [PoolConfig.OnLimit] are called with
// when a limit is hit (ztunnel counts them in
// ztunnel_limit_hits_total{limit}; docs/security.md "Limits").
const (
	// LimitServerStreams: a CONNECT past Server.MaxConcurrentStreams open
	// streams on one connection, refused with RST_STREAM(REFUSED_STREAM)
	// (the client may retry it on another connection).
	LimitServerStreams = "hbone_server_streams"
	// LimitPoolStreams: the pooled connections to a destination all carry
	// PoolConfig.MaxStreamsPerConn streams, so a new one is opened.
	LimitPoolStreams = "hbone_pool_streams"
	// LimitHeaderList: a header list larger than MaxHeaderListSize. The
	// server answers 431; the client resets the stream (CANCEL) and the
	// dial fails.
	LimitHeaderList = "hbone_header_list"
	// LimitPendingHandshakes: a connection accepted past
	// Server.MaxPendingHandshakes, closed at once.
	LimitPendingHandshakes = "hbone_pending_handshakes"
	// LimitHandshakeTimeout: a TLS handshake (on the server: and the
	// HTTP/2 preface) not done within its HandshakeTimeout; the
	// connection is closed.
	LimitHandshakeTimeout = "hbone_handshake_timeout"
	// LimitResponseTimeout: no answer to a CONNECT within
	// PoolConfig.ResponseTimeout; the stream is reset (CANCEL) and the
	// dial fails.
	LimitResponseTimeout = "hbone_response_timeout"
	// LimitConnectTimeout: the TCP connection to an HBONE server not
	// established within PoolConfig.DialTimeout.
	LimitConnectTimeout = "hbone_connect_timeout"
	// LimitPingTimeout: a pooled client connection closed because its
	// PING went unanswered (PoolConfig.PingTimeout) or because nothing
	// arrived for PoolConfig.ProbeTimeout after a CONNECT sent with a PING
	// (ErrConnectionDead).
	LimitPingTimeout = "hbone_ping_timeout"
)

// Defaults of the limits.
const (
	DefaultMaxHeaderListSize = maxHeaderList    // 64 KiB, as Istio's ztunnel server
	DefaultResponseTimeout   = 15 * time.Second // above the server's 10 s dial to the application
	DefaultDialTimeout       = 10 * time.Second // Istio's ztunnel CONNECTION_TIMEOUT
	DefaultProbeTimeout      = 3 * time.Second  // below a typical client's 5 s timeout
	DefaultKeepAliveIdle     = 180 * time.Second
	DefaultKeepAliveInterval = 180 * time.Second
	DefaultKeepAliveCount    = 9
)

// ErrResponseTimeout is returned by [Pool.Dial] when the server did not
// answer the CONNECT within PoolConfig.ResponseTimeout.
var ErrResponseTimeout = errors.New("hbone: no response to CONNECT in time")

// ErrHeaderListTooLarge is returned by [Pool.Dial] when the server's
// response headers exceed PoolConfig.MaxHeaderListSize.
var ErrHeaderListTooLarge = errors.New("hbone: response header list too large")

// SocketOptions are the TCP options set on a connection: keepalive, as
// Istio's ztunnel sets it on every socket, and TCP_USER_TIMEOUT. The zero
// value is keepalive after 180 s idle, probes every 180 s, 9 unanswered
// probes close the connection (about 30 min), and no TCP_USER_TIMEOUT.
type SocketOptions struct {
	// KeepAliveIdle is the idle time before the first probe; default
	// 180 s; negative turns keepalive off.
	KeepAliveIdle time.Duration
	// KeepAliveInterval is the time between probes; default 180 s.
	KeepAliveInterval time.Duration
	// KeepAliveCount is how many unanswered probes close the connection;
	// default 9.
	KeepAliveCount int
	// UserTimeout is TCP_USER_TIMEOUT (Linux): data left unacknowledged
	// for this long (zero-window probes included) closes the connection
	// with ETIMEDOUT. Default 0: off, as in Istio's ztunnel.
	UserTimeout time.Duration
}

// keepAlive returns the keepalive configuration of o.
func (o SocketOptions) keepAlive() net.KeepAliveConfig {
	if o.KeepAliveIdle < 0 {
		return net.KeepAliveConfig{Enable: false}
	}
	ka := net.KeepAliveConfig{Enable: true, Idle: o.KeepAliveIdle, Interval: o.KeepAliveInterval, Count: o.KeepAliveCount}
	if ka.Idle == 0 {
		ka.Idle = DefaultKeepAliveIdle
	}
	if ka.Interval <= 0 {
		ka.Interval = DefaultKeepAliveInterval
	}
	if ka.Count <= 0 {
		ka.Count = DefaultKeepAliveCount
	}
	return ka
}

// Apply sets the options on c if it is a TCP connection (else it does
// nothing).
func (o SocketOptions) Apply(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if err := tc.SetKeepAliveConfig(o.keepAlive()); err != nil {
		return err
	}
	if o.UserTimeout > 0 {
		return setUserTimeout(tc, o.UserTimeout)
	}
	return nil
}

// onLimit calls f with limit, if f is set.
func onLimit(f func(string), limit string) {
	if f != nil {
		f(limit)
	}
}

// timedOut reports whether err ended a wait bounded by ctx's deadline,
// rather than a cancellation of parent. The network poller may report the
// deadline (a net.Error timeout) before ctx's own timer has fired.
func timedOut(parent, ctx context.Context, err error) bool {
	if err == nil || parent.Err() != nil {
		return false
	}
	var ne net.Error
	return errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
