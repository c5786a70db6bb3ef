package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// The raw-frame conformance suite of the server: a hand-driven HTTP/2
// client (x/net's Framer on a real mTLS connection) sends what RFC 9113
// and docs/security.md's limits say a server must refuse, and checks the
// error the server answers with. It uses only the exported API, so that
// it holds for any implementation behind Server.

// knownBugs runs the tests of conformance bugs not fixed yet: they fail.
var knownBugs = flag.Bool("hbone.knownbugs", false, "run the HTTP/2 conformance tests of known, unfixed bugs (they fail)")

// knownBug skips the rest of the test unless -hbone.knownbugs is set.
func knownBug(t *testing.T, bug string) {
	t.Helper()
	if !*knownBugs {
		t.Skip("bug: " + bug + " (run with -hbone.knownbugs to see it fail)")
	}
}

// confTimeout bounds every wait of the conformance tests. The peers are
// on loopback: a correct answer takes milliseconds.
const confTimeout = 10 * time.Second

// floodTimeout bounds a flood test's writes: floods are long by design.
const floodTimeout = 2 * time.Minute

// confEnv is a Server on loopback with the CA that issued its certificate.
type confEnv struct {
	ca   *identitytest.CA
	srv  *Server
	addr netip.AddrPort
}

// confServer starts a Server with h and returns it.
func confServer(t *testing.T, h Handler) *confEnv {
	t.Helper()
	ca := identitytest.New(t, "cluster.local")
	e := &confEnv{ca: ca, srv: &Server{TLSConfig: ca.ServerTLS(t, ca.ID("/ns/b/sa/server")), Handler: h}}
	e.addr = confServe(t, e.srv)
	return e
}

// holdHandler accepts every CONNECT and reads nothing until the stream
// or the connection ends: the stream stays open.
func holdHandler() Handler {
	return HandlerFunc(func(ctx context.Context, _ *Request, tun *Tunnel) {
		if _, err := tun.Accept(); err != nil {
			return
		}
		<-ctx.Done()
	})
}

// echoHandler accepts every CONNECT and echoes the stream, then half-closes.
func echoHandler() Handler {
	return HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// rawH2 is one end of an HTTP/2 connection driven frame by frame.
type rawH2 struct {
	t    *testing.T
	conn net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func newRawH2(t *testing.T, c net.Conn) *rawH2 {
	p := &rawH2{t: t, conn: c, bw: bufio.NewWriterSize(c, 64<<10)}
	p.fr = http2.NewFramer(p.bw, c)
	p.fr.AllowIllegalWrites = true
	p.fr.SetMaxReadFrameSize(maxFrameSize)
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	return p
}

// dialRaw opens an mTLS connection to e's server, writes the client
// preface and SETTINGS, and reads the server's SETTINGS and its ACK of
// ours, acknowledging the server's: after it, the connection is idle.
func (e *confEnv) dialRaw(t *testing.T, settings ...http2.Setting) *rawH2 {
	t.Helper()
	cfg, err := e.ca.PoolTLS(t, nil)(context.Background(), e.ca.ID("/ns/a/sa/client"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Timeout: confTimeout}
	tc, err := tls.DialWithDialer(&d, "tcp", e.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	p := newRawH2(t, tc)
	p.bw.WriteString(http2.ClientPreface)
	p.fr.WriteSettings(settings...)
	p.flush()
	var gotSettings, gotAck bool
	for !gotSettings || !gotAck {
		f := p.read()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				gotAck = true
			} else {
				gotSettings = true
				p.fr.WriteSettingsAck()
				p.flush()
			}
		case *http2.WindowUpdateFrame:
		default:
			t.Fatalf("during the preface: unexpected %v", f.Header())
		}
	}
	return p
}

func (p *rawH2) flush() {
	p.t.Helper()
	if err := p.bw.Flush(); err != nil {
		p.t.Fatalf("writing frames: %v", err)
	}
}

// read returns the next frame; it fails the test if there is none.
func (p *rawH2) read() http2.Frame {
	p.t.Helper()
	f, err := p.next()
	if err != nil {
		p.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// next returns the next frame within confTimeout, or the read error.
func (p *rawH2) next() (http2.Frame, error) {
	p.conn.SetReadDeadline(time.Now().Add(confTimeout))
	f, err := p.fr.ReadFrame()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			p.t.Fatalf("no frame from the peer within %v", confTimeout)
		}
	}
	return f, err
}

// block hpack-encodes name/value pairs.
func (p *rawH2) block(kv ...string) []byte {
	p.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(p.hbuf.Bytes())
}

// headers writes one HEADERS frame with END_HEADERS and flushes.
func (p *rawH2) headers(id uint32, endStream bool, kv ...string) {
	p.t.Helper()
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(kv...), EndStream: endStream, EndHeaders: true})
	p.flush()
}

// connect opens stream id with a CONNECT to a test authority.
func (p *rawH2) connect(id uint32, endStream bool, extra ...string) {
	p.t.Helper()
	p.headers(id, endStream, append([]string{":method", "CONNECT", ":authority", "10.0.0.1:80"}, extra...)...)
}

// status reads until the response HEADERS of stream id and returns :status.
func (p *rawH2) status(id uint32) string {
	p.t.Helper()
	for {
		switch f := p.read().(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status")
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				p.t.Fatalf("stream %d reset (%v) before its response", id, f.ErrCode)
			}
		case *http2.GoAwayFrame:
			p.t.Fatalf("GOAWAY %v before the response of stream %d", f.ErrCode, id)
		}
	}
}

// ping writes a PING and reads until its ACK; frames read before it are
// returned. It fails the test if the connection ends first.
func (p *rawH2) ping() []frameInfo {
	p.t.Helper()
	data := [8]byte{'c', 'o', 'n', 'f'}
	p.fr.WritePing(false, data)
	p.flush()
	var before []frameInfo
	for {
		f, err := p.next()
		if err != nil {
			p.t.Fatalf("connection ended (%v) before the PING ACK; frames before: %v", err, describe(before))
		}
		if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() && pf.Data == data {
			return before
		}
		before = append(before, infoOf(f))
	}
}

// outcome is how the peer reacted to what a test sent.
type outcome struct {
	goAway    *http2.ErrCode // GOAWAY's code, if one came
	rst       map[uint32]http2.ErrCode
	closed    bool // the connection ended
	readErr   error
	frames    []frameInfo
	pingAcked bool
}

func (o outcome) String() string {
	s := fmt.Sprintf("closed=%v", o.closed)
	if o.goAway != nil {
		s += fmt.Sprintf(" GOAWAY %v", *o.goAway)
	}
	for id, code := range o.rst {
		s += fmt.Sprintf(" RST_STREAM(%d) %v", id, code)
	}
	if o.readErr != nil {
		s += fmt.Sprintf(" (read: %v)", o.readErr)
	}
	return s + " frames: " + describe(o.frames)
}

// result writes a PING (unless the connection ended already) and reads
// until its ACK or the end of the connection, collecting what came.
func (p *rawH2) result() outcome {
	p.t.Helper()
	o := outcome{rst: map[uint32]http2.ErrCode{}}
	data := [8]byte{'r', 'e', 's', 'u', 'l', 't'}
	p.fr.WritePing(false, data)
	p.bw.Flush() // fails if the peer closed already: the reads tell
	for {
		f, err := p.next()
		if err != nil {
			o.closed, o.readErr = true, err
			return o
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			code := f.ErrCode
			o.goAway = &code
		case *http2.RSTStreamFrame:
			o.rst[f.StreamID] = f.ErrCode
		case *http2.PingFrame:
			if f.IsAck() && f.Data == data {
				o.pingAcked = true
				return o
			}
		}
		o.frames = append(o.frames, infoOf(f))
	}
}

// await reads, without writing anything, until stop matches a frame
// or the connection ends, collecting what came. Tests that expect the
// connection to end use it rather than result: a frame written after
// the one the server refuses could be left unread when the server
// closes, and the TCP reset that follows can discard the GOAWAY.
func (p *rawH2) await(stop func(f http2.Frame) bool) outcome {
	p.t.Helper()
	o := outcome{rst: map[uint32]http2.ErrCode{}}
	for {
		f, err := p.next()
		if err != nil {
			o.closed, o.readErr = true, err
			return o
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			code := f.ErrCode
			o.goAway = &code
		case *http2.RSTStreamFrame:
			o.rst[f.StreamID] = f.ErrCode
		}
		o.frames = append(o.frames, infoOf(f))
		if stop(f) {
			return o
		}
	}
}

// expect is what a test expects of the server, and how to collect it.
type expect struct {
	closes bool                   // the server closes the connection: read until it does
	rstOn  uint32                 // else, if not 0: read until RST_STREAM on this stream
	stop   func(http2.Frame) bool // else, if not nil: read until it matches
	check  func(t *testing.T, o outcome)
}

func (p *rawH2) collect(x expect) outcome {
	p.t.Helper()
	switch {
	case x.closes:
		return p.await(func(http2.Frame) bool { return false })
	case x.stop != nil:
		return p.await(x.stop)
	case x.rstOn != 0:
		return p.await(func(f http2.Frame) bool {
			rf, ok := f.(*http2.RSTStreamFrame)
			return ok && rf.StreamID == x.rstOn
		})
	}
	return p.result()
}

func wantConnErr(code http2.ErrCode) expect {
	return expect{closes: true, check: func(t *testing.T, o outcome) { o.connErr(t, code) }}
}

// wantStreamErr expects RST_STREAM code on stream id; then a PING
// checks that the connection is still open.
func wantStreamErr(id uint32, code http2.ErrCode) expect {
	return expect{rstOn: id, check: func(t *testing.T, o outcome) { o.streamErr(t, id, code) }}
}

func wantIgnored() expect { return expect{check: func(t *testing.T, o outcome) { o.ignored(t) }} }

// connErr checks that o is a connection error with code: a GOAWAY with
// that code (RFC 9113 §5.4.1), then the end of the connection. The
// server waits for a write under way before its GOAWAY
// (TestConformanceServerGoAwayWhileWriting).
func (o outcome) connErr(t *testing.T, code http2.ErrCode) {
	t.Helper()
	if !o.closed || o.goAway == nil || *o.goAway != code {
		t.Errorf("peer's reaction = %v, want GOAWAY %v and the connection closed", o, code)
	}
}

// streamErr checks that o is a stream error with code on stream id and
// that the connection stayed open.
func (o outcome) streamErr(t *testing.T, id uint32, code http2.ErrCode) {
	t.Helper()
	if got, ok := o.rst[id]; !ok || got != code || o.goAway != nil || o.closed {
		t.Errorf("peer's reaction = %v, want RST_STREAM(%d) %v and the connection open", o, id, code)
	}
}

// ignored checks that the connection is open and unaffected: no GOAWAY,
// no RST_STREAM.
func (o outcome) ignored(t *testing.T) {
	t.Helper()
	if o.goAway != nil || o.closed || len(o.rst) > 0 {
		t.Errorf("peer's reaction = %v, want nothing (frame ignored, connection open)", o)
	}
}

// frameInfo is what the tests keep of a frame the Framer may reuse.
type frameInfo struct {
	h      http2.FrameHeader
	status string // :status of a response HEADERS
}

func infoOf(f http2.Frame) frameInfo {
	fi := frameInfo{h: f.Header()}
	if hf, ok := f.(*http2.MetaHeadersFrame); ok {
		fi.status = hf.PseudoValue("status")
	}
	return fi
}

func describe(fs []frameInfo) string {
	var b bytes.Buffer
	for _, f := range fs {
		fmt.Fprintf(&b, "[%v", f.h)
		if f.status != "" {
			fmt.Fprintf(&b, " :status=%s", f.status)
		}
		b.WriteString("] ")
	}
	return b.String()
}

// TestConformanceServer sends a frame sequence to a fresh connection and
// checks the server's reaction against RFC 9113 and docs/security.md.
func TestConformanceServer(t *testing.T) {
	type sequence func(t *testing.T, p *rawH2)
	tests := []struct {
		name    string
		handler Handler // default holdHandler
		bug     string  // a known bug: the test is skipped unless -hbone.knownbugs
		send    sequence
		want    expect
	}{
		// §6.9.1: a WINDOW_UPDATE that takes a window past 2^31-1.
		{
			name: "connection window overflow",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteWindowUpdate(0, 1<<31-1) },
			want: wantConnErr(http2.ErrCodeFlowControl),
		},
		{
			name: "stream window overflow",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.fr.WriteWindowUpdate(1, 1<<31-1)
			},
			want: wantStreamErr(1, http2.ErrCodeFlowControl),
		},
		// §6.9.1: DATA past the receive window the server advertised
		// (4 MiB per stream, docs/security.md).
		{
			name: "DATA past the stream window",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				chunk := make([]byte, maxFrameSize)
				for range streamWindow / maxFrameSize {
					p.fr.WriteData(1, false, chunk)
				}
				p.fr.WriteData(1, false, []byte{1})
			},
			want: wantStreamErr(1, http2.ErrCodeFlowControl),
		},
		// ... and past the connection window (16 MiB): streams of 3 MiB
		// each stay within their own window.
		{
			name: "DATA past the connection window",
			send: func(t *testing.T, p *rawH2) {
				// 5 × 3 MiB, then 1 MiB and 1 byte on a sixth stream: the
				// byte is the first past the window and the last frame
				// written, so that the GOAWAY is not lost to a reset.
				chunk := make([]byte, maxFrameSize)
				for i := range uint32(6) {
					id := 2*i + 1
					p.connect(id, false)
					p.status(id)
					frames := 3
					if i == 5 {
						frames = 1
					}
					for range frames {
						p.fr.WriteData(id, false, chunk)
					}
				}
				p.fr.WriteData(11, false, []byte{1})
			},
			want: wantConnErr(http2.ErrCodeFlowControl),
		},
		// §6.9: a WINDOW_UPDATE of 0 is a stream error on a stream, a
		// connection error on the connection.
		{
			name: "WINDOW_UPDATE of 0 on the connection",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteWindowUpdate(0, 0) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "WINDOW_UPDATE of 0 on a stream",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.fr.WriteWindowUpdate(1, 0)
			},
			want: wantStreamErr(1, http2.ErrCodeProtocol),
		},
		// §5.1.1: clients open odd streams.
		{
			name: "HEADERS on an even stream",
			send: func(t *testing.T, p *rawH2) { p.connect(2, false) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// §5.1.1: "An endpoint that receives an unexpected stream
		// identifier MUST respond with a connection error of type
		// PROTOCOL_ERROR": a new stream below the last one opened.
		{
			name: "HEADERS on a stream below the last one",
			send: func(t *testing.T, p *rawH2) {
				p.connect(5, false)
				p.status(5)
				p.connect(3, false)
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// §5.1 half-closed (remote): frames other than WINDOW_UPDATE,
		// PRIORITY and RST_STREAM are a stream error STREAM_CLOSED.
		{
			name: "DATA after END_STREAM, stream half-closed",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, true)
				p.status(1)
				p.fr.WriteData(1, false, []byte("late"))
			},
			want: wantStreamErr(1, http2.ErrCodeStreamClosed),
		},
		// §5.1 closed: "an endpoint that receives any frames after
		// receiving a frame with the END_STREAM flag set MUST treat that
		// as a connection error of type STREAM_CLOSED". x/net answers
		// RST_STREAM STREAM_CLOSED; either is accepted.
		{
			name:    "DATA after END_STREAM, stream closed",
			handler: echoHandler(),
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, true)
				p.status(1)
				// The echo handler half-closes once it read our END_STREAM.
				for {
					if df, ok := p.read().(*http2.DataFrame); ok && df.StreamID == 1 && df.StreamEnded() {
						break
					}
				}
				p.ping() // the server has processed both END_STREAMs
				p.fr.WriteData(1, false, []byte("late"))
			},
			want: expect{rstOn: 1, check: func(t *testing.T, o outcome) {
				if o.rst[1] != http2.ErrCodeStreamClosed && (o.goAway == nil || *o.goAway != http2.ErrCodeStreamClosed) {
					t.Errorf("peer's reaction = %v, want RST_STREAM(1) or GOAWAY STREAM_CLOSED", o)
				}
			}},
		},
		// §5.1 closed: DATA after the client's own RST_STREAM.
		{
			name: "DATA after RST_STREAM",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
				p.fr.WriteData(1, false, []byte("late"))
			},
			want: expect{rstOn: 1, check: func(t *testing.T, o outcome) {
				if o.rst[1] != http2.ErrCodeStreamClosed && (o.goAway == nil || *o.goAway != http2.ErrCodeStreamClosed) {
					t.Errorf("peer's reaction = %v, want RST_STREAM(1) or GOAWAY STREAM_CLOSED", o)
				}
			}},
		},
		// §5.1: "An endpoint MUST ignore frames that it receives on closed
		// streams after it has sent a RST_STREAM frame": the trailers of
		// a request the server refused with 400 and RST_STREAM NO_ERROR
		// cross that reset.
		{
			name: "trailers after the server's RST_STREAM",
			send: func(t *testing.T, p *rawH2) {
				p.headers(1, false, ":method", "POST", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80")
				if got := p.status(1); got != "400" {
					t.Fatalf("POST answered %s, want 400", got)
				}
				p.ping() // the server's RST_STREAM NO_ERROR is out
				p.fr.WriteData(1, false, []byte("body"))
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block("trailer", "x"), EndStream: true, EndHeaders: true})
			},
			want: wantIgnored(),
		},
		// The same with a CONNECT the handler refuses: the 403 and
		// RST_STREAM NO_ERROR cross the client's DATA and trailers.
		{
			name:    "DATA and trailers after a refused CONNECT",
			handler: HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) { tun.Reject(403, "denied") }),
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				if got := p.status(1); got != "403" {
					t.Fatalf("CONNECT answered %s, want 403", got)
				}
				p.ping()
				p.fr.WriteData(1, false, []byte("body"))
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block("trailer", "x"), EndStream: true, EndHeaders: true})
			},
			want: wantIgnored(),
		},
		// §5.1 closed: HEADERS after the client's own RST_STREAM. §5.1
		// wants a stream error STREAM_CLOSED; x/net's server, which
		// forgets closed streams, a connection error PROTOCOL_ERROR (it
		// cannot tell the stream from a new one below the last).
		{
			name: "HEADERS after RST_STREAM",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
				p.connect(1, true)
			},
			want: wantConnOrStreamErr(1, http2.ErrCodeStreamClosed, http2.ErrCodeProtocol),
		},
		// §5.1 closed, after both END_STREAMs: a connection error.
		{
			name:    "HEADERS after END_STREAM, stream closed",
			handler: echoHandler(),
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, true)
				p.status(1)
				for {
					if df, ok := p.read().(*http2.DataFrame); ok && df.StreamID == 1 && df.StreamEnded() {
						break
					}
				}
				p.ping()
				p.connect(1, true)
			},
			want: expect{closes: true, check: func(t *testing.T, o outcome) {
				if !o.closed || o.goAway == nil || (*o.goAway != http2.ErrCodeStreamClosed && *o.goAway != http2.ErrCodeProtocol) {
					t.Errorf("peer's reaction = %v, want GOAWAY STREAM_CLOSED or PROTOCOL_ERROR and the connection closed", o)
				}
			}},
		},
		// §8.1: trailers end the stream and carry no pseudo-header
		// fields.
		{
			name: "second HEADERS without END_STREAM",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.headers(1, false, "trailer", "x")
			},
			want: wantConnOrStreamErr(1, http2.ErrCodeProtocol),
		},
		{
			name: "pseudo-header field in trailers",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.headers(1, true, ":method", "CONNECT")
			},
			want: wantStreamErr(1, http2.ErrCodeProtocol),
		},
		// §6.4: RST_STREAM on an idle stream.
		{
			name: "RST_STREAM on an idle stream",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteRSTStream(1, http2.ErrCodeCancel) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "WINDOW_UPDATE on an idle stream",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteWindowUpdate(1, 1) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "DATA on an idle stream",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteData(1, false, []byte("x")) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// §6.5.2: SETTINGS values out of range.
		{
			name: "SETTINGS_ENABLE_PUSH 2",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2})
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
			},
			want: wantConnErr(http2.ErrCodeFlowControl),
		},
		{
			name: "SETTINGS_MAX_FRAME_SIZE below 2^14",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1<<14 - 1})
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "SETTINGS_MAX_FRAME_SIZE 2^24",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24})
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// §6.5: a length that is not a multiple of 6, an ACK with a
		// payload, a stream other than 0.
		{
			name: "SETTINGS of length 5",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteRawFrame(http2.FrameSettings, 0, 0, make([]byte, 5)) },
			want: wantConnErr(http2.ErrCodeFrameSize),
		},
		{
			name: "SETTINGS ACK with a payload",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteRawFrame(http2.FrameSettings, http2.FlagSettingsAck, 0, make([]byte, 6))
			},
			want: wantConnErr(http2.ErrCodeFrameSize),
		},
		{
			name: "SETTINGS on stream 1",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteRawFrame(http2.FrameSettings, 0, 1, nil) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// docs/security.md: at most 100 entries per SETTINGS frame.
		{
			name: "SETTINGS of 101 entries",
			send: func(t *testing.T, p *rawH2) {
				s := make([]http2.Setting, 101)
				for i := range s {
					s[i] = http2.Setting{ID: http2.SettingID(0x100 + i), Val: 1}
				}
				p.fr.WriteSettings(s...)
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "SETTINGS of 100 unknown entries are acknowledged",
			send: func(t *testing.T, p *rawH2) {
				s := make([]http2.Setting, 100)
				for i := range s {
					s[i] = http2.Setting{ID: http2.SettingID(0x100 + i), Val: 1}
				}
				p.fr.WriteSettings(s...)
			},
			want: expect{check: func(t *testing.T, o outcome) {
				o.ignored(t)
				if len(o.frames) != 1 || o.frames[0].h.Type != http2.FrameSettings || !o.frames[0].h.Flags.Has(http2.FlagSettingsAck) {
					t.Errorf("answer = %s, want one SETTINGS ACK", describe(o.frames))
				}
			}},
		},
		// §6.10: CONTINUATION must follow HEADERS without END_HEADERS on
		// the same stream, with nothing in between.
		{
			name: "CONTINUATION without HEADERS",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteContinuation(1, true, p.block(":method", "CONNECT")) },
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "CONTINUATION on another stream",
			send: func(t *testing.T, p *rawH2) {
				b := p.block(":method", "CONNECT", ":authority", "10.0.0.1:80")
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:2]})
				p.fr.WriteContinuation(3, true, b[2:])
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		{
			name: "PING inside a header block",
			send: func(t *testing.T, p *rawH2) {
				b := p.block(":method", "CONNECT", ":authority", "10.0.0.1:80")
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:2]})
				p.fr.WritePing(false, [8]byte{})
				p.fr.WriteContinuation(1, true, b[2:])
			},
			want: wantConnErr(http2.ErrCodeProtocol),
		},
		// A CONNECT split over many CONTINUATION frames is one request.
		{
			name: "CONNECT in 1-byte CONTINUATIONs",
			send: func(t *testing.T, p *rawH2) {
				b := p.block(":method", "CONNECT", ":authority", "10.0.0.1:80")
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:1]})
				for i := 1; i < len(b); i++ {
					p.fr.WriteContinuation(1, i == len(b)-1, b[i:i+1])
				}
				p.flush()
				if got := p.status(1); got != "200" {
					t.Errorf("CONNECT in CONTINUATIONs answered %s, want 200", got)
				}
			},
			want: wantIgnored(),
		},
		// §6.3: PRIORITY is ignored (RFC 9113 deprecates its signals),
		// on idle, open and closed streams alike.
		{
			name: "PRIORITY frames ignored",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WritePriority(7, http2.PriorityParam{StreamDep: 0, Weight: 200})
				p.connect(1, false)
				p.fr.WritePriority(1, http2.PriorityParam{StreamDep: 7, Exclusive: true, Weight: 1})
				p.status(1)
				p.fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 16})
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: p.block(":method", "CONNECT", ":authority", "10.0.0.1:80"), EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 1, Weight: 3}})
				p.flush()
				if got := p.status(9); got != "200" {
					t.Errorf("CONNECT with priority answered %s, want 200", got)
				}
			},
			want: wantIgnored(),
		},
		{
			name: "PRIORITY of length 4",
			send: func(t *testing.T, p *rawH2) { p.fr.WriteRawFrame(http2.FramePriority, 0, 1, make([]byte, 4)) },
			want: expect{rstOn: 1, check: func(t *testing.T, o outcome) {
				// §6.3 wants a stream error; x/net's Framer makes it a
				// connection error, which h2spec accepts too.
				if o.rst[1] != http2.ErrCodeFrameSize {
					o.connErr(t, http2.ErrCodeFrameSize)
				}
			}},
		},
		// RFC 7540 §5.3.1 (kept by RFC 9113 §5.3.1): a stream cannot
		// depend on itself.
		{
			name: "PRIORITY on itself",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false)
				p.status(1)
				p.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 16})
			},
			want: wantStreamErr(1, http2.ErrCodeProtocol),
		},
		{
			name: "HEADERS with a priority on itself",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block(":method", "CONNECT", ":authority", "10.0.0.1:80"), EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 1, Weight: 16}})
				p.flush()
			},
			want: wantMalformed(1),
		},
		// §5.5: frames of unknown types are ignored, inside a stream too.
		{
			name: "unknown frame types ignored",
			send: func(t *testing.T, p *rawH2) {
				p.fr.WriteRawFrame(0xfa, 0xff, 0, []byte("unknown"))
				p.connect(1, false)
				p.status(1)
				p.fr.WriteRawFrame(0xfb, 0x01, 1, bytes.Repeat([]byte{7}, 1000))
				p.fr.WriteRawFrame(0xfc, 0x00, 99, nil)
			},
			want: wantIgnored(),
		},
		// §8.5: a CONNECT carries :authority and neither :scheme nor
		// :path (without an extended CONNECT, which HBONE does not do);
		// §8.2.2: connection-specific fields, and te other than
		// "trailers", make a request malformed; §8.3: so do upper-case
		// names and pseudo-header fields after regular ones. A malformed
		// request is never tunnelled: it is reset with PROTOCOL_ERROR
		// (§8.1.1), as x/net's server and Rust's h2 (ztunnel) do.
		{
			name: "malformed CONNECT: :scheme and :path",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, ":scheme", "https", ":path", "/") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: :path",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, ":path", "/") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: :scheme",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, ":scheme", "https") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: connection header",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "connection", "keep-alive") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: keep-alive header",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "keep-alive", "timeout=5") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: proxy-connection header",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "proxy-connection", "keep-alive") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: transfer-encoding header",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "transfer-encoding", "chunked") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: upgrade header",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "upgrade", "websocket") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: te other than trailers",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "te", "trailers, deflate") },
			want: wantMalformed(1),
		},
		{
			name: "CONNECT with te: trailers is tunnelled",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false, "te", "trailers")
				if got := p.status(1); got != "200" {
					t.Errorf("CONNECT with te: trailers answered %s, want 200", got)
				}
			},
			want: wantIgnored(),
		},
		{
			name: "malformed CONNECT: upper-case field name",
			send: func(t *testing.T, p *rawH2) { p.connect(1, false, "Forwarded", "for=1.2.3.4") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: no :authority",
			send: func(t *testing.T, p *rawH2) { p.headers(1, false, ":method", "CONNECT") },
			want: wantMalformed(1),
		},
		{
			name: "malformed CONNECT: pseudo-header after a regular one",
			send: func(t *testing.T, p *rawH2) {
				p.headers(1, false, ":method", "CONNECT", "forwarded", "for=1.2.3.4", ":authority", "10.0.0.1:80")
			},
			want: wantMalformed(1),
		},
		{
			name: "malformed request: no :method",
			send: func(t *testing.T, p *rawH2) { p.headers(1, false, ":authority", "10.0.0.1:80") },
			want: wantMalformed(1),
		},
		{
			name: "a malformed CONNECT leaves the connection usable",
			send: func(t *testing.T, p *rawH2) {
				p.connect(1, false, "connection", "close")
				p.connect(3, false)
				if got := p.status(3); got != "200" {
					t.Errorf("CONNECT after a malformed one answered %s, want 200", got)
				}
			},
			want: expect{check: func(t *testing.T, o outcome) {
				if o.goAway != nil || o.closed {
					t.Errorf("peer's reaction = %v, want the connection open", o)
				}
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.bug != "" {
				knownBug(t, tt.bug)
			}
			h := tt.handler
			if h == nil {
				h = holdHandler()
			}
			e := confServer(t, h)
			p := e.dialRaw(t)
			tt.send(t, p)
			p.bw.Flush()
			tt.want.check(t, p.collect(tt.want))
		})
	}
}

// answeredOrReset matches the response HEADERS or a RST_STREAM of stream id.
func answeredOrReset(id uint32) func(http2.Frame) bool {
	return func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.StreamID == id
		case *http2.RSTStreamFrame:
			return f.StreamID == id
		}
		return false
	}
}

// wantMalformed expects stream id reset with PROTOCOL_ERROR, never
// answered 200, and the connection open.
func wantMalformed(id uint32) expect {
	return expect{rstOn: id, check: func(t *testing.T, o outcome) {
		o.streamErr(t, id, http2.ErrCodeProtocol)
		for _, f := range o.frames {
			if f.h.Type == http2.FrameHeaders && f.h.StreamID == id && f.status == "200" {
				t.Errorf("malformed request on stream %d tunnelled (200); frames: %s", id, describe(o.frames))
			}
		}
	}}
}

// wantConnOrStreamErr expects a connection error with one of codes, or a
// stream error on stream id with one of codes.
func wantConnOrStreamErr(id uint32, codes ...http2.ErrCode) expect {
	return expect{rstOn: id, check: func(t *testing.T, o outcome) {
		t.Helper()
		for _, code := range codes {
			if rst, ok := o.rst[id]; ok && rst == code && o.goAway == nil {
				return
			}
			if o.goAway != nil && *o.goAway == code {
				return
			}
		}
		t.Errorf("peer's reaction = %v, want GOAWAY or RST_STREAM(%d) with one of %v", o, id, codes)
	}}
}

// TestConformanceServerGoAwayNotLost: RFC 9113 §5.4.1 says an endpoint
// that meets a connection error sends GOAWAY with the error's code. A
// client has often written more frames behind the one refused; the
// GOAWAY must still reach it, though the server closes with those
// frames unread.
func TestConformanceServerGoAwayNotLost(t *testing.T) {
	e := confServer(t, holdHandler())
	p := e.dialRaw(t)
	// The refused frame, then 256 KiB of PINGs behind it: more than
	// the server reads ahead, so that some are unread when it closes.
	// Write errors mean the server closed: expected.
	p.fr.WriteWindowUpdate(0, 1<<31-1)
	for i := range 256 << 10 / 17 {
		p.fr.WritePing(false, [8]byte{byte(i)})
	}
	p.bw.Flush()
	wantConnErr(http2.ErrCodeFlowControl).check(t, p.await(func(http2.Frame) bool { return false }))
}

// TestConformanceServerGoAwayWhileWriting: the GOAWAY of a connection
// error must be sent also when a stream is writing at that moment (a
// busy tunnel), not only on an idle connection.
func TestConformanceServerGoAwayWhileWriting(t *testing.T) {
	e := confServer(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			return
		}
		chunk := make([]byte, 16<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}))
	// Windows large enough that the server never waits for ours.
	p := e.dialRaw(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	p.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	p.connect(1, false)
	p.status(1)
	for range 100 { // the server is writing DATA now
		if _, ok := p.read().(*http2.DataFrame); !ok {
			t.Fatal("want DATA from the writing handler")
		}
	}
	p.fr.WriteWindowUpdate(0, 0) // a connection error
	p.flush()
	o := p.await(func(http2.Frame) bool { return false })
	if o.goAway == nil || *o.goAway != http2.ErrCodeProtocol {
		t.Errorf("peer's reaction = %v, want GOAWAY PROTOCOL_ERROR before the close", o)
	}
}

// TestConformanceServerRapidReset is CVE-2023-44487 through the wire
// only: a client that opens streams and resets them before their answer
// gets GOAWAY ENHANCE_YOUR_CALM once it reset 1,000 more than were
// answered (docs/security.md), and not before.
func TestConformanceServerRapidReset(t *testing.T) {
	e := confServer(t, HandlerFunc(func(ctx context.Context, _ *Request, _ *Tunnel) {
		<-ctx.Done() // a slow upstream dial, ended by the reset
	}))
	p := e.dialRaw(t)
	const limit, max = 1000, 2000
	for i := range max {
		id := uint32(2*i + 1)
		p.connect(id, false)
		p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		// One pair at a time, each followed by a PING: nothing the
		// client wrote is left unread when the server closes, so the
		// GOAWAY is not lost to a TCP reset.
		o := p.result()
		if !o.pingAcked {
			o.connErr(t, http2.ErrCodeEnhanceYourCalm)
			if i < limit {
				t.Errorf("connection closed after %d resets, want at least %d", i+1, limit)
			}
			return
		}
	}
	t.Fatalf("connection still open after %d HEADERS+RST_STREAM pairs", max)
}

// TestConformanceServerPingFlood: PINGs are answered with their data,
// and a client that floods PINGs without reading the answers gets its
// connection closed (ENHANCE_YOUR_CALM past 10,000 queued answers,
// docs/security.md) instead of growing the server's memory.
func TestConformanceServerPingFlood(t *testing.T) {
	e := confServer(t, holdHandler())
	t.Run("answered", func(t *testing.T) {
		p := e.dialRaw(t)
		for i := range 100 {
			data := [8]byte{byte(i), 'p', 'i', 'n', 'g'}
			p.fr.WritePing(false, data)
			p.flush()
			f, ok := p.read().(*http2.PingFrame)
			if !ok || !f.IsAck() || f.Data != data {
				t.Fatalf("answer to PING %d = %v, want a PING ACK with its data", i, f)
			}
		}
		// A PING ACK from the client is not answered.
		p.fr.WritePing(true, [8]byte{1})
		p.result().ignored(t)
	})
	t.Run("flood without reading", func(t *testing.T) {
		p := e.dialRaw(t)
		// Shrink our receive buffer: the server's answers back up
		// in its queue early.
		if tc, ok := p.conn.(*tls.Conn); ok {
			tc.NetConn().(*net.TCPConn).SetReadBuffer(4 << 10)
		}
		// Idle, the server closes within a fraction of a second; it
		// once took longer than confTimeout on a machine loaded by
		// other -race test binaries (not reproduced since), so the flood
		// has its own, longer bound: a server that stops reading without
		// closing still fails the test.
		p.conn.SetWriteDeadline(time.Now().Add(floodTimeout))
		var err error
		const floodMax = 2_000_000
		for i := 0; i < floodMax && err == nil; i++ {
			err = p.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8), byte(i >> 16)})
			if err == nil && i%1000 == 999 {
				err = p.bw.Flush()
			}
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server stopped reading the flood without closing the connection: %v", err)
		}
		if err == nil {
			t.Fatalf("the server read %d PINGs it could not answer without closing the connection", floodMax)
		}
		// The server closed: read what it sent, up to the end.
		acks := 0
		var goAway *http2.ErrCode
		for {
			f, err := p.next()
			if err != nil {
				break
			}
			switch f := f.(type) {
			case *http2.PingFrame:
				acks++
			case *http2.GoAwayFrame:
				code := f.ErrCode
				goAway = &code
			}
		}
		// The GOAWAY may be lost to the reset of a connection closed
		// with the rest of the flood unread; when it arrived, it says why.
		if goAway != nil && *goAway != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", *goAway)
		}
		t.Logf("PING ACKs read before the close: %d, GOAWAY %v", acks, goAway)
	})
}

// TestConformanceServerContinuationFlood is CVE-2023-45288: a header
// block that never ends (CONTINUATION frames without END_HEADERS) must
// not be read and buffered without bound. The server stops at the 64 KiB
// header list limit (docs/security.md): it answers 400, resets the
// stream or closes the connection long before the client wrote 64 MiB.
func TestConformanceServerContinuationFlood(t *testing.T) {
	e := confServer(t, holdHandler())
	p := e.dialRaw(t)
	b := p.block(":method", "CONNECT", ":authority", "10.0.0.1:80")
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b})
	chunk := p.block("x-flood", string(bytes.Repeat([]byte{'a'}, 16<<10)))
	written := make(chan int, 1)
	go func() {
		// Written from here: the server's answer is read meanwhile.
		n := 0
		p.conn.SetWriteDeadline(time.Now().Add(confTimeout))
		for n < 64<<20 {
			if err := p.fr.WriteContinuation(1, false, chunk); err != nil {
				break
			}
			if err := p.bw.Flush(); err != nil {
				break
			}
			n += len(chunk)
		}
		written <- n
	}()
	var answer string
	for answer == "" {
		f, err := p.next()
		if err != nil {
			answer = "connection closed"
			break
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			answer = "GOAWAY " + f.ErrCode.String()
		case *http2.RSTStreamFrame:
			answer = "RST_STREAM " + f.ErrCode.String()
		case *http2.MetaHeadersFrame:
			answer = ":status " + f.PseudoValue("status")
		}
	}
	p.conn.Close() // ends the writer if the server only reset the stream
	n := <-written
	if n >= 64<<20 {
		t.Errorf("server read a header block of %d bytes without stopping it (then: %s)", n, answer)
	}
	if answer == ":status 200" {
		t.Errorf("server tunnelled a CONNECT whose header block is %d bytes", n)
	}
	t.Logf("server's answer to a CONTINUATION flood: %s after %d bytes", answer, n)
}
