package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// The fuzz targets of the HBONE wire: raw HTTP/2 frames into a server
// connection and into a client connection, both over real mTLS on an
// in-memory pipe (no ports, so that thousands of connections a second
// leave nothing behind), and the CONNECT request's headers.

const (
	// fuzzMaxInput bounds the frame bytes of one input.
	fuzzMaxInput = 64 << 10
	// fuzzHang is how long a peer may take to react once the input
	// ended before the target reports a hang. The connections are
	// in-memory: a correct peer answers in microseconds.
	fuzzHang = 5 * time.Second
)

// pipeListener is a net.Listener whose connections are net.Pipe ends.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial returns the client end of a new connection the listener accepts.
func (l *pipeListener) dial() (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		c.Close()
		s.Close()
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// frameWriter builds frame sequences for seeds.
type frameWriter struct {
	buf  bytes.Buffer
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

func newFrameWriter() *frameWriter {
	w := &frameWriter{}
	w.fr = http2.NewFramer(&w.buf, nil)
	w.fr.AllowIllegalWrites = true
	w.henc = hpack.NewEncoder(&w.hbuf)
	return w
}

// block hpack-encodes name/value pairs.
func (w *frameWriter) block(kv ...string) []byte {
	w.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		w.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(w.hbuf.Bytes())
}

// headers writes one HEADERS frame with END_HEADERS.
func (w *frameWriter) headers(id uint32, end bool, kv ...string) *frameWriter {
	w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.block(kv...), EndStream: end, EndHeaders: true})
	return w
}

// connect writes a CONNECT to authority on stream id.
func (w *frameWriter) connect(id uint32, authority string, kv ...string) *frameWriter {
	return w.headers(id, false, append([]string{":method", "CONNECT", ":authority", authority}, kv...)...)
}

func (w *frameWriter) bytes() []byte { return bytes.Clone(w.buf.Bytes()) }

// fuzzHandler answers by the authority's port, so that inputs reach every
// way a handler ends a stream: 0 reject, 1 accept and echo, 2 wait until
// the stream or connection ends (a slow upstream dial), 3 no answer (503).
// It reports a forwarded address or an authority that is not a valid
// unmapped ip:port through errorf. settled counts the running handlers
// that answered and read what was buffered: those only wait for the
// client from then on.
func fuzzHandler(errorf func(format string, args ...any), settled *atomic.Int64) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request, tun *Tunnel) {
		if ff, ok := req.ForwardedFor(); ok && (!ff.IsValid() || ff.Addr().Is4In6()) {
			errorf("ForwardedFor(%q) = %v, true: want a valid unmapped ip:port", req.Header.Values("Forwarded"), ff)
		}
		if !req.Authority.IsValid() || req.Authority.Addr().Is4In6() {
			errorf("Request.Authority = %v: want a valid unmapped ip:port", req.Authority)
		}
		settle := func() {
			settled.Add(1)
		}
		defer func() { settled.Add(-1) }()
		switch req.Authority.Port() % 4 {
		case 0:
			tun.Reject(http.StatusUnauthorized, "denied")
			settle()
		case 1:
			c, err := tun.Accept()
			if err != nil {
				settle()
				return
			}
			// What the client sent before the harness's PING, without
			// waiting for more.
			buf := make([]byte, 64<<10)
			c.SetReadDeadline(time.Now())
			n, _ := c.Read(buf)
			c.SetReadDeadline(time.Time{})
			settle()
			c.Write(buf[:n])
			io.Copy(c, c)
			c.CloseWrite()
		case 2:
			settle()
			<-ctx.Done()
		default:
			settle()
		}
	})
}

// FuzzServerFrames writes arbitrary bytes, after a valid client preface and
// SETTINGS, into an authenticated connection to a real Server (mTLS over an
// in-memory pipe, one connection per input), then half-closes it.
//
// Property: the server does not panic; it keeps reading the input (the
// client's writes never block for fuzzHang); once the client half-closed,
// the server closes its side within fuzzHang, and once the client closed,
// the server forgets the connection (its handlers returned) within
// fuzzHang; and Server.Close returns at the end. Handlers see only valid
// unmapped authorities and forwarded addresses.
func FuzzServerFrames(f *testing.F) {
	ca := identitytest.New(f, "cluster.local")
	serverID, clientID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	clientCfg, err := ca.PoolTLS(f, nil)(context.Background(), clientID, []spiffeid.ID{serverID})
	if err != nil {
		f.Fatal(err)
	}
	// The handler records what it finds wrong; each input checks it once
	// its handlers returned.
	var (
		handlerErr atomic.Pointer[string]
		settled    atomic.Int64
	)
	srv := &Server{
		TLSConfig:        ca.ServerTLS(f, serverID),
		HandshakeTimeout: fuzzHang,
		Handler: fuzzHandler(func(format string, args ...any) {
			msg := fmt.Sprintf(format, args...)
			handlerErr.CompareAndSwap(nil, &msg)
		}, &settled),
	}
	l := newPipeListener()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	f.Cleanup(func() {
		closed := make(chan struct{})
		go func() {
			srv.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(fuzzHang):
			f.Errorf("Server.Close() did not return within %v", fuzzHang)
			return
		}
		if err := <-serveErr; !errors.Is(err, ErrServerClosed) {
			f.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
	})

	for _, seed := range [][]byte{
		// Accepted and echoed, half-closed by the client.
		func() []byte {
			w := newFrameWriter().connect(1, "10.0.0.1:81", "forwarded", `for="10.1.2.3:4"`, "baggage", "k=v")
			w.fr.WriteData(1, true, []byte("hello"))
			return w.bytes()
		}(),
		// Rejected; no answer (503); waiting handler reset by the client.
		func() []byte {
			w := newFrameWriter().connect(1, "10.0.0.1:80").connect(3, "10.0.0.1:83").connect(5, "[2001:db8::1]:82")
			w.fr.WriteRSTStream(5, http2.ErrCodeCancel)
			return w.bytes()
		}(),
		// IPv4-mapped authority, header block split over CONTINUATION.
		func() []byte {
			w := newFrameWriter()
			b := w.block(":method", "CONNECT", ":authority", "[::ffff:10.0.0.1]:81", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
			w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			w.fr.WriteContinuation(1, true, b[3:])
			w.fr.WriteData(1, false, []byte("x"))
			w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block("x-trailer", "1"), EndStream: true, EndHeaders: true})
			return w.bytes()
		}(),
		// Control frames: settings that stall writes, PING, window updates.
		func() []byte {
			w := newFrameWriter().connect(1, "10.0.0.1:81")
			w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
			w.fr.WriteData(1, false, bytes.Repeat([]byte("a"), 100))
			w.fr.WritePing(false, [8]byte{1, 2, 3})
			w.fr.WriteWindowUpdate(0, 1000)
			w.fr.WriteWindowUpdate(1, 10)
			w.fr.WriteSettingsAck()
			return w.bytes()
		}(),
		// Not CONNECT, extended CONNECT, bad authority: 400.
		newFrameWriter().
			headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80").
			connect(3, "10.0.0.1:81", ":protocol", "websocket").
			connect(5, "example.com:80").
			bytes(),
		// Padded DATA, PRIORITY, an unknown frame type, GOAWAY.
		func() []byte {
			w := newFrameWriter().connect(1, "10.0.0.1:81")
			w.fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 20))
			w.fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 10})
			w.fr.WriteRawFrame(0xfa, 0, 0, []byte("unknown"))
			w.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			return w.bytes()
		}(),
		// Protocol errors: DATA on an idle stream, even stream ID, stream
		// window overflow.
		func() []byte {
			w := newFrameWriter().connect(1, "10.0.0.1:81")
			w.fr.WriteWindowUpdate(1, maxWindow)
			w.fr.WriteData(7, false, []byte("idle"))
			return w.bytes()
		}(),
		newFrameWriter().connect(2, "10.0.0.1:81").bytes(),
		// PUSH_PROMISE from a client; a frame header of a 1 MiB frame.
		func() []byte {
			w := newFrameWriter()
			w.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: w.block(":method", "GET"), EndHeaders: true})
			return w.bytes()
		}(),
		{0, 0x10, 0, 0, 0, 0, 0, 0, 1},
		[]byte("garbage that is no frame"),
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, frames []byte) {
		if len(frames) > fuzzMaxInput {
			return
		}
		handlerErr.Store(nil)
		raw, err := l.dial()
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(fuzzHang))
		tc := tls.Client(raw, clientCfg)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		// The client reads everything the server sends, watching for the
		// answer to the PING written after the input.
		drained, acked := make(chan error, 1), make(chan struct{})
		var ackOnce sync.Once
		pingData := [8]byte{'f', 'u', 'z', 'z', 's', 'y', 'n', 'c'}
		go func() {
			fr := http2.NewFramer(nil, tc)
			fr.SetMaxReadFrameSize(1<<24 - 1)
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					break
				}
				if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() && pf.Data == pingData {
					ackOnce.Do(func() { close(acked) })
				}
			}
			_, err := io.Copy(io.Discard, tc)
			drained <- err
		}()
		var in bytes.Buffer
		in.WriteString(http2.ClientPreface)
		fw := http2.NewFramer(&in, nil)
		fw.WriteSettings()
		in.Write(frames)
		aligned := framesAligned(frames)
		if aligned {
			fw.WritePing(false, pingData)
		}
		_, err = tc.Write(in.Bytes())
		if errors.Is(err, os.ErrDeadlineExceeded) {
			fatalHang(t, "the server stopped reading the input for %v without closing the connection", fuzzHang)
		}
		if err == nil && aligned {
			// Whole frames: the server answers the PING after it
			// processed them, unless it closes the connection; then the
			// handlers it started get to answer before the client
			// half-closes.
			select {
			case <-acked:
				if !within(fuzzHang, func() bool {
					srv.mu.Lock()
					defer srv.mu.Unlock()
					for _, sc := range srv.conns {
						if sc == nil {
							continue
						}
						sc.mu.Lock()
						defer sc.mu.Unlock()
						return int64(sc.curHandlers) == settled.Load()
					}
					return true
				}) {
					fatalHang(t, "handlers did not answer within %v", fuzzHang)
				}
			case <-time.After(fuzzHang):
				fatalHang(t, "the server neither answered a PING nor closed the connection within %v", fuzzHang)
			case err := <-drained:
				drained <- err
			}
		}
		if err == nil {
			err = tc.CloseWrite()
		}
		// A write error is the server closing the connection: fine.
		raw.SetDeadline(time.Now().Add(fuzzHang))
		if err := <-drained; errors.Is(err, os.ErrDeadlineExceeded) {
			fatalHang(t, "the server did not close the connection within %v after the client half-closed it", fuzzHang)
		}
		raw.Close()
		if !within(fuzzHang, func() bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			return len(srv.conns) == 0
		}) {
			fatalHang(t, "the server still holds the connection (a handler has not returned) %v after the client closed it", fuzzHang)
		}
		if msg := handlerErr.Load(); msg != nil {
			t.Fatal(*msg)
		}
	})
}

// fatalHang ends an input that hung, with every goroutine's stack.
func fatalHang(t *testing.T, format string, args ...any) {
	t.Helper()
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	t.Log(b.String())
	t.Fatalf(format, args...)
}

// framesAligned reports whether b is a sequence of whole frames.
func framesAligned(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 9 {
			return false
		}
		n := 9 + (int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
		if n > len(b) {
			return false
		}
		b = b[n:]
	}
	return true
}

// within polls cond until it holds or d passes.
func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for wait := 10 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}

// FuzzClientFrames has Pool.Dial open a CONNECT (stream 1) over mTLS on an
// in-memory pipe to a fake server, which answers with a valid server
// preface (SETTINGS) followed by arbitrary bytes, then half-closes.
//
// Property: the client does not panic; Dial returns a Conn or an error
// within fuzzHang, never its context's deadline; the Conn's Write and Read
// return (data, EOF or an error, never a deadline) within fuzzHang; the
// client closes the connection within fuzzHang of the server's half-close.
func FuzzClientFrames(f *testing.F) {
	ca := identitytest.New(f, "cluster.local")
	serverID, clientID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	clientCfg, err := ca.PoolTLS(f, nil)(context.Background(), clientID, []spiffeid.ID{serverID})
	if err != nil {
		f.Fatal(err)
	}
	serverCfg := ca.ServerTLS(f, serverID)
	target := Target{
		Addr:      netip.MustParseAddrPort("10.0.0.2:15008"),
		Authority: "10.0.0.2:80",
		SourceID:  clientID,
		DestIDs:   []spiffeid.ID{serverID},
	}

	for _, seed := range [][]byte{
		// 200, data, END_STREAM.
		func() []byte {
			w := newFrameWriter().headers(1, false, ":status", "200")
			w.fr.WriteData(1, true, []byte("hello"))
			return w.bytes()
		}(),
		// Refusals.
		newFrameWriter().headers(1, true, ":status", "401", ReasonHeader, "denied").bytes(),
		newFrameWriter().headers(1, true, ":status", "abc").bytes(),
		// Informational, then 200 with padded DATA split headers and trailers.
		func() []byte {
			w := newFrameWriter().headers(1, false, ":status", "100")
			b := w.block(":status", "200", "server", "x")
			w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:2]})
			w.fr.WriteContinuation(1, true, b[2:])
			w.fr.WriteDataPadded(1, false, []byte("data"), make([]byte, 7))
			w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block("trailer", "1"), EndStream: true, EndHeaders: true})
			return w.bytes()
		}(),
		// Unprocessed: REFUSED_STREAM, GOAWAY before the stream.
		func() []byte {
			w := newFrameWriter()
			w.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
			return w.bytes()
		}(),
		func() []byte {
			w := newFrameWriter()
			w.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye"))
			return w.bytes()
		}(),
		// Settings and control frames, then 200 and a reset after END_STREAM.
		func() []byte {
			w := newFrameWriter()
			w.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			w.fr.WritePing(false, [8]byte{9})
			w.fr.WriteWindowUpdate(0, 1)
			w.headers(1, true, ":status", "200")
			w.fr.WriteRSTStream(1, http2.ErrCodeNo)
			w.fr.WriteWindowUpdate(1, 5)
			return w.bytes()
		}(),
		// Protocol errors: DATA before the response, frames for idle
		// streams, PUSH_PROMISE, an oversized window.
		func() []byte {
			w := newFrameWriter()
			w.fr.WriteData(1, false, []byte("early"))
			w.headers(3, false, ":status", "200")
			return w.bytes()
		}(),
		func() []byte {
			w := newFrameWriter().headers(1, false, ":status", "200")
			w.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: w.block(":method", "GET"), EndHeaders: true})
			return w.bytes()
		}(),
		func() []byte {
			w := newFrameWriter().headers(1, false, ":status", "200")
			w.fr.WriteWindowUpdate(0, maxWindow)
			w.fr.WriteData(1, false, bytes.Repeat([]byte("b"), 1000))
			return w.bytes()
		}(),
		{0, 0x10, 0, 0, 0, 0, 0, 0, 1},
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, frames []byte) {
		if len(frames) > fuzzMaxInput {
			return
		}
		var dialed atomic.Bool
		served := make(chan error, 1)
		pool := NewPool(PoolConfig{
			TLSConfig: func(context.Context, spiffeid.ID, []spiffeid.ID) (*tls.Config, error) { return clientCfg, nil },
			Dialer: func(context.Context, string, string, string) (net.Conn, error) {
				if dialed.Swap(true) {
					// A retry after an unprocessed stream: one connection per input.
					return nil, errors.New("fuzz: one connection per input")
				}
				c, s := net.Pipe()
				go func() { served <- fakeServer(s, serverCfg, frames) }()
				return c, nil
			},
		})
		defer pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), fuzzHang)
		defer cancel()
		c, err := pool.Dial(ctx, target)
		if errors.Is(err, context.DeadlineExceeded) {
			fatalHang(t, "Dial() did not return within %v: %v", fuzzHang, err)
		}
		if err == nil {
			c.SetDeadline(time.Now().Add(fuzzHang))
			if _, err := c.Write([]byte("ping")); errors.Is(err, os.ErrDeadlineExceeded) {
				fatalHang(t, "Conn.Write() did not return within %v", fuzzHang)
			}
			if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
				fatalHang(t, "Conn.Read() did not return within %v", fuzzHang)
			}
			c.Close()
		}
		pool.Close()
		if !dialed.Load() {
			t.Fatalf("Dial() = %v without dialing", err)
		}
		if err := <-served; err != nil {
			fatalHang(t, "%v", err)
		}
	})
}

// fakeServer runs the server side of FuzzClientFrames on c: the TLS
// handshake, then it reads until the client's first HEADERS (so that
// frames reach the client after it opened stream 1), writes SETTINGS and
// frames, half-closes and waits for the client to close the connection.
func fakeServer(c net.Conn, cfg *tls.Config, frames []byte) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(fuzzHang))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return errors.New("fake server: TLS handshake: " + err.Error())
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, preface); err != nil || string(preface) != http2.ClientPreface {
		return errors.New("fake server: no client preface")
	}
	fr := http2.NewFramer(nil, tc)
	fr.SetMaxReadFrameSize(maxFrameSize)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return errors.New("fake server: reading the CONNECT: " + err.Error())
		}
		if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == 1 && hf.HeadersEnded() {
			break
		}
	}
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, tc)
		closed <- err
	}()
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WriteSettings()
	b.Write(frames)
	// Write errors mean the client closed the connection: fine.
	if _, err := tc.Write(b.Bytes()); errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.New("fake server: the client stopped reading the input without closing the connection")
	}
	tc.CloseWrite()
	c.SetDeadline(time.Now().Add(fuzzHang))
	if err := <-closed; errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.New("fake server: the client did not close the connection after the server's half-close")
	}
	return nil
}

// FuzzConnectHeaders runs a CONNECT's header block, built from the fuzzed
// method, :authority, :protocol and forwarded, baggage and traceparent
// values, through serverConn.processFrame on an in-memory connection (no
// network: its writes are discarded), and calls Request.ForwardedFor and
// parseForNode on the raw forwarded value.
//
// Property: no panic; a header block the framer accepts is never a
// connection error; the handler runs if and only if the method is CONNECT,
// there is no :protocol and the authority parses as ip:port, and then
// Request.Authority is that ip:port unmapped and the headers are passed on
// unchanged; a malformed request is a stream error PROTOCOL_ERROR;
// otherwise a 400 is queued. ForwardedFor and parseForNode
// return ok only with a valid unmapped ip:port, which parses back to
// itself from `for="<ip:port>"`.
func FuzzConnectHeaders(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "", `for="10.1.2.3:8080"`, "k8s.namespace.name=a", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", false)
	f.Add("CONNECT", "[2001:db8::1]:443", "", `for="[2001:db8::2]:443";host=svc`, "", "", true)
	f.Add("CONNECT", "[::ffff:10.0.0.1]:80", "", `For=[::ffff:10.1.2.3]:80, for="10.0.0.2:2"`, "a=b,c=d", "", false)
	f.Add("CONNECT", "[fe80::1%eth0]:80", "", `host=a;for=unknown`, "", "", false)
	f.Add("CONNECT", "example.com:80", "", `for=_hidden`, "", "", false)
	f.Add("CONNECT", "10.0.0.1", "", `for="10.1.2.3"`, "", "", false)
	f.Add("CONNECT", "10.0.0.1:80", "websocket", "", "", "", false)
	f.Add("GET", "10.0.0.1:80", "", "", "", "", true)
	f.Add("CONNECT", "10.0.0.1:80", "", "for=\"10.1.2.3:1\r\n\"", "\x00", "", false)

	f.Fuzz(func(t *testing.T, method, authority, protocol, forwarded, baggage, traceparent string, endStream bool) {
		if len(method)+len(authority)+len(protocol)+len(forwarded)+len(baggage)+len(traceparent) > 256<<10 {
			return // the frame would exceed maxFrameSize
		}
		checkForwarded(t, forwarded)

		// The header block as a client sends it.
		kv := []string{":method", method, ":authority", authority}
		if protocol != "" {
			kv = append(kv, ":protocol", protocol)
		}
		want := http.Header{}
		for _, h := range [][2]string{{"forwarded", forwarded}, {"baggage", baggage}, {"traceparent", traceparent}} {
			if h[1] != "" {
				kv = append(kv, h[0], h[1])
				want.Add(http.CanonicalHeaderKey(h[0]), h[1])
			}
		}
		w := newFrameWriter().headers(1, endStream, kv...)
		fr := http2.NewFramer(nil, bytes.NewReader(w.bytes()))
		fr.SetMaxReadFrameSize(maxFrameSize)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.MaxHeaderListSize = maxHeaderList
		frame, err := fr.ReadFrame()
		if err != nil {
			// Invalid fields (the framer's stream error) never reach
			// processHeaders.
			var se http2.StreamError
			if !errors.As(err, &se) {
				t.Fatalf("ReadFrame() = %v, want a stream error", err)
			}
			return
		}

		reqs := make(chan *Request, 1)
		c, s := net.Pipe()
		defer c.Close()
		srv := &Server{Handler: HandlerFunc(func(_ context.Context, req *Request, tun *Tunnel) {
			reqs <- req
			tun.Reject(http.StatusUnauthorized, "denied")
		})}
		sc := newServerConn(srv, tls.Server(s, &tls.Config{}), io.Discard, spiffeid.ID{}, 10, srv.logger())
		// The block has neither :scheme nor :path: any method but
		// CONNECT, and a CONNECT without :authority, is malformed (RFC
		// 9113 §8.3.1, §8.5), which a header list too large to read
		// hides.
		truncated := frame.(*http2.MetaHeadersFrame).Truncated
		malformed := !truncated && (method != http.MethodConnect || protocol == "" && authority == "")
		err = sc.processFrame(frame)
		var se http2.StreamError
		switch {
		case malformed && (!errors.As(err, &se) || se != http2.StreamError{StreamID: 1, Code: http2.ErrCodeProtocol}):
			t.Fatalf("processFrame(malformed: method %q, authority %q, protocol %q) = %v, want a stream error PROTOCOL_ERROR on stream 1", method, authority, protocol, err)
		case !malformed && err != nil:
			t.Fatalf("processFrame(CONNECT %q) = %v, want no error", authority, err)
		}
		sc.handlers.Wait()
		sc.mu.Lock()
		queued := append([]ctrlFrame(nil), sc.ctrl.frames...)
		sc.mu.Unlock()
		sc.close(nil)

		ap, perr := netip.ParseAddrPort(authority)
		valid := method == http.MethodConnect && protocol == "" && perr == nil && !frame.(*http2.MetaHeadersFrame).Truncated
		select {
		case req := <-reqs:
			if !valid {
				t.Fatalf("CONNECT (method %q, authority %q, protocol %q) reached the handler, want 400", method, authority, protocol)
			}
			if want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()); req.Authority != want {
				t.Errorf("Request.Authority = %v, want %v", req.Authority, want)
			}
			if req.Authority.Addr().Is4In6() {
				t.Errorf("Request.Authority = %v is IPv4-mapped", req.Authority)
			}
			for k, vs := range want {
				if got := req.Header.Values(k); len(got) != 1 || got[0] != vs[0] {
					t.Errorf("Request.Header[%q] = %q, want %q", k, got, vs)
				}
			}
			checkForwardedRequest(t, req)
		default:
			if valid {
				t.Fatalf("valid CONNECT %q did not reach the handler", authority)
			}
			if malformed {
				return // readLoop resets the stream
			}
			wantStatus := uint32(http.StatusBadRequest)
			if truncated {
				wantStatus = http.StatusRequestHeaderFieldsTooLarge
			}
			if len(queued) == 0 || queued[0].kind != ctrlHeaders || queued[0].n != wantStatus || queued[0].stream != 1 {
				t.Fatalf("bad request (method %q, authority %q, protocol %q) queued %+v, want a %d on stream 1", method, authority, protocol, queued, wantStatus)
			}
		}
	})
}

// checkForwarded checks parseForNode and ForwardedFor on a raw value.
func checkForwarded(t *testing.T, v string) {
	t.Helper()
	if ap, ok := parseForNode(v); ok {
		checkForNode(t, "parseForNode("+v+")", ap)
	} else if ap.IsValid() {
		t.Errorf("parseForNode(%q) = %v, false: want the zero AddrPort", v, ap)
	}
	checkForwardedRequest(t, &Request{Header: http.Header{"Forwarded": {v}}})
}

func checkForwardedRequest(t *testing.T, r *Request) {
	t.Helper()
	ap, ok := r.ForwardedFor()
	if !ok {
		if ap.IsValid() {
			t.Errorf("ForwardedFor(%q) = %v, false: want the zero AddrPort", r.Header.Values("Forwarded"), ap)
		}
		return
	}
	checkForNode(t, "ForwardedFor("+strings.Join(r.Header.Values("Forwarded"), ", ")+")", ap)
	// The address the handler gets also comes out of a well-formed header.
	if _, err := netip.ParseAddrPort(ap.String()); err != nil {
		t.Errorf("%v: %v does not format as ip:port", r.Header.Values("Forwarded"), ap)
	}
}

// checkForNode checks a node parsed by what: a valid unmapped ip:port that
// parses back to itself, quoted or not.
func checkForNode(t *testing.T, what string, ap netip.AddrPort) {
	t.Helper()
	if !ap.IsValid() || ap.Addr().Is4In6() {
		t.Errorf("%s = %v, true: want a valid unmapped ip:port", what, ap)
		return
	}
	for _, v := range []string{ap.String(), `"` + ap.String() + `"`} {
		if got, ok := parseForNode(v); !ok || got != ap {
			t.Errorf("%s = %v, but parseForNode(%q) = %v, %v", what, ap, v, got, ok)
		}
		r := &Request{Header: http.Header{"Forwarded": {"for=" + v}}}
		if got, ok := r.ForwardedFor(); !ok || got != ap {
			t.Errorf("%s = %v, but ForwardedFor(for=%s) = %v, %v", what, ap, v, got, ok)
		}
	}
}
