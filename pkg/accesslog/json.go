package accesslog

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// NewJSON returns a Logger that writes each record as one JSON line to w,
// with the keys a slog.JSONHandler would write for New's records (time,
// level, msg, scope=access, then the record's fields), when level allows
// it. It costs a fraction of going through slog, whose records copy their
// attributes into a growing slice and encode each through a Value: on the
// waypoint, slog took 5 % of all CPU at saturation (docs/optimisations.md).
// w must take each Write whole (a pkg/logbuf.Writer, an *os.File).
func NewJSON(w io.Writer, level slog.Leveler) *Logger {
	if level == nil {
		level = slog.LevelInfo
	}
	return &Logger{log: slog.New(slog.DiscardHandler), jw: w, jlevel: level}
}

var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeJSON writes r as a JSON line to l.jw.
func (l *Logger) writeJSON(level slog.Level, r *Record, dur time.Duration) {
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = time.Now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"`...)
	b = append(b, level.String()...)
	msg := Message
	if r.Method != "" {
		msg = RequestMessage
	}
	b = append(b, `","msg":"`...)
	b = append(b, msg...)
	b = append(b, `","scope":"access"`...)
	addr := func(key string, ap netip.AddrPort) {
		if ap.IsValid() {
			b = appendKey(b, key)
			b = append(b, '"')
			b = ap.AppendTo(b)
			b = append(b, '"')
		}
	}
	str := func(key, v string) {
		if v != "" {
			b = appendKey(b, key)
			b = appendJSONString(b, v)
		}
	}
	num := func(key string, v int64) {
		b = appendKey(b, key)
		b = strconv.AppendInt(b, v, 10)
	}
	addr(KeySrcAddr, r.SrcAddr)
	str(KeySrcWorkload, r.SrcWorkload)
	str(KeySrcNamespace, r.SrcNamespace)
	str(KeySrcIdentity, spiffe(r.SrcIdentity))
	addr(KeyDstAddr, r.DstAddr)
	addr(KeyDstHBONEAddr, r.DstHBONEAddr)
	str(KeyDstService, r.DstService)
	str(KeyDstWorkload, r.DstWorkload)
	str(KeyDstNamespace, r.DstNamespace)
	str(KeyDstIdentity, spiffe(r.DstIdentity))
	str(KeyDirection, r.Direction)
	num(KeyBytesSent, r.BytesSent)
	num(KeyBytesRecv, r.BytesRecv)
	b = appendKey(b, KeyDuration)
	b = append(b, '"')
	b = strconv.AppendInt(b, dur.Milliseconds(), 10)
	b = append(b, `ms"`...)
	str(KeyResponseFlags, r.ResponseFlags)
	str(KeyPolicy, r.Policy)
	str(KeyTransport, r.Transport)
	if r.Method != "" {
		str(KeyMethod, r.Method)
		str(KeyPath, r.Path)
		str(KeyAuthority, r.Authority)
		str(KeyProtocol, r.Protocol)
		if r.ResponseCode != 0 {
			num(KeyResponseCode, int64(r.ResponseCode))
		}
		addr(KeyUpstreamHost, r.UpstreamHost)
		str(KeyTraceID, r.TraceID)
	}
	if r.Err != nil {
		str(KeyError, r.Err.Error())
	}
	b = append(b, "}\n"...)
	l.jw.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b
		lineBufs.Put(bp)
	}
}

// appendKey appends ,"key": (keys are constants that need no escaping).
func appendKey(b []byte, key string) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	return append(b, `":`...)
}

// appendJSONString appends s as a JSON string. Printable ASCII other than
// the quote and the backslash (all a record usually holds) is copied as it
// is; anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
