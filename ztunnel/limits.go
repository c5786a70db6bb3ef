package ztunnel

import (
	"time"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/ztunnel/proxy"
)

// Limits are the data path's limits with numbers (docs/security.md
// "Limits"). The zero value of each field is its documented default; each
// hit is counted in ztunnel_limit_hits_total{limit}.
type Limits struct {
	// MaxStreamsPerConn: the pool opens a new HBONE connection to a
	// destination once its connections carry this many streams each.
	// Default 100.
	MaxStreamsPerConn int
	// MaxConcurrentStreams: the HBONE server refuses (REFUSED_STREAM) a
	// CONNECT past this many streams on one connection. Default 200.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize: SETTINGS_MAX_HEADER_LIST_SIZE on both sides.
	// Default 64 KiB.
	MaxHeaderListSize uint32
	// HandshakeTimeout bounds each TLS handshake of HBONE (and, on the
	// server, the HTTP/2 preface). Default 10 s.
	HandshakeTimeout time.Duration
	// ResponseTimeout bounds the wait for the answer to a CONNECT.
	// Default 15 s.
	ResponseTimeout time.Duration
	// ProbeTimeout: a pooled HBONE connection on which nothing arrives
	// for this long after a PING sent while CONNECTs wait for their
	// answers (the PING goes once the connection has been quiet for a
	// third of it) is closed as dead, and those CONNECTs fail
	// (response_flags CONNECT). Default 3 s; negative: off.
	ProbeTimeout time.Duration
	// ConnectTimeout bounds every TCP connect: to HBONE servers and to
	// applications. Default 10 s.
	ConnectTimeout time.Duration
	// StreamIdleTimeout closes HBONE tunnels idle this long. Default 0:
	// never (as Istio's ztunnel).
	StreamIdleTimeout time.Duration
	// TCPKeepAlive is the keepalive idle time and probe interval of every
	// socket (9 probes). Default 180 s, as Istio's ztunnel; negative: off.
	TCPKeepAlive time.Duration
	// TCPUserTimeout is TCP_USER_TIMEOUT on every socket. Default 0: off
	// (as Istio's ztunnel).
	TCPUserTimeout time.Duration
	// MaxConnsPerPod bounds the outbound connections of one pod open at
	// once. Default 10,000; negative: no limit.
	MaxConnsPerPod int
	// MaxPendingHandshakes bounds the HBONE connections accepted whose TLS
	// handshake is not done. Default 1,024.
	MaxPendingHandshakes int
}

func (l *Limits) socketOptions() hbone.SocketOptions {
	return hbone.SocketOptions{KeepAliveIdle: l.TCPKeepAlive, KeepAliveInterval: l.TCPKeepAlive, UserTimeout: l.TCPUserTimeout}
}

// applyPool sets the pool's limits in cfg.
func (l *Limits) applyPool(cfg *hbone.PoolConfig, hits *proxy.LimitHits) {
	cfg.MaxStreamsPerConn = l.MaxStreamsPerConn
	cfg.MaxHeaderListSize = l.MaxHeaderListSize
	cfg.HandshakeTimeout = l.HandshakeTimeout
	cfg.ResponseTimeout = l.ResponseTimeout
	cfg.ProbeTimeout = l.ProbeTimeout
	cfg.DialTimeout = l.ConnectTimeout
	cfg.SocketOptions = l.socketOptions()
	cfg.OnLimit = hits.Hit
}

// applyServer sets the HBONE server's limits in s.
func (l *Limits) applyServer(s *hbone.Server, hits *proxy.LimitHits) {
	s.MaxConcurrentStreams = l.MaxConcurrentStreams
	s.MaxHeaderListSize = l.MaxHeaderListSize
	s.HandshakeTimeout = l.HandshakeTimeout
	s.MaxPendingHandshakes = l.MaxPendingHandshakes
	s.SocketOptions = l.socketOptions()
	s.OnLimit = hits.Hit
}

// proxyConfig returns cfg with the proxy's limits set.
func (l *Limits) proxyConfig(cfg proxy.Config, hits *proxy.LimitHits) proxy.Config {
	cfg.Limits = hits
	cfg.ConnectTimeout = l.ConnectTimeout
	cfg.MaxConnsPerPod = l.MaxConnsPerPod
	cfg.StreamIdleTimeout = l.StreamIdleTimeout
	cfg.SocketOptions = l.socketOptions()
	return cfg
}
