package hbone

import (
	"io"
	"net"
	"sync"
)

const relayBufSize = 32 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// Relay copies both ways between a and b until both directions are done.
// When one direction reaches EOF it half-closes the other side (CloseWrite,
// or Close if the conn has no CloseWrite); when one fails, both conns are
// closed. Both are closed when Relay returns. It returns the bytes copied
// a→b and b→a and the first error other than EOF.
//
// Between two *net.TCPConn the kernel copies (splice); otherwise pooled
// 32 KiB buffers are used. One goroutine is started for the a→b direction.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var (
		mu    sync.Mutex
		first error
	)
	half := func(dst, src net.Conn) int64 {
		n, err := copyHalf(dst, src)
		if err == nil {
			err = closeWrite(dst)
		}
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
			a.Close()
			b.Close()
		}
		return n
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		aToB = half(b, a)
	}()
	bToA = half(a, b)
	<-done
	a.Close()
	b.Close()
	return aToB, bToA, first
}

func copyHalf(dst, src net.Conn) (int64, error) {
	_, dstTCP := dst.(*net.TCPConn)
	_, srcTCP := src.(*net.TCPConn)
	if dstTCP && srcTCP {
		return io.Copy(dst, src) // splice(2)
	}
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	// Hide ReadFrom/WriteTo so that the pooled buffer is used instead of
	// one allocated by a generic fallback.
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
