package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// writeToEnv runs a server whose handler accepts and copies the stream to
// one end of a TCP pair with WriteTo; setup runs first, on the server's
// stream. It returns the client's stream, the TCP end to read what WriteTo
// wrote, and WriteTo's result once it returns.
type writeToResult struct {
	n   int64
	err error
}

func writeToEnv(t *testing.T, setup func(c *Conn, dst *net.TCPConn)) (client net.Conn, far *net.TCPConn, srv <-chan *Conn, res <-chan writeToResult) {
	t.Helper()
	dst, far := tcpPair(t)
	resc := make(chan writeToResult, 1)
	srvc := make(chan *Conn, 1)
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if setup != nil {
			setup(c, dst)
		}
		srvc <- c
		n, err := c.WriteTo(dst)
		resc <- writeToResult{n, err}
	}))
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, far, srvc, resc
}

// TestDirectDelivery: while WriteTo waits, DATA goes from the reader
// goroutine straight to its socket; the stream's buffer is never used.
func TestDirectDelivery(t *testing.T) {
	c, far, srvc, res := writeToEnv(t, nil)
	srv := <-srvc
	waitFor(t, "WriteTo to wait", func() bool {
		srv.s.c.mu.Lock()
		defer srv.s.c.mu.Unlock()
		return srv.s.sink != nil
	})
	msg := bytes.Repeat([]byte("x"), 1<<10)
	got := make([]byte, len(msg))
	const n = 50
	for range n {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(far, got); err != nil {
			t.Fatal(err)
		}
	}
	srv.s.c.mu.Lock()
	capacity := srv.s.buf.Cap()
	srv.s.c.mu.Unlock()
	if capacity != 0 {
		t.Errorf("receive buffer capacity after %d delivered messages = %d, want 0 (delivered directly)", n, capacity)
	}
	c.(*Conn).CloseWrite()
	r := <-res
	if r.err != nil || r.n != n*int64(len(msg)) {
		t.Errorf("WriteTo() = %d, %v; want %d, nil", r.n, r.err, n*len(msg))
	}
}

// TestDirectDeliveryPartial: a socket that takes part of a frame, or none,
// gets the rest from WriteTo, in order; every consumed byte goes back to
// the connection window.
func TestDirectDeliveryPartial(t *testing.T) {
	c, far, srvc, res := writeToEnv(t, func(_ *Conn, dst *net.TCPConn) {
		dst.SetWriteBuffer(4 << 10) // fills at once while far is not read
	})
	srv := <-srvc
	const size = 2 << 20
	want, _ := io.ReadAll(seeded(7, size))
	go func() {
		c.Write(want)
		c.(*Conn).CloseWrite()
	}()
	time.Sleep(50 * time.Millisecond) // let the socket fill
	got, err := io.ReadAll(io.LimitReader(far, size))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes (%v), equal to the %d written: %v", len(got), err, size, bytes.Equal(got, want))
	}
	if r := <-res; r.err != nil || r.n != size {
		t.Errorf("WriteTo() = %d, %v; want %d, nil", r.n, r.err, size)
	}
	h := srv.s.c
	h.mu.Lock()
	window := h.in.avail + h.in.unacked
	h.mu.Unlock()
	if window != connWindow {
		t.Errorf("connection window after everything was consumed = %d, want %d", window, connWindow)
	}
}

// TestDirectDeliveryClosedDuringWrite: a stream closed while the reader
// writes to WriteTo's socket: WriteTo returns only after that write, and
// the connection window gets every byte back.
func TestDirectDeliveryClosedDuringWrite(t *testing.T) {
	inWrite, release := make(chan struct{}), make(chan struct{})
	c, far, srvc, res := writeToEnv(t, func(c *Conn, _ *net.TCPConn) {
		h := c.s.c
		h.mu.Lock()
		h.deliverHook = func() {
			inWrite <- struct{}{}
			<-release
		}
		h.mu.Unlock()
	})
	srv := <-srvc
	// Only DATA that arrives while WriteTo waits is delivered by the
	// reader (and runs the hook); earlier DATA is buffered.
	waitFor(t, "WriteTo to wait", func() bool {
		srv.s.c.mu.Lock()
		defer srv.s.c.mu.Unlock()
		return srv.s.sink != nil
	})
	msg := bytes.Repeat([]byte("y"), 1<<10)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inWrite:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the reader did not deliver the DATA to WriteTo's socket")
	}
	srv.Close()
	select {
	case r := <-res:
		t.Fatalf("WriteTo() = %d, %v while the reader still writes to its socket", r.n, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	r := <-res
	if r.n != int64(len(msg)) || !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("WriteTo() = %d, %v; want %d, net.ErrClosed", r.n, r.err, len(msg))
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(far, got); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("socket got %q, %v; want the message", got, err)
	}
	h := srv.s.c
	waitFor(t, "the connection window to be whole", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.in.avail+h.in.unacked == connWindow
	})
}

// TestDirectDeliveryWriteDeadline: the socket's write deadline holds for
// the reader's writes as for WriteTo's own.
func TestDirectDeliveryWriteDeadline(t *testing.T) {
	c, _, srvc, res := writeToEnv(t, func(_ *Conn, dst *net.TCPConn) {
		dst.SetWriteDeadline(time.Now().Add(-time.Second))
	})
	<-srvc
	if _, err := c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if r := <-res; !errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Errorf("WriteTo() = %d, %v; want os.ErrDeadlineExceeded", r.n, r.err)
	}
}

// TestBuffered: Buffered tells, without blocking, what Read would return.
func TestBuffered(t *testing.T) {
	type result struct {
		n   int
		err error
	}
	c, _, srvc, _ := writeToEnv(t, func(c *Conn, _ *net.TCPConn) {
		// Read the stream here instead of through WriteTo.
		got := func() result { n, err := c.Buffered(); return result{n, err} }
		steps := []struct {
			name string
			want result
		}{
			{"open, nothing sent", result{0, nil}},
			{"4 bytes sent", result{4, nil}},
			{"read, then half-closed by the peer", result{0, io.EOF}},
		}
		for i, s := range steps {
			if i == 1 {
				waitFor(t, "the data", func() bool { n, _ := c.Buffered(); return n > 0 })
			}
			if i == 2 {
				io.ReadFull(c, make([]byte, 4))
				waitFor(t, "the half-close", func() bool { _, err := c.Buffered(); return err != nil })
			}
			if r := got(); r != s.want {
				t.Errorf("%s: Buffered() = %d, %v; want %d, %v", s.name, r.n, r.err, s.want.n, s.want.err)
			}
			if i == 0 {
				c.Write([]byte("go")) // the client sends
			}
		}
		c.Close()
		if n, err := c.Buffered(); n != 0 || !errors.Is(err, net.ErrClosed) {
			t.Errorf("after Close: Buffered() = %d, %v; want 0, net.ErrClosed", n, err)
		}
	})
	go func() {
		buf := make([]byte, 2)
		io.ReadFull(c, buf)
		c.Write([]byte("data"))
		c.(*Conn).CloseWrite()
	}()
	<-srvc
}
