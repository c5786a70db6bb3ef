package xds

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Limits of what one client can make the server log.
const (
	// maxLogString is the most bytes of a client's string (node id, type URL, nonce, error detail) that a
	// log record holds; the rest is replaced by a marker.
	maxLogString = 256
	// logBurst records per logWindow are written for one stream (and for refused streams together); the
	// rest are counted and reported in one summary.
	logBurst  = 10
	logWindow = time.Minute
)

// clip cuts s to maxLogString bytes, at a rune boundary, and says how much it left out.
func clip(s string) string {
	if len(s) <= maxLogString {
		return s
	}
	n := maxLogString
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "...[" + strconv.Itoa(len(s)-n) + " bytes truncated]"
}

// logLimiter lets logBurst records through per logWindow and counts the rest.
type logLimiter struct {
	mu         sync.Mutex
	start      time.Time // of the current window
	n          int       // records let through in the window
	suppressed int       // records held back since the last one let through
}

// allow reports whether a record may be written now and, if so, how many were suppressed before it.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= logWindow || now.Before(l.start) {
		l.start, l.n = now, 0
	}
	if l.n >= logBurst {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// flush returns the records suppressed since the last one let through, and forgets them.
func (l *logLimiter) flush() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.suppressed
	l.suppressed = 0
	return n
}

// streamLog writes a record about one of st's requests, within st's budget. A record that follows
// suppressed ones carries their count.
func (s *Server) streamLog(st *stream, level slog.Level, msg string, args ...any) {
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := st.logs.allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Log(context.Background(), level, msg, args...)
}
