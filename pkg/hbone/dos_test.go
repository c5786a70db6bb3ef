package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// h2Peer is a hand-driven HTTP/2 client on a real mTLS connection to a
// Server: it writes the frames a test chooses, as an attacker would.
type h2Peer struct {
	t    *testing.T
	tc   *tls.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

// dialH2 opens an mTLS connection with a valid client certificate to e's
// server and writes the client preface and an empty SETTINGS.
func (e *testEnv) dialH2(t *testing.T) *h2Peer {
	t.Helper()
	cfg, err := e.ca.PoolTLS(t, nil)(context.Background(), e.clientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.DialTimeout("tcp", e.addr.String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		raw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	p := &h2Peer{t: t, tc: tc, bw: bufio.NewWriterSize(tc, 64<<10)}
	p.fr = http2.NewFramer(p.bw, tc)
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	p.bw.WriteString(http2.ClientPreface)
	p.fr.WriteSettings()
	if err := p.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

// headers writes a HEADERS frame opening stream id with method and authority.
func (p *h2Peer) headers(id uint32, method, authority string) error {
	p.hbuf.Reset()
	p.henc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
	p.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	if method != http.MethodConnect {
		p.henc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "https"})
		p.henc.WriteField(hpack.HeaderField{Name: ":path", Value: "/"})
	}
	return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndHeaders: true})
}

// readUntil reads frames until stop returns true or the connection ends;
// it returns the GOAWAY the server sent, if any, and whether stop matched.
func (p *h2Peer) readUntil(stop func(http2.Frame) bool) (goAway *http2.GoAwayFrame, stopped bool) {
	p.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				p.t.Fatalf("no answer from the server within 20 s")
			}
			return goAway, false
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			cp := *ga
			goAway = &cp
		}
		if stop(f) {
			return goAway, true
		}
	}
}

// serverConnOf waits for the server to hold exactly one HTTP/2 connection
// and returns it.
func serverConnOf(t *testing.T, s *Server) *serverConn {
	t.Helper()
	var sc *serverConn
	waitFor(t, "the server connection", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			sc = c
		}
		return len(s.conns) == 1 && sc != nil
	})
	return sc
}

func (sc *serverConn) closeError() error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.closeErr
}

// TestRapidReset is CVE-2023-44487: a client opening streams and resetting
// them at once, faster than they complete. The server runs at most
// MaxConcurrentStreams handlers at a time, counting those of reset streams
// still running, and closes the connection with ENHANCE_YOUR_CALM.
func TestRapidReset(t *testing.T) {
	tests := []struct {
		name       string
		maxStreams uint32 // 0: the default, 200
		batch      int    // pairs written before a flush
		paced      bool   // wait for a PING ack after each batch
	}{
		// Handlers of reset streams pile up behind the limit.
		{name: "burst", maxStreams: 10, batch: 100},
		// The server keeps up, but streams are reset faster than answered.
		{name: "paced", batch: 50, paced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			limit := int64(tt.maxStreams)
			if limit == 0 {
				limit = 200
			}
			var running, peak, started atomic.Int64
			h := HandlerFunc(func(ctx context.Context, _ *Request, _ *Tunnel) {
				started.Add(1)
				n := running.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				<-ctx.Done() // a slow upstream dial: ends when the stream is reset
				running.Add(-1)
			})
			e := newTestEnv(t, h)
			e.srv.MaxConcurrentStreams = tt.maxStreams
			p := e.dialH2(t)
			sc := serverConnOf(t, e.srv)

			const pairs = 20000
			done := [8]byte{'d', 'o', 'n', 'e'}
			isDone := func(f http2.Frame) bool {
				pf, ok := f.(*http2.PingFrame)
				return ok && pf.IsAck() && pf.Data == done
			}
			var (
				werr   error
				goAway *http2.GoAwayFrame
			)
			for i := 0; i < pairs && werr == nil && goAway == nil; i++ {
				id := uint32(2*i + 1)
				werr = errors.Join(p.headers(id, http.MethodConnect, "10.0.0.1:80"), p.fr.WriteRSTStream(id, http2.ErrCodeCancel))
				if werr != nil || i%tt.batch != tt.batch-1 {
					continue
				}
				if tt.paced {
					p.fr.WritePing(false, done)
				}
				if werr = p.bw.Flush(); werr == nil && tt.paced {
					var ok bool
					if goAway, ok = p.readUntil(isDone); !ok && goAway == nil {
						werr = errors.New("connection closed without GOAWAY")
					}
				}
			}
			if goAway == nil {
				if werr == nil {
					// If the connection is still open, a PING answered
					// without a GOAWAY before it shows that the server let
					// the flood through.
					p.fr.WritePing(false, done)
					p.bw.Flush()
				}
				var answered bool
				goAway, answered = p.readUntil(isDone)
				if answered && goAway == nil {
					t.Fatalf("connection still open after %d HEADERS+RST_STREAM pairs", pairs)
				}
			}
			// The GOAWAY is lost when the server's close of a connection
			// with unread data resets it; the reason is checked server-side.
			if goAway != nil && goAway.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY code = %v, want ENHANCE_YOUR_CALM", goAway.ErrCode)
			}
			waitFor(t, "the server to close the connection", func() bool { return sc.closeError() != nil })
			if err := sc.closeError(); !errors.Is(err, errRapidReset) {
				t.Errorf("server closed the connection with %v, want %v", err, errRapidReset)
			}
			if got := peak.Load(); got > limit {
				t.Errorf("peak concurrent handlers = %d, want <= MaxConcurrentStreams (%d)", got, limit)
			}
			if got, max := started.Load(), maxEarlyResets+5*limit; got > max {
				t.Errorf("handlers started = %d, want <= %d", got, max)
			}
			waitFor(t, "the connection to be closed", func() bool {
				e.srv.mu.Lock()
				defer e.srv.mu.Unlock()
				return len(e.srv.conns) == 0
			})
		})
	}
}

// TestResetStreamCancelsHandler: a stream reset before the handler answered
// cancels the handler's context, and a new stream is served afterwards.
func TestResetStreamCancelsHandler(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	e := newTestEnv(t, HandlerFunc(func(ctx context.Context, req *Request, tun *Tunnel) {
		if req.Authority.Port() == 80 {
			<-ctx.Done()
			cancelled <- struct{}{}
			return
		}
		tun.Reject(http.StatusUnauthorized, "denied")
	}))
	e.srv.MaxConcurrentStreams = 1
	p := e.dialH2(t)
	p.headers(1, http.MethodConnect, "10.0.0.1:80")
	p.bw.Flush()
	serverConnOf(t, e.srv)
	waitFor(t, "the handler to start", func() bool {
		sc := serverConnOf(t, e.srv)
		sc.mu.Lock()
		defer sc.mu.Unlock()
		return sc.curHandlers == 1
	})
	p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	// The reset stream's handler holds the only handler slot until it
	// returns; stream 3 waits for it instead of being refused.
	p.headers(3, http.MethodConnect, "10.0.0.1:81")
	p.bw.Flush()
	<-cancelled
	var status string
	_, ok := p.readUntil(func(f http2.Frame) bool {
		if hf, ok := f.(*http2.MetaHeadersFrame); ok && hf.StreamID == 3 {
			status = hf.PseudoValue("status")
			return true
		}
		return false
	})
	if !ok || status != "401" {
		t.Errorf("stream 3 answered %q (%v), want 401", status, ok)
	}
}

// TestControlFrameFlood: a client that sends frames the server must answer
// (PING, SETTINGS, bad requests) and never reads the answers gets its
// connection closed once 10,000 answers are queued, instead of growing the
// server's heap without bound. The server's writes are stalled in the
// test (as they are once the kernel's buffers towards a client that does
// not read are full) by a listener whose connections stop writing: with a
// real non-reading client, its full receive buffer can also hold back the
// ACKs its own writes need, and the flood stalls before the limit.
func TestControlFrameFlood(t *testing.T) {
	tests := []struct {
		name  string
		frame func(p *h2Peer, i int) error
	}{
		{"PING", func(p *h2Peer, i int) error {
			return p.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		}},
		{"SETTINGS", func(p *h2Peer, i int) error {
			return p.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: uint32(4096 - i%2)})
		}},
		{"bad requests", func(p *h2Peer, i int) error {
			return p.headers(uint32(2*i+1), http.MethodGet, "10.0.0.1:80")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, relayHandler())
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			stall := new(atomic.Bool)
			e.srv = &Server{TLSConfig: e.ca.ServerTLS(t, e.serverID), Handler: relayHandler()}
			e.addr = e.serveOn(t, e.srv, stallListener{l, stall})
			p := e.dialH2(t)
			sc := serverConnOf(t, e.srv)
			// Stall only once the server's SETTINGS arrived: its first
			// write must not be the one that blocks.
			if _, ok := p.readUntil(func(f http2.Frame) bool {
				sf, ok := f.(*http2.SettingsFrame)
				return ok && !sf.IsAck()
			}); !ok {
				t.Fatal("no SETTINGS from the server")
			}
			stall.Store(true)
			p.tc.SetWriteDeadline(time.Now().Add(20 * time.Second))
			const frames = 1_000_000
			for i := 0; i < frames && err == nil; i++ {
				err = tt.frame(p, i)
				if err == nil && i%1000 == 999 {
					err = p.bw.Flush()
				}
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server stopped reading the flood without closing the connection: %v", err)
			}
			if err == nil {
				// All written: the server may still be reading them.
				waitFor(t, "the server to close the flooding connection", func() bool { return sc.closeError() != nil })
			}
			if cerr := sc.closeError(); !errors.Is(cerr, errCtrlFlood) {
				t.Errorf("server closed the connection with %v, want %v", cerr, errCtrlFlood)
			}
		})
	}
}

// stallListener accepts connections whose writes block, once stall is
// set, until they are closed: a peer that stopped reading.
type stallListener struct {
	net.Listener
	stall *atomic.Bool
}

func (l stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, stall: l.stall, closed: make(chan struct{})}, nil
}

type stallConn struct {
	net.Conn
	stall  *atomic.Bool
	once   sync.Once
	closed chan struct{}
	wdl    atomic.Pointer[time.Time] // write deadline
}

// Write blocks while stalled until the connection is closed or the write
// deadline passes, as a write to a peer that does not read does.
func (c *stallConn) Write(p []byte) (int, error) {
	if !c.stall.Load() {
		return c.Conn.Write(p)
	}
	var expire <-chan time.Time
	if d := c.wdl.Load(); d != nil && !d.IsZero() {
		t := time.NewTimer(time.Until(*d))
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-expire:
		return 0, os.ErrDeadlineExceeded
	}
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(&t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.wdl.Store(&t)
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestSettingsTooLarge: a SETTINGS frame with more than 100 entries is a
// connection error, as in x/net's server.
func TestSettingsTooLarge(t *testing.T) {
	e := newTestEnv(t, relayHandler())
	p := e.dialH2(t)
	s := make([]http2.Setting, 1000)
	for i := range s {
		s[i] = http2.Setting{ID: http2.SettingHeaderTableSize, Val: uint32(i)}
	}
	p.fr.WriteSettings(s...)
	p.bw.Flush()
	goAway, _ := p.readUntil(func(http2.Frame) bool { return false })
	if goAway == nil || goAway.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY after a SETTINGS frame of 1000 entries = %v, want PROTOCOL_ERROR", goAway)
	}
}

// TestGoAwayBehindBusyWriter: a connection error is answered with its
// GOAWAY also when another goroutine is writing at that moment (it was
// dropped unless the write lock was free: TestSettingsTooLarge failed about
// once in a hundred runs).
func TestGoAwayBehindBusyWriter(t *testing.T) {
	e := newTestEnv(t, relayHandler())
	p := e.dialH2(t)
	sc := serverConnOf(t, e.srv)
	sc.wmu.Lock() // a writer in the middle of a frame
	s := make([]http2.Setting, 1000)
	for i := range s {
		s[i] = http2.Setting{ID: http2.SettingHeaderTableSize, Val: uint32(i)}
	}
	p.fr.WriteSettings(s...)
	p.bw.Flush()
	time.Sleep(50 * time.Millisecond) // the server reads the frame meanwhile (goAwayWait is 500 ms)
	sc.wmu.Unlock()
	goAway, _ := p.readUntil(func(http2.Frame) bool { return false })
	if goAway == nil || goAway.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY after a SETTINGS frame of 1000 entries, while a write was under way = %v, want PROTOCOL_ERROR", goAway)
	}
}

// TestPendingHandshakesCapped: connections past MaxPendingHandshakes that
// have not finished their TLS handshake are closed at once; the server
// keeps serving.
func TestPendingHandshakesCapped(t *testing.T) {
	echo := tcpEcho(t)
	ca := identitytest.New(t, "cluster.local")
	e := &testEnv{ca: ca, serverID: ca.ID("/ns/b/sa/server"), clientID: ca.ID("/ns/a/sa/client")}
	e.srv = &Server{
		TLSConfig:            ca.ServerTLS(t, e.serverID),
		Handler:              relayHandler(),
		MaxPendingHandshakes: 4,
		HandshakeTimeout:     time.Minute,
	}
	e.addr = e.serve(t, e.srv)
	e.pool = NewPool(PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	t.Cleanup(func() { e.pool.Close() })

	pending := func() int {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.handshaking
	}
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, "4 pending handshakes", func() bool { return pending() == 4 })

	extra, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("Read() on the connection past the cap = %v, want EOF (closed by the server)", err)
	}

	held[0].Close()
	waitFor(t, "a free handshake slot", func() bool { return pending() < 4 })
	echoOnce(t, e, echo)
}

// TestHandshakeTimeout: a client that stops during the TLS handshake, or
// after it without the HTTP/2 preface, is disconnected once
// HandshakeTimeout has passed.
func TestHandshakeTimeout(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	e := &testEnv{ca: ca, serverID: ca.ID("/ns/b/sa/server"), clientID: ca.ID("/ns/a/sa/client")}
	e.srv = &Server{
		TLSConfig:        ca.ServerTLS(t, e.serverID),
		Handler:          relayHandler(),
		HandshakeTimeout: 200 * time.Millisecond,
	}
	e.addr = e.serve(t, e.srv)
	closed := func(t *testing.T, r io.Reader, c net.Conn) {
		t.Helper()
		// Less than the default timeout (10 s), which must not apply.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, r)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server kept a stalled client for 5 s with a HandshakeTimeout of 200 ms")
		}
	}
	t.Run("no TLS ClientHello", func(t *testing.T) {
		c, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closed(t, c, c)
	})
	t.Run("no HTTP/2 preface", func(t *testing.T) {
		cfg, err := ca.PoolTLS(t, nil)(context.Background(), e.clientID, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, cfg)
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		closed(t, tc, raw)
	})
}

// TestRawConnBuffersAfterHandshake: the 64 KiB read buffer is allocated
// only once the TLS handshake succeeded.
func TestRawConnBuffersAfterHandshake(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	rc := newRawConn(a)
	if rc.br != nil {
		t.Fatalf("newRawConn allocated a %d byte read buffer before the handshake", rc.br.Size())
	}
	go b.Write([]byte("hello"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(rc, got); err != nil || string(got) != "hello" {
		t.Fatalf("Read() = %q, %v", got, err)
	}
	rc.startBuffering()
	go b.Write([]byte("world"))
	if _, err := io.ReadFull(rc, got); err != nil || string(got) != "world" {
		t.Fatalf("Read() after startBuffering = %q, %v", got, err)
	}
}

// flakyListener fails its first Accept calls with errs, then accepts.
type flakyListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestAcceptErrorsRetried: temporary accept errors (EMFILE, ECONNABORTED)
// are reported through OnAcceptError and Serve keeps accepting.
func TestAcceptErrorsRetried(t *testing.T) {
	echo := tcpEcho(t)
	ca := identitytest.New(t, "cluster.local")
	e := &testEnv{ca: ca, serverID: ca.ID("/ns/b/sa/server"), clientID: ca.ID("/ns/a/sa/client")}
	var mu sync.Mutex
	var seen []error
	e.srv = &Server{
		TLSConfig: ca.ServerTLS(t, e.serverID),
		Handler:   relayHandler(),
		OnAcceptError: func(err error) {
			mu.Lock()
			seen = append(seen, err)
			mu.Unlock()
		},
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
	}
	l := &flakyListener{Listener: inner, errs: []error{
		acceptErr(syscall.EMFILE), acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE),
		acceptErr(syscall.ECONNABORTED), acceptErr(syscall.EMFILE),
	}}
	errc := make(chan error, 1)
	go func() { errc <- e.srv.Serve(l) }()
	t.Cleanup(func() {
		e.srv.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
	})
	e.addr = inner.Addr().(*net.TCPAddr).AddrPort()
	e.pool = NewPool(PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	t.Cleanup(func() { e.pool.Close() })

	echoOnce(t, e, echo)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 5 {
		t.Fatalf("OnAcceptError called %d times (%v), want 5", len(seen), seen)
	}
	for i, errno := range []syscall.Errno{syscall.EMFILE, syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.EMFILE} {
		if !errors.Is(seen[i], errno) {
			t.Errorf("OnAcceptError #%d = %v, want %v", i, seen[i], errno)
		}
	}
}
