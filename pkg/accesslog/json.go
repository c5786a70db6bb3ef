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
	eachField(r, dur,
		func(key, v string) {
			b = appendKey(b, key)
			b = appendJSONString(b, v)
		},
		func(key string, v int64) {
			b = appendKey(b, key)
			b = strconv.AppendInt(b, v, 10)
		},
		func(key string, ap netip.AddrPort) {
			b = appendKey(b, key)
			b = append(b, '"')
			b = ap.AppendTo(b)
			b = append(b, '"')
		})
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
