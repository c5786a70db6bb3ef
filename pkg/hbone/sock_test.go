//go:build unix

package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// sockPair returns the two ends of a loopback TCP connection, the first as a
// sockConn.
func sockPair(t *testing.T) (*sockConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	sc := newSockConn(c.(*net.TCPConn))
	if sc == nil {
		t.Fatal("newSockConn: nil")
	}
	t.Cleanup(func() { sc.Close(); peer.Close() })
	return sc, peer.(*net.TCPConn)
}

func TestSockConnReadWrite(t *testing.T) {
	sc, peer := sockPair(t)

	// A write larger than the socket buffers: Write must wait for the
	// reader (EAGAIN, then the poller) and deliver every byte in order.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := sc.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	sc.CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, not the %d written", len(b), len(want))
	}

	// Read waits for data, returns it, then io.EOF after the peer's close.
	go func() {
		time.Sleep(20 * time.Millisecond)
		peer.Write([]byte("hello"))
		peer.CloseWrite()
	}()
	b, err := io.ReadAll(sc)
	if err != nil || string(b) != "hello" {
		t.Fatalf("ReadAll = %q, %v; want hello, nil", b, err)
	}
	if n, err := sc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := sc.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestSockConnDeadlineAndClose(t *testing.T) {
	sc, _ := sockPair(t)
	sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := sc.Read(make([]byte, 8))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read past the deadline: %#v; want a net.OpError of op read", err)
	}
	sc.SetReadDeadline(time.Time{})

	done := make(chan error, 1)
	go func() {
		_, err := sc.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	sc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read during Close: %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read did not return after Close")
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v; want net.ErrClosed", err)
	}
}

func TestSockConnTryWriteFull(t *testing.T) {
	sc, peer := sockPair(t)
	// Nobody reads: tryWrite takes what fits and then reports a full
	// socket as (0, nil), never waiting.
	chunk := make([]byte, 64<<10)
	total := 0
	for i := 0; ; i++ {
		if i > 10000 {
			t.Fatal("the socket never filled")
		}
		n, err := sc.tryWrite(chunk)
		if err != nil {
			t.Fatalf("tryWrite: %v", err)
		}
		total += n
		if n == 0 {
			break
		}
	}
	// Everything it said it wrote arrives.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.ReadFull(peer, make([]byte, total)); err != nil {
		t.Fatalf("peer read %d of %d bytes: %v", n, total, err)
	}
	sc.Close()
	if _, err := sc.tryWrite(chunk); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("tryWrite after Close: %v; want net.ErrClosed", err)
	}
}
