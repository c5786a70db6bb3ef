package hbone

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestClientDeadline(t *testing.T) {
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		if c, err := tun.Accept(); err == nil {
			io.Copy(io.Discard, c) // never writes
		}
	}))
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatalf("SetReadDeadline() = %v", err)
	}
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read() after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	// Clearing the deadline makes the stream usable again.
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline() = %v", err)
	}
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Errorf("Write() after clearing the deadline = %v", err)
	}
	if err := c.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("SetWriteDeadline() = %v", err)
	}
	if _, err := c.Write([]byte("hi")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write() after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
}
