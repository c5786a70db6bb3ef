package proxy

import (
	"net/http"
	"testing"
)

// FuzzClassify: any first bytes of a tunnelled stream. classify never
// panics, decides once all bytes are there (full), and a decision it makes
// early (done) is the one it makes with more bytes, whatever they are.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"", "GET / HTTP/1.1\r\n", "POST /x HTTP/1.0\n", h2Preface, h2Preface[:10], "PRI * HTTP/2.0\r\n",
		"GET / HT", "\x16\x03\x01\x02\x00", "SSH-2.0-OpenSSH\r\n", " GET / HTTP/1.1\r\n", "GET  HTTP/1.1\r\n",
		"VERYLONGMETHODNAMEOVERTWENTY", "get / HTTP/1.1\r\n", "GET / HTTP/2\r\n",
	} {
		f.Add([]byte(s), []byte("\r\nHost: x\r\n\r\n"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		if p, done := classify(b, true); !done || p == protoUnknown {
			t.Fatalf("classify(%q, full) = %v, done %v; want a decision", b, p, done)
		}
		p, done := classify(b, false)
		if !done {
			return
		}
		ext := append(append([]byte(nil), b...), more...)
		for _, full := range []bool{false, true} {
			if q, _ := classify(ext, full); q != p {
				t.Fatalf("classify(%q) = %v early, but %v with %q more (full %v)", b, p, q, more, full)
			}
		}
	})
}

// FuzzTraceparent: any traceparent header. The request always leaves with
// a valid one whose trace id is the one logged, and a valid header is
// passed on untouched.
func FuzzTraceparent(f *testing.F) {
	for _, s := range []string{
		"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		if v != "" {
			h.Set("Traceparent", v)
		}
		_, valid := traceID(h.Get("Traceparent"))
		id := ensureTraceparent(h)
		got, ok := traceID(h.Get("Traceparent"))
		if !ok || got != id {
			t.Fatalf("after ensureTraceparent(%q): header %q gives %q, %v; want the logged id %q", v, h.Get("Traceparent"), got, ok, id)
		}
		if valid && h.Get("Traceparent") != v {
			t.Fatalf("a valid traceparent %q was replaced by %q", v, h.Get("Traceparent"))
		}
	})
}
