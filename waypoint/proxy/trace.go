package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
)

// ensureTraceparent returns the trace id of the request's W3C traceparent
// header, which is passed on untouched; a request without a valid one
// gets a new one (not sampled), so that every request has a trace id in
// the access log and the endpoint can join the trace.
func ensureTraceparent(h http.Header) string {
	if id, ok := traceID(h.Get("Traceparent")); ok {
		return id
	}
	var b [24]byte
	rand.Read(b[:])
	tid, sid := hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	h.Set("Traceparent", "00-"+tid+"-"+sid+"-00")
	return tid
}

// traceID parses a traceparent (version-traceid-parentid-flags, W3C Trace
// Context level 1) and returns its trace id.
func traceID(v string) (string, bool) {
	// 2 + 1 + 32 + 1 + 16 + 1 + 2; later versions may append fields.
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || (len(v) > 55 && (v[:2] == "00" || v[55] != '-')) {
		return "", false
	}
	version, tid, pid, flags := v[:2], v[3:35], v[36:52], v[53:55]
	if !lowerHex(version) || version == "ff" || !lowerHex(tid) || !lowerHex(pid) || !lowerHex(flags) {
		return "", false
	}
	if allZero(tid) || allZero(pid) {
		return "", false
	}
	return tid, true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
