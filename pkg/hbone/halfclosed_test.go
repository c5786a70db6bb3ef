package hbone

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// RFC 9113 §5.1: a frame other than WINDOW_UPDATE, PRIORITY or RST_STREAM
// on a stream that is half-closed (remote) — the peer sent END_STREAM — is
// a stream error STREAM_CLOSED, on both sides; the connection lives on.

// TestServerHeadersAfterEndStream: a client that sends HEADERS without
// END_STREAM on a stream it already ended gets RST_STREAM(STREAM_CLOSED)
// for that stream, not a connection error.
func TestServerHeadersAfterEndStream(t *testing.T) {
	e := newTestEnv(t, HandlerFunc(func(ctx context.Context, _ *Request, tun *Tunnel) {
		if _, err := tun.Accept(); err == nil {
			<-ctx.Done() // keep the server's side open
		}
	}))
	p := e.dialH2(t)
	p.hbuf.Reset()
	p.henc.WriteField(hpack.HeaderField{Name: ":method", Value: http.MethodConnect})
	p.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.hbuf.Bytes(), EndHeaders: true, EndStream: true})
	p.bw.Flush()
	if _, ok := p.readUntil(func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	}); !ok {
		t.Fatal("no response to the CONNECT")
	}
	// Trailers without END_STREAM, after END_STREAM.
	p.hbuf.Reset()
	p.henc.WriteField(hpack.HeaderField{Name: "trailer", Value: "1"})
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.hbuf.Bytes(), EndHeaders: true})
	p.fr.WritePing(false, [8]byte{1})
	p.bw.Flush()
	var got []string
	goAway, _ := p.readUntil(func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			got = append(got, fmt.Sprintf("RST_STREAM %d %v", f.StreamID, f.ErrCode))
		case *http2.PingFrame:
			got = append(got, "PING ack")
			return true
		}
		return false
	})
	if goAway != nil {
		t.Fatalf("server sent GOAWAY %v, want RST_STREAM 1 STREAM_CLOSED and the connection open", goAway.ErrCode)
	}
	want := fmt.Sprintf("[RST_STREAM 1 %v PING ack]", http2.ErrCodeStreamClosed)
	if fmt.Sprint(got) != want {
		t.Errorf("frames after HEADERS on a half-closed (remote) stream = %v, want %v", got, want)
	}
}

// TestClientDataAfterEndStream: a server that sends DATA on a stream it
// already ended (while the client's side is open) gets
// RST_STREAM(STREAM_CLOSED) from the client.
func TestClientDataAfterEndStream(t *testing.T) {
	e := newTestEnv(t, relayHandler())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rst := make(chan error, 1)
	go func() { rst <- rawServer(l, e.ca.ServerTLS(t, e.serverID)) }()
	tgt := e.target("10.0.0.1:80")
	tgt.Addr = l.Addr().(*net.TCPAddr).AddrPort()
	c, err := e.pool.Dial(ctxT(t), tgt)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer c.Close()
	select {
	case err := <-rst:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no RST_STREAM from the client within 20 s")
	}
}

// rawServer accepts one connection on l, answers the CONNECT on stream 1
// with 200 and END_STREAM, then sends DATA on stream 1, and returns nil if
// the client resets stream 1 with STREAM_CLOSED.
func rawServer(l net.Listener, cfg *tls.Config) error {
	c, err := l.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, preface); err != nil {
		return err
	}
	bw := bufio.NewWriter(tc)
	fr := http2.NewFramer(bw, tc)
	fr.SetMaxReadFrameSize(maxFrameSize)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("reading the CONNECT: %w", err)
		}
		if h, ok := f.(*http2.HeadersFrame); ok && h.StreamID == 1 {
			break
		}
	}
	var hbuf = new(bufWriter)
	henc := hpack.NewEncoder(hbuf)
	henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.b, EndHeaders: true, EndStream: true})
	fr.WriteData(1, false, []byte("after END_STREAM"))
	if err := bw.Flush(); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("no RST_STREAM for stream 1: %w", err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 1 {
			if r.ErrCode != http2.ErrCodeStreamClosed {
				return fmt.Errorf("client reset stream 1 with %v, want %v", r.ErrCode, http2.ErrCodeStreamClosed)
			}
			return nil
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return errors.New("client sent GOAWAY " + g.ErrCode.String())
		}
	}
}

type bufWriter struct{ b []byte }

func (w *bufWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
