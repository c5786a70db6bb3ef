package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// The raw-frame conformance suite of the client: a Pool dials a fake
// HTTP/2 server whose every frame a test chooses, and the test checks
// what the Pool answers (RFC 9113) and what Dial returns.

// fakeH2 is a scripted HTTP/2 server on a loopback mTLS listener. Each
// accepted connection runs script with its number (0, 1, ...) once the
// preface and SETTINGS were exchanged; what script returns is reported
// on results.
type fakeH2 struct {
	ca       *identitytest.CA
	addr     netip.AddrPort
	serverID spiffeid.ID
	results  chan error
}

func newFakeH2(t *testing.T, settings []http2.Setting, script func(n int, p *rawH2) error) *fakeH2 {
	t.Helper()
	ca := identitytest.New(t, "cluster.local")
	f := &fakeH2{ca: ca, serverID: ca.ID("/ns/b/sa/fake"), results: make(chan error, 16)}
	cfg := ca.ServerTLS(t, f.serverID)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().(*net.TCPAddr).AddrPort()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := tls.Server(c, cfg)
				p := newRawH2(t, tc)
				err := p.serverPreface(settings)
				if err == nil {
					err = script(n, p)
				}
				select {
				case f.results <- err:
				default:
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return f
}

// serverPreface runs the TLS handshake, reads the client preface and
// SETTINGS, writes settings (nil: write none at all) and the ACK.
func (p *rawH2) serverPreface(settings []http2.Setting) error {
	p.conn.SetDeadline(time.Now().Add(confTimeout))
	defer p.conn.SetDeadline(time.Time{})
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(p.conn, preface); err != nil || string(preface) != http2.ClientPreface {
		return fmt.Errorf("fake server: client preface %q: %v", preface, err)
	}
	if settings == nil {
		return nil
	}
	p.fr.WriteSettings(settings...)
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("fake server: reading the client's SETTINGS: %w", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			p.fr.WriteSettingsAck()
			return p.bw.Flush()
		}
	}
}

// nextFrame is next without failing the test (scripts run on their own
// goroutines).
func (p *rawH2) nextFrame() (http2.Frame, error) {
	p.conn.SetReadDeadline(time.Now().Add(confTimeout))
	return p.fr.ReadFrame()
}

// awaitConnect reads until the client's HEADERS on a stream and returns
// the stream's ID.
func (p *rawH2) awaitConnect() (uint32, error) {
	for {
		f, err := p.nextFrame()
		if err != nil {
			return 0, fmt.Errorf("fake server: waiting for a CONNECT: %w", err)
		}
		if hf, ok := f.(*http2.MetaHeadersFrame); ok {
			if m := hf.PseudoValue("method"); m != "CONNECT" {
				return 0, fmt.Errorf("fake server: request method %q, want CONNECT", m)
			}
			return hf.StreamID, nil
		}
	}
}

// respond writes a response HEADERS of status on stream id.
func (p *rawH2) respond(id uint32, status string) error {
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(":status", status), EndHeaders: true})
	return p.bw.Flush()
}

// awaitEnd reads until the client closes the connection and returns
// what it sent meanwhile, as the server tests' outcome.
func (p *rawH2) awaitEnd(stop func(http2.Frame) bool) outcome {
	o := outcome{rst: map[uint32]http2.ErrCode{}}
	for {
		f, err := p.nextFrame()
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
		if stop != nil && stop(f) {
			return o
		}
	}
}

// pool returns a Pool for f's server, closed when the test ends.
func (f *fakeH2) pool(t *testing.T, opts ...func(*PoolConfig)) *Pool {
	cfg := PoolConfig{TLSConfig: f.ca.PoolTLS(t, nil)}
	for _, o := range opts {
		o(&cfg)
	}
	p := NewPool(cfg)
	t.Cleanup(func() { p.Close() })
	return p
}

func (f *fakeH2) target() Target {
	return Target{Addr: f.addr, Authority: "10.0.0.1:80", SourceID: f.ca.ID("/ns/a/sa/client"), DestIDs: []spiffeid.ID{f.serverID}}
}

// result returns the next script result.
func (f *fakeH2) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-f.results:
		return err
	case <-time.After(2 * confTimeout):
		t.Fatal("the fake server's script did not end")
		return nil
	}
}

// TestConformanceClient: the Pool's reaction to a server that breaks
// RFC 9113, as the server sees it.
func TestConformanceClient(t *testing.T) {
	tests := []struct {
		name string
		// serve runs on the fake server's first connection after the
		// client's CONNECT on stream id; it returns the client's
		// reaction.
		serve func(p *rawH2, id uint32) outcome
		want  func(t *testing.T, o outcome)
		// dialOK: Dial succeeds (the violation comes after the 200).
		dialOK bool
	}{
		{
			name: "HEADERS on a stream the client did not open",
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(id+2, "200")
				return p.awaitEnd(nil)
			},
			want: func(t *testing.T, o outcome) { o.connErr(t, http2.ErrCodeProtocol) },
		},
		{
			name: "HEADERS on an even stream",
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(2, "200")
				return p.awaitEnd(nil)
			},
			want: func(t *testing.T, o outcome) { o.connErr(t, http2.ErrCodeProtocol) },
		},
		{
			name: "PUSH_PROMISE",
			serve: func(p *rawH2, id uint32) outcome {
				p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: 2, BlockFragment: p.block(":method", "GET"), EndHeaders: true})
				p.bw.Flush()
				return p.awaitEnd(nil)
			},
			want: func(t *testing.T, o outcome) { o.connErr(t, http2.ErrCodeProtocol) },
		},
		{
			name:   "DATA past the stream window",
			dialOK: true, // and the test reads nothing
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(id, "200")
				chunk := make([]byte, 1<<20) // the client accepts frames up to 1 MiB
				for range streamWindow / len(chunk) {
					p.fr.WriteData(id, false, chunk)
				}
				p.fr.WriteData(id, false, []byte{1})
				p.bw.Flush()
				return p.awaitEnd(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
			},
			want: func(t *testing.T, o outcome) { o.streamErr(t, 1, http2.ErrCodeFlowControl) },
		},
		{
			name:   "DATA after END_STREAM",
			dialOK: true,
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(id, "200")
				p.fr.WriteData(id, true, []byte("end"))
				p.fr.WriteData(id, false, []byte("late"))
				p.bw.Flush()
				return p.awaitEnd(func(f http2.Frame) bool {
					_, rst := f.(*http2.RSTStreamFrame)
					_, ga := f.(*http2.GoAwayFrame)
					return rst || ga
				})
			},
			want: func(t *testing.T, o outcome) {
				if o.rst[1] != http2.ErrCodeStreamClosed {
					o.connErr(t, http2.ErrCodeStreamClosed)
				}
			},
		},
		{
			name:   "connection window overflow",
			dialOK: true,
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(id, "200")
				p.fr.WriteWindowUpdate(0, 1<<31-1)
				p.bw.Flush()
				return p.awaitEnd(nil)
			},
			want: func(t *testing.T, o outcome) { o.connErr(t, http2.ErrCodeFlowControl) },
		},
		{
			name:   "RST_STREAM on an idle stream",
			dialOK: true,
			serve: func(p *rawH2, id uint32) outcome {
				p.respond(id, "200")
				p.fr.WriteRSTStream(id+2, http2.ErrCodeCancel)
				p.bw.Flush()
				return p.awaitEnd(nil)
			},
			want: func(t *testing.T, o outcome) { o.connErr(t, http2.ErrCodeProtocol) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outcomes := make(chan outcome, 1)
			f := newFakeH2(t, []http2.Setting{}, func(n int, p *rawH2) error {
				id, err := p.awaitConnect()
				if err != nil {
					return err
				}
				if n > 0 {
					// A retry of the CONNECT: not under test.
					p.awaitEnd(nil)
					return nil
				}
				outcomes <- tt.serve(p, id)
				return nil
			})
			pool := f.pool(t)
			c, err := pool.Dial(ctxTimeout(t), f.target())
			if (err == nil) != tt.dialOK {
				t.Errorf("Dial() error = %v, want success %v", err, tt.dialOK)
			}
			if err := f.result(t); err != nil {
				t.Fatal(err)
			}
			tt.want(t, <-outcomes)
			if c != nil {
				c.Close()
			}
		})
	}
}

// TestConformanceClientGoAway: streams the server's GOAWAY says it did
// not process (past its last-stream-id) are retried on a new connection;
// the stream it processed goes on.
func TestConformanceClientGoAway(t *testing.T) {
	f := newFakeH2(t, []http2.Setting{}, func(n int, p *rawH2) error {
		first, err := p.awaitConnect()
		if err != nil {
			return err
		}
		p.respond(first, "200")
		if n > 0 {
			p.fr.WriteData(first, true, []byte("second connection"))
			p.bw.Flush()
			p.awaitEnd(nil)
			return nil
		}
		second, err := p.awaitConnect()
		if err != nil {
			return err
		}
		// Not processed: GOAWAY with the first stream as the last one.
		p.fr.WriteGoAway(first, http2.ErrCodeNo, nil)
		p.fr.WriteData(first, true, []byte("first stream goes on"))
		p.bw.Flush()
		if o := p.awaitEnd(func(f http2.Frame) bool { return f.Header().StreamID == second }); !o.closed && o.rst[second] == 0 {
			// The client may reset the stream it moves (CANCEL); it must
			// not send it DATA as if it were processed.
			if f := o.frames[len(o.frames)-1]; f.h.Type == http2.FrameData {
				return fmt.Errorf("client sent DATA on stream %d past the GOAWAY's last stream %d", second, first)
			}
		}
		p.awaitEnd(nil)
		return nil
	})
	pool := f.pool(t)
	c1, err := pool.Dial(ctxTimeout(t), f.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := pool.Dial(ctxTimeout(t), f.target())
	if err != nil {
		t.Fatalf("Dial() after GOAWAY = %v, want a retry on a new connection", err)
	}
	defer c2.Close()
	c1.SetDeadline(time.Now().Add(confTimeout))
	c2.SetDeadline(time.Now().Add(confTimeout))
	for _, tc := range []struct {
		c    *Conn
		want string
	}{{c1, "first stream goes on"}, {c2, "second connection"}} {
		if got, err := io.ReadAll(tc.c); err != nil || string(got) != tc.want {
			t.Errorf("ReadAll() = %q, %v; want %q", got, err, tc.want)
		}
	}
	c1.Close()
	c2.Close()
	pool.Close()
	for range 2 {
		if err := f.result(t); err != nil {
			t.Error(err)
		}
	}
}

// TestConformanceClientMaxConcurrentStreams: a SETTINGS that lowers
// MAX_CONCURRENT_STREAMS is acknowledged and obeyed: the next stream
// goes to a new connection.
func TestConformanceClientMaxConcurrentStreams(t *testing.T) {
	acked := make(chan bool, 1)
	f := newFakeH2(t, []http2.Setting{}, func(n int, p *rawH2) error {
		id, err := p.awaitConnect()
		if err != nil {
			return err
		}
		if n == 0 {
			p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
			p.bw.Flush()
			o := p.awaitEnd(func(f http2.Frame) bool {
				sf, ok := f.(*http2.SettingsFrame)
				return ok && sf.IsAck()
			})
			acked <- !o.closed
		}
		p.respond(id, "200")
		o := p.awaitEnd(nil)
		for _, f := range o.frames {
			if f.h.Type == http2.FrameHeaders && f.h.StreamID != id {
				return fmt.Errorf("connection %d: stream %d opened past MAX_CONCURRENT_STREAMS 1", n, f.h.StreamID)
			}
		}
		return nil
	})
	pool := f.pool(t)
	c1, err := pool.Dial(ctxTimeout(t), f.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if !<-acked {
		t.Fatal("the client closed the connection instead of acknowledging SETTINGS")
	}
	c2, err := pool.Dial(ctxTimeout(t), f.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := pool.Stats(); got.Conns != 2 || got.Streams != 2 {
		t.Errorf("Stats() = %+v, want 2 connections of one stream each", got)
	}
	c1.Close()
	c2.Close()
	pool.Close()
	for range 2 {
		if err := f.result(t); err != nil {
			t.Error(err)
		}
	}
}

// TestConformanceClientSilentServer: a server that completes TLS and then
// never sends its SETTINGS nor answers anything. Dial does not hang past
// the PING timeout, and the connection is closed.
func TestConformanceClientSilentServer(t *testing.T) {
	f := newFakeH2(t, nil, func(n int, p *rawH2) error {
		p.conn.SetReadDeadline(time.Now().Add(2 * confTimeout))
		_, err := io.Copy(io.Discard, p.conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return errors.New("the client kept the connection to a silent server open")
		}
		return nil
	})
	pool := f.pool(t, func(c *PoolConfig) {
		c.PingInterval = 100 * time.Millisecond
		c.PingTimeout = 300 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	c, err := pool.Dial(ctx, f.target())
	if err == nil {
		c.Close()
		t.Fatal("Dial() to a silent server succeeded")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial() = %v: it waited for its context, not for the PING timeout", err)
	}
	if err := f.result(t); err != nil {
		t.Error(err)
	}
}
