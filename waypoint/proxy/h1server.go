package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The fast HTTP/1.1 server loop. net/http's server serves each connection
// on a goroutine of its own (here reached through a channel listener) and,
// for every HTTP/1.1 request, starts a background read on one more
// goroutine to notice the client going away, which it must stop again
// before the next request: through the waypoint those hand-offs and their
// futex wake-ups are the largest share of the scheduler's cost per request.
// serveH1 serves the common request instead on the HBONE stream's own
// goroutine: it reads the request line and headers with a bufio.Reader,
// parses them with net/http's own http.ReadRequest (so validation is
// net/http's), serves them with the same handler (serveHTTP) and writes
// the answer with h1Writer, which frames it as net/http's response writer
// does, in one write for a small answer.
//
// It takes only what it can serve exactly as net/http would: HTTP/1.1, a
// request line and headers within h1ReadBuffer, origin form, exactly one
// Host, no Expect, Upgrade or Transfer-Encoding header, Connection naming
// nothing but keep-alive, and a
// body of known length up to maxFastBody (or none). On anything else — the
// h2c preface, HTTP/1.0, Connection: close, Expect: 100-continue, chunked
// or large bodies, oversized headers, malformed requests (which net/http
// answers 400, 431 or 505) — it hands the connection, with every byte read
// so far and not consumed, to net/http's server, which then serves it to
// its end. A request that fails to parse is left whole for net/http.
//
// What it does not do as net/http does: the request's context is the HBONE
// stream's (cancelled when the stream is reset or its connection closes),
// not one cancelled by a background read that sees the client half-close;
// headers a handler adds after WriteHeader (other than trailers) are
// written, where net/http ignores them (the waypoint's handlers add none).
const (
	// h1ReadBuffer holds a request's line and headers on the fast path;
	// larger ones go to net/http (whose limit is 1 MiB, then 431).
	h1ReadBuffer = 4 << 10
	// h1ReadHeaderTimeout is the HTTP server's ReadHeaderTimeout.
	h1ReadHeaderTimeout = 30 * time.Second
	// h1PendingBody is the body held back before the header is written
	// (net/http's bufferBeforeChunkingSize): a body complete within it
	// gets a Content-Length, a longer one is chunked.
	h1PendingBody = 2048
)

var h1ReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1ReadBuffer) }}

// parseReaderPool parses a peeked request head: a bufio.Reader over a
// bytes.Reader, so that a request net/http must judge stays unconsumed.
type parseReader struct {
	br *bufio.Reader
	r  bytes.Reader
}

var parseReaderPool = sync.Pool{New: func() any {
	pr := new(parseReader)
	pr.br = bufio.NewReaderSize(&pr.r, h1ReadBuffer)
	return pr
}}

// h1Conn states for Drain.
const (
	h1Busy int32 = iota
	h1Idle
	h1Closed
)

// h1ServerConn is one HBONE stream served by serveH1.
type h1ServerConn struct {
	c     net.Conn
	state atomic.Int32
}

// serveH1 serves requests on c until it ends (done) or until a request
// needs net/http; then rest is c with the bytes read ahead in front.
func (p *Proxy) serveH1(ctx context.Context, st *stream, c net.Conn) (rest net.Conn, done bool) {
	sc := &h1ServerConn{c: c}
	if !p.trackH1(sc) {
		return nil, true
	}
	defer p.untrackH1(sc)
	br := h1ReaderPool.Get().(*bufio.Reader)
	br.Reset(c)
	defer func() {
		if rest != nil {
			// Hand over what was read ahead.
			b, _ := br.Peek(br.Buffered())
			rest = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(bytes.Clone(b)), c)}
		}
		br.Reset(nil)
		h1ReaderPool.Put(br)
	}()
	ctx = context.WithValue(ctx, streamKey{}, st)
	ctx = context.WithValue(ctx, http.ServerContextKey, p.httpSrv)
	remote := st.client.String()
	w := &h1Writer{header: http.Header{}, drain: &p.drainFlag}
	// The read deadline is set only when it must change: dl is the one
	// set, limit the time the wait really ends (the idle timeout after the
	// last answer, or the header timeout). A deadline that fires before
	// limit is set again, so one deadline serves many requests (each
	// costs a timer and the HBONE connection's lock).
	var dl time.Time
	setDeadline := func(t time.Time) {
		if !t.Equal(dl) {
			c.SetReadDeadline(t)
			dl = t
		}
	}
	limit := time.Now().Add(h1ReadHeaderTimeout)
	setDeadline(limit)
	for first := true; ; first = false {
		if !first {
			if !sc.state.CompareAndSwap(h1Busy, h1Idle) || p.isDraining() {
				return nil, true
			}
			limit = time.Now().Add(p.cfg.IdleTimeout)
			if dl.IsZero() || dl.After(limit) {
				setDeadline(limit)
			}
		}
		for {
			_, err := br.Peek(1)
			if err == nil {
				break
			}
			if now := time.Now(); errors.Is(err, os.ErrDeadlineExceeded) && now.Before(limit) {
				setDeadline(limit) // an older, earlier deadline
				continue
			}
			return nil, true // closed, or idle for too long: as net/http, no answer
		}
		if !first && !sc.state.CompareAndSwap(h1Idle, h1Busy) {
			return nil, true // closed by Drain
		}
		if !headBuffered(br) {
			setDeadline(time.Now().Add(h1ReadHeaderTimeout))
		}
		n, err := headEnd(br)
		if err != nil {
			return nil, true
		}
		if n < 0 {
			setDeadline(time.Time{})
			return c, false
		}
		head, _ := br.Peek(n)
		req := parseHead(head)
		if req == nil {
			setDeadline(time.Time{})
			return c, false
		}
		br.Discard(n)
		if req.ContentLength > int64(br.Buffered()) {
			setDeadline(time.Time{}) // the body is read with no deadline, as net/http's
		}
		req = req.WithContext(ctx)
		req.RemoteAddr = remote
		var body *h1ReqBody
		if req.ContentLength > 0 {
			body = &h1ReqBody{r: br, left: req.ContentLength}
			req.Body = body
		} else {
			req.Body = http.NoBody
		}
		w.reset(c, req, body)
		if !p.serveH1Request(w, req) {
			return nil, true
		}
		if !w.finish() {
			return nil, true
		}
	}
}

// serveH1Request runs the handler; false when it panicked (the connection
// is then closed, as net/http does; http.ErrAbortHandler is not logged).
func (p *Proxy) serveH1Request(w *h1Writer, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				p.log.Debug("panic serving request", "error", fmt.Sprint(v))
			}
			w.abort()
			ok = false
		}
	}()
	p.serveHTTP(w, r)
	return true
}

// headEnd returns the length of the request head (line and headers, up to
// and with the empty line) at the start of br, waiting for it to arrive;
// -1 when it does not fit in br.
func headEnd(br *bufio.Reader) (int, error) {
	for searched := 0; ; {
		b, _ := br.Peek(br.Buffered())
		// A head ends with an empty line: "\n\r\n" or "\n\n" (net/http
		// accepts bare LF line ends too).
		for i := max(searched-2, 0); i < len(b); i++ {
			if b[i] != '\n' {
				continue
			}
			if i+1 < len(b) && b[i+1] == '\n' {
				return i + 2, nil
			}
			if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
				return i + 3, nil
			}
		}
		searched = len(b)
		if len(b) >= br.Size() {
			return -1, nil
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return 0, err
		}
	}
}

// onlyKeepAlive reports whether the Connection header values v name
// nothing but keep-alive (HTTP/1.1's default, which many clients send).
func onlyKeepAlive(v []string) bool {
	for _, f := range v {
		for t := range strings.SplitSeq(f, ",") {
			if !strings.EqualFold(textproto.TrimString(t), "keep-alive") {
				return false
			}
		}
	}
	return true
}

// headBuffered reports whether br holds a whole request head.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\n\n")) || bytes.Contains(b, []byte("\n\r\n"))
}

// parseHead parses a request head with http.ReadRequest and returns the
// request when the fast path can serve it, or nil.
func parseHead(head []byte) *http.Request {
	pr := parseReaderPool.Get().(*parseReader)
	pr.r.Reset(head)
	pr.br.Reset(&pr.r)
	req, err := http.ReadRequest(pr.br)
	pr.r.Reset(nil)
	parseReaderPool.Put(pr)
	if err != nil || req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Method == http.MethodConnect ||
		!strings.HasPrefix(req.RequestURI, "/") || req.ContentLength < 0 || req.ContentLength > maxFastBody ||
		len(req.TransferEncoding) > 0 || req.Close {
		return nil
	}
	for _, h := range []string{"Expect", "Upgrade", "Transfer-Encoding"} {
		if _, ok := req.Header[h]; ok {
			return nil
		}
	}
	if !onlyKeepAlive(req.Header["Connection"]) {
		return nil // Connection: close (req.Close) or naming other headers
	}
	// http.ReadRequest took Host out of the header into req.Host (and
	// refused two); net/http's server answers a missing one 400.
	if req.Host == "" || !plainHost(req.Host) {
		return nil
	}
	for _, vv := range req.Header {
		for _, v := range vv {
			if !plainFieldValue(v) {
				return nil // net/http's server judges (400 on a control byte)
			}
		}
	}
	return req
}

// plainHost reports whether h is a host[:port] net/http accepts as it is
// (httpguts.ValidHostHeader takes more; those go to net/http).
func plainHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}

// plainFieldValue reports whether v has no control byte but tab (what
// httpguts.ValidHeaderFieldValue, which net/http's server applies, allows).
func plainFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// h1ReqBody is a request body of known length read from the connection's
// reader.
type h1ReqBody struct {
	r      *bufio.Reader
	left   int64
	closed bool
	err    error
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// Close marks the body closed; what is left is discarded when the answer
// is written, as net/http does.
func (b *h1ReqBody) Close() error {
	b.closed = true
	return nil
}

// discard reads what the handler left of the body; false when it cannot.
func (b *h1ReqBody) discard() bool {
	if b.err != nil {
		return false
	}
	if b.left > 0 {
		n, err := b.r.Discard(int(b.left))
		b.left -= int64(n)
		if err != nil {
			b.err = err
			return false
		}
	}
	return true
}

// prefixConn is a connection whose first bytes were read ahead.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// trackH1 registers sc for Drain; false once the proxy drains.
func (p *Proxy) trackH1(sc *h1ServerConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return false
	}
	if p.h1Conns == nil {
		p.h1Conns = map[*h1ServerConn]struct{}{}
	}
	p.h1Conns[sc] = struct{}{}
	return true
}

func (p *Proxy) untrackH1(sc *h1ServerConn) {
	p.mu.Lock()
	delete(p.h1Conns, sc)
	p.mu.Unlock()
}

func (p *Proxy) isDraining() bool { return p.drainFlag.Load() }

// closeIdleH1 closes the fast path's connections waiting for a request
// (net/http's Shutdown does so for its own); called once draining is set.
func (p *Proxy) closeIdleH1() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for sc := range p.h1Conns {
		if sc.state.CompareAndSwap(h1Idle, h1Closed) {
			sc.c.Close()
		}
	}
}

// h1Writer is the http.ResponseWriter of the fast path. It frames the
// answer as net/http's response writer does for an HTTP/1.1 request
// (chunkWriter.writeHeader): a Content-Length when the handler set one or
// finished within h1PendingBody bytes, else chunked; a sniffed
// Content-Type when none is set; a Date; trailers (declared in Trailer, or
// http.TrailerPrefix) after a chunked body; Connection: close when the
// connection cannot carry another request.
type h1Writer struct {
	c     net.Conn
	drain *atomic.Bool // the proxy drains
	bw    *bufio.Writer
	req   *http.Request
	body  *h1ReqBody

	header        http.Header
	status        int
	wroteHeader   bool // a final status is set
	sentHeader    bool // the header is in bw
	handlerDone   bool
	chunking      bool
	closeAfter    bool
	contentLength int64 // declared or computed; -1 unknown
	written       int64
	trailers      []string // declared
	pending       []byte
	pendingBuf    [h1PendingBody]byte
	failed        bool // a write to the connection failed
}

func (w *h1Writer) reset(c net.Conn, req *http.Request, body *h1ReqBody) {
	clear(w.header)
	*w = h1Writer{c: c, drain: w.drain, req: req, body: body, header: w.header, contentLength: -1, trailers: w.trailers[:0]}
	w.pending = w.pendingBuf[:0]
}

func (w *h1Writer) Header() http.Header { return w.header }

func (w *h1Writer) writer() *bufio.Writer {
	if w.bw == nil {
		w.bw = writerPool.Get().(*bufio.Writer)
		w.bw.Reset(w.c)
	}
	return w.bw
}

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader {
		return // net/http logs a superfluous call
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		bw := w.writer()
		writeStatusLine(bw, code)
		w.header.WriteSubset(bw, excludedNoBody)
		bw.WriteString("\r\n")
		if bw.Flush() != nil {
			w.failed = true
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.header.Del("Content-Length")
		}
	}
}

var excludedNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func (w *h1Writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	if !w.sentHeader {
		if len(w.pending)+len(p) <= cap(w.pending) {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		first := p
		if len(w.pending) > 0 {
			first = w.pending
		}
		w.sendHeader(first)
		w.writeBody(w.pending)
		w.pending = w.pending[:0]
	}
	w.writeBody(p)
	if w.failed {
		return 0, errors.New("write answer: connection failed")
	}
	return len(p), nil
}

// Flush implements http.Flusher.
func (w *h1Writer) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.flushPending()
	if w.writer().Flush() != nil {
		w.failed = true
	}
}

func (w *h1Writer) flushPending() {
	if !w.sentHeader {
		w.sendHeader(w.pending)
		w.writeBody(w.pending)
		w.pending = w.pending[:0]
	}
}

func (w *h1Writer) writeBody(p []byte) {
	if len(p) == 0 || w.req.Method == http.MethodHead {
		return
	}
	bw := w.writer()
	var err error
	if w.chunking {
		var b [16]byte
		bw.Write(strconv.AppendInt(b[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err = bw.WriteString("\r\n")
	} else {
		_, err = bw.Write(p)
	}
	if err != nil {
		w.failed = true // bufio keeps the error: nothing more reaches the client
	}
}

// sendHeader writes the status line and headers; p is the start of the
// body (for the Content-Type and, once the handler is done, the length).
func (w *h1Writer) sendHeader(p []byte) {
	w.sentHeader = true
	h := w.header
	isHEAD := w.req.Method == http.MethodHead
	var trailerHeader http.Header // TrailerPrefix keys, set aside
	hasTrailers := false
	for k, v := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if trailerHeader == nil {
				trailerHeader = http.Header{}
			}
			trailerHeader[k] = v
			hasTrailers = true
		}
	}
	for k := range trailerHeader {
		delete(h, k)
	}
	for _, v := range h["Trailer"] {
		hasTrailers = true
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				if k := http.CanonicalHeaderKey(f); !forbiddenTrailer[k] {
					w.trailers = append(w.trailers, k)
				}
			}
		}
	}
	te := h.Get("Transfer-Encoding")
	hasTE := te != ""
	_, hasCLHeader := h["Content-Length"]
	var setCL bool
	if w.handlerDone && !hasTrailers && !hasTE && bodyAllowedForStatus(w.status) && !hasCLHeader && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		setCL = true
	}
	hasCL := w.contentLength != -1
	if h.Get("Connection") == "close" || w.drain.Load() {
		w.closeAfter = true // as net/http, whose keep-alives end with Shutdown
	}
	if w.body != nil && !w.closeAfter && !w.body.discard() {
		w.closeAfter = true
	}
	var contentType string
	if bodyAllowedForStatus(w.status) {
		_, haveType := h["Content-Type"]
		if h.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			contentType = http.DetectContentType(p)
		}
	} else {
		delete(h, "Content-Length")
		delete(h, "Transfer-Encoding")
		if w.status == http.StatusNotModified {
			delete(h, "Content-Type")
		}
	}
	_, hasDate := h["Date"]
	if hasCL && hasTE && te != "identity" {
		delete(h, "Content-Length")
		hasCL = false
	}
	var transferEncoding string
	switch {
	case isHEAD || !bodyAllowedForStatus(w.status):
		delete(h, "Transfer-Encoding")
	case hasCL:
		delete(h, "Transfer-Encoding")
	case hasTE && te == "identity":
		w.closeAfter = true
		delete(h, "Transfer-Encoding")
	default:
		w.chunking = true
		transferEncoding = "chunked"
		delete(h, "Transfer-Encoding")
		delete(h, "Content-Length")
	}
	var connection string
	if w.closeAfter && !hasToken(h.Get("Connection"), "close") && w.status != http.StatusSwitchingProtocols {
		delete(h, "Connection")
		connection = "close"
	}

	bw := w.writer()
	writeStatusLine(bw, w.status)
	h.Write(bw)
	if contentType != "" {
		bw.WriteString("Content-Type: " + contentType + "\r\n")
	}
	if connection != "" {
		bw.WriteString("Connection: close\r\n")
	}
	if transferEncoding != "" {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if !hasDate {
		var b [len(http.TimeFormat) + 8]byte
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(b[:0], http.TimeFormat))
		bw.WriteString("\r\n")
	}
	if setCL {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(w.contentLength, 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	for k, v := range trailerHeader {
		h[k] = v // for the trailers
	}
}

// finish completes the answer after the handler; false when the
// connection must close.
func (w *h1Writer) finish() bool {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.flushPending()
	bw := w.writer()
	if w.chunking {
		bw.WriteString("0\r\n")
		if t := w.finalTrailers(); t != nil {
			t.Write(bw)
		}
		bw.WriteString("\r\n")
	}
	err := bw.Flush()
	bw.Reset(nil)
	writerPool.Put(bw)
	w.bw = nil
	if err != nil || w.failed || w.closeAfter {
		return false
	}
	if w.contentLength != -1 && w.written != w.contentLength && w.req.Method != http.MethodHead {
		return false
	}
	if w.body != nil && !w.body.discard() {
		return false
	}
	return true
}

// abort drops the answer (the handler panicked).
func (w *h1Writer) abort() {
	if w.bw != nil {
		w.bw.Reset(nil)
		writerPool.Put(w.bw)
		w.bw = nil
	}
}

func (w *h1Writer) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.header {
		if kk, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if t == nil {
				t = http.Header{}
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = http.Header{}
		}
		for _, v := range w.header[k] {
			t.Add(k, v)
		}
	}
	return t
}

func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	if text := http.StatusText(code); text != "" {
		var b [8]byte
		bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
		return
	}
	fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}

func hasToken(v, token string) bool {
	for f := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(textproto.TrimString(f), token) {
			return true
		}
	}
	return false
}

// forbiddenTrailer are the header names net/http does not send as
// trailers (httpguts.ValidTrailerHeader).
var forbiddenTrailer = map[string]bool{
	"Authorization": true, "Cache-Control": true, "Connection": true, "Content-Encoding": true,
	"Content-Length": true, "Content-Range": true, "Content-Type": true, "Expect": true, "Host": true,
	"Keep-Alive": true, "Max-Forwards": true, "Pragma": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Proxy-Connection": true, "Range": true, "Realm": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Www-Authenticate": true,
}
