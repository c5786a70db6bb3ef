package main

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRelayHalfClose sends bytes through the relay to a server that
// counts until EOF and answers the count: the answer arrives only if the
// relay carries the client's half-close to the server and the answer back.
func TestRelayHalfClose(t *testing.T) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		c, err := srv.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		binary.Write(c, binary.BigEndian, n)
	}()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(rl, srv.Addr().String(), 4096)
	}()
	defer func() { rl.Close(); <-done }()

	c, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	const size = 1 << 20
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got int64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		t.Fatalf("reading the count through the relay: %v", err)
	}
	if got != size {
		t.Errorf("server counted %d bytes, want %d", got, size)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the answer: %v, want EOF (the server's close relayed)", err)
	}
}
