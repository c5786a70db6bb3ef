// Package accesslog writes ztunnel's per-connection access log records, with
// the message and fields of Istio's ztunnel ("connection complete", src.addr,
// dst.identity, bytes_sent, ...), through log/slog, and streams the same
// records to subscribers (tests, the demo, later `meshctl logs`).
//
// Logging a record costs no fmt formatting: attributes are built on the
// stack and handed to slog.Logger.LogAttrs, and nothing is built at all when
// the level is disabled and nobody subscribes. Subscribers never slow the
// data path: a subscriber whose buffer is full misses records, which are
// counted (Logger.Dropped).
package accesslog

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Message is the message of every connection's access log record, as in
// Istio's ztunnel.
const Message = "connection complete"

// RequestMessage is the message of a waypoint's per-request record (a
// Record with Method set).
const RequestMessage = "request complete"

// Field keys, as Istio's ztunnel writes them. ResponseFlags and Policy are
// this project's additions.
const (
	KeySrcAddr       = "src.addr"
	KeySrcWorkload   = "src.workload"
	KeySrcNamespace  = "src.namespace"
	KeySrcIdentity   = "src.identity"
	KeyDstAddr       = "dst.addr"
	KeyDstHBONEAddr  = "dst.hbone_addr"
	KeyDstService    = "dst.service"
	KeyDstWorkload   = "dst.workload"
	KeyDstNamespace  = "dst.namespace"
	KeyDstIdentity   = "dst.identity"
	KeyDirection     = "direction"
	KeyBytesSent     = "bytes_sent"
	KeyBytesRecv     = "bytes_recv"
	KeyDuration      = "duration"
	KeyResponseFlags = "response_flags"
	KeyPolicy        = "policy"
	KeyTransport     = "transport" // HBONE over "tcp" or "quic"; our own, not Istio's
	KeyError         = "error"

	// Per-request fields (waypoint), with the names of Istio's JSON access
	// log format (Envoy's %REQ(:METHOD)%, %RESPONSE_CODE%, ...).
	KeyMethod       = "method"
	KeyPath         = "path"
	KeyAuthority    = "authority"
	KeyProtocol     = "protocol"
	KeyRoute        = "route_name" // the HTTPRoute or GRPCRoute that took the request, namespace/name
	KeyResponseCode = "response_code"
	KeyUpstreamHost = "upstream_host"
	KeyTraceID      = "trace_id"
)

// Directions.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Record is one connection's access log record. Empty fields (zero
// addresses, empty strings) are left out of the log line.
type Record struct {
	SrcAddr      netip.AddrPort // the client's address
	DstAddr      netip.AddrPort // the address the connection was sent to
	DstHBONEAddr netip.AddrPort // the HBONE :authority, when tunnelled

	SrcWorkload  string
	SrcNamespace string
	SrcIdentity  string // SPIFFE ID; "spiffe://" is prepended when missing
	DstService   string // service hostname
	DstWorkload  string
	DstNamespace string
	DstIdentity  string // SPIFFE ID; "spiffe://" is prepended when missing
	Direction    string // Inbound or Outbound

	// BytesSent and BytesRecv are counted from the local workload's side, as
	// Istio logs them: what the local workload (the client when outbound, the
	// server when inbound) sent and received.
	BytesSent int64
	BytesRecv int64

	// Start is when the connection was accepted. Duration is its length;
	// when zero and Start is set, Log uses time.Since(Start).
	Start    time.Time
	Duration time.Duration

	Err           error  // non-nil: logged at error level with error=Err.Error()
	ResponseFlags string // Istio response flags such as "DENY", "CONNECT"; optional
	Policy        string // the policy that decided (namespace/name); optional
	Transport     string // the HBONE transport, "tcp" or "quic"; empty for a direct connection

	// Per-request fields, set by a waypoint for each HTTP request; a record
	// with Method set is logged with RequestMessage. Empty fields (and a
	// zero ResponseCode) are left out.
	Method       string
	Path         string // as received, query included
	Authority    string // the request's Host / :authority
	Protocol     string // "HTTP/1.1", "HTTP/2"
	ResponseCode int
	UpstreamHost netip.AddrPort // the endpoint the request was sent to
	TraceID      string         // W3C trace id (32 hex digits)
	Route        string         // the route that took the request (namespace/name); optional
}

// Logger writes access log records. Log and Dropped on a nil *Logger do
// nothing.
type Logger struct {
	log     *slog.Logger
	jw      io.Writer                     // NewJSON: records go here as JSON lines, not to log
	jlevel  slog.Leveler                  // NewJSON: the level records need
	subs    atomic.Pointer[[]*subscriber] // copy on write, under mu
	mu      sync.Mutex
	dropped atomic.Uint64
	sink    atomic.Pointer[Sink]
}

// Sink receives every record logged, whatever the log level, with its
// duration; it must copy what it keeps and never block (package logstream's
// ring is one).
type Sink func(r *Record, dur time.Duration)

// SetSink makes every record logged from now on go to s too; nil removes it.
func (l *Logger) SetSink(s Sink) {
	if s == nil {
		l.sink.Store(nil)
		return
	}
	l.sink.Store(&s)
}

// subscriber is one Subscribe call's channel. Senders hold mu for reading,
// so that cancel (holding it for writing) never closes ch under a send.
type subscriber struct {
	mu     sync.RWMutex
	ch     chan Record
	closed bool
}

// New returns a Logger writing to l with the attribute scope=access (as
// Istio's access log target). A nil l discards the records (subscribers
// still get them).
func New(l *slog.Logger) *Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &Logger{log: l.With("scope", "access")}
}

// Log writes r, at info level, or at error level with an error attribute if
// r.Err is set, and sends a copy to each subscriber that has room for it.
func (l *Logger) Log(ctx context.Context, r *Record) {
	if l == nil || r == nil {
		return
	}
	subs := l.subs.Load()
	level := slog.LevelInfo
	if r.Err != nil {
		level = slog.LevelError
	}
	var enabled bool
	if l.jw != nil {
		enabled = level >= l.jlevel.Level()
	} else {
		enabled = l.log.Enabled(ctx, level)
	}
	sink := l.sink.Load()
	if !enabled && sink == nil && (subs == nil || len(*subs) == 0) {
		return
	}
	dur := r.Duration
	if dur == 0 && !r.Start.IsZero() {
		dur = time.Since(r.Start)
	}
	if sink != nil {
		(*sink)(r, dur)
	}
	switch {
	case enabled && l.jw != nil:
		l.writeJSON(level, r, dur)
	case enabled:
		l.write(ctx, level, r, dur)
	}
	if subs != nil && len(*subs) > 0 {
		rec := *r
		rec.Duration = dur
		for _, s := range *subs {
			s.mu.RLock()
			if !s.closed {
				select {
				case s.ch <- rec:
				default:
					l.dropped.Add(1)
				}
			}
			s.mu.RUnlock()
		}
	}
}

func (l *Logger) write(ctx context.Context, level slog.Level, r *Record, dur time.Duration) {
	var buf [25]slog.Attr
	a := buf[:0]
	eachField(r, dur,
		func(key, v string) { a = append(a, slog.String(key, v)) },
		func(key string, v int64) { a = append(a, slog.Int64(key, v)) },
		func(key string, ap netip.AddrPort) { a = append(a, slog.String(key, ap.String())) })
	msg := Message
	if r.Method != "" {
		msg = RequestMessage
	}
	l.log.LogAttrs(ctx, level, msg, a...)
}

// eachField calls str, num or addr for each field of r to log, in the log
// line's order, leaving out the empty ones: the one list of fields both
// the slog line (write) and the direct JSON line (writeJSON) follow.
func eachField(r *Record, dur time.Duration, str func(key, v string), num func(key string, v int64), addr func(key string, ap netip.AddrPort)) {
	optAddr := func(key string, ap netip.AddrPort) {
		if ap.IsValid() {
			addr(key, ap)
		}
	}
	optStr := func(key, v string) {
		if v != "" {
			str(key, v)
		}
	}
	optAddr(KeySrcAddr, r.SrcAddr)
	optStr(KeySrcWorkload, r.SrcWorkload)
	optStr(KeySrcNamespace, r.SrcNamespace)
	optStr(KeySrcIdentity, spiffe(r.SrcIdentity))
	optAddr(KeyDstAddr, r.DstAddr)
	optAddr(KeyDstHBONEAddr, r.DstHBONEAddr)
	optStr(KeyDstService, r.DstService)
	optStr(KeyDstWorkload, r.DstWorkload)
	optStr(KeyDstNamespace, r.DstNamespace)
	optStr(KeyDstIdentity, spiffe(r.DstIdentity))
	optStr(KeyDirection, r.Direction)
	num(KeyBytesSent, r.BytesSent)
	num(KeyBytesRecv, r.BytesRecv)
	str(KeyDuration, FormatDuration(dur))
	optStr(KeyResponseFlags, r.ResponseFlags)
	optStr(KeyPolicy, r.Policy)
	optStr(KeyTransport, r.Transport)
	if r.Method != "" {
		optStr(KeyMethod, r.Method)
		optStr(KeyPath, r.Path)
		optStr(KeyAuthority, r.Authority)
		optStr(KeyProtocol, r.Protocol)
		optStr(KeyRoute, r.Route)
		if r.ResponseCode != 0 {
			num(KeyResponseCode, int64(r.ResponseCode))
		}
		optAddr(KeyUpstreamHost, r.UpstreamHost)
		optStr(KeyTraceID, r.TraceID)
	}
	if r.Err != nil {
		str(KeyError, r.Err.Error())
	}
}

// FormatDuration formats d as Istio's ztunnel does: whole milliseconds,
// truncated, followed by "ms" ("12ms"; "0ms" below a millisecond).
func FormatDuration(d time.Duration) string {
	var b [24]byte
	return string(strconv.AppendInt(b[:0], d.Milliseconds(), 10)) + "ms"
}

// spiffe returns id with the spiffe:// scheme, as Istio prints identities.
func spiffe(id string) string {
	if id == "" || strings.HasPrefix(id, "spiffe://") {
		return id
	}
	return "spiffe://" + id
}

// Subscribe returns a channel receiving a copy of every record logged from
// now on (Duration filled in), whatever the log level, and a function that
// ends the subscription and closes the channel (safe to call more than
// once). buffer is the channel's capacity (at least 1): records that find it
// full are dropped and counted, never waited for.
func (l *Logger) Subscribe(buffer int) (<-chan Record, func()) {
	if buffer < 1 {
		buffer = 1
	}
	s := &subscriber{ch: make(chan Record, buffer)}
	l.mu.Lock()
	var next []*subscriber
	if cur := l.subs.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, s)
	l.subs.Store(&next)
	l.mu.Unlock()

	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			l.mu.Lock()
			var next []*subscriber
			for _, o := range *l.subs.Load() {
				if o != s {
					next = append(next, o)
				}
			}
			l.subs.Store(&next)
			l.mu.Unlock()

			s.mu.Lock()
			s.closed = true
			close(s.ch)
			s.mu.Unlock()
		})
	}
}

// Dropped returns how many records subscribers have missed because their
// buffer was full.
func (l *Logger) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}
