package hbone

import (
	"io"
	"net"
	"sync"
)

// Relay reads each direction into a small buffer, and into a large one
// once a read filled the small one: a bulk transfer then costs a fourth of
// the syscalls (and of the HTTP/2 frames and TLS flushes) it would with
// 32 KiB. Buffers are pooled and taken only once data is there (from a
// [Conn], or a socket), so that the many idle connections hold none.
const (
	smallBufSize = 16 << 10
	largeBufSize = 128 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// Relay copies both ways between a and b until both directions are done.
// When one direction reaches EOF it half-closes the other side (CloseWrite,
// or Close if the conn has no CloseWrite); when one fails, both conns are
// closed. Both are closed when Relay returns. It returns the bytes copied
// a→b and b→a and the first error other than EOF.
//
// Between two *net.TCPConn the kernel copies (splice); otherwise pooled
// buffers are used: 16 KiB, then 128 KiB once a read fills 16 KiB, held
// only while data is copied when the source is a [Conn] or a socket. One
// goroutine is started for the a→b direction.
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
	if c, ok := src.(*Conn); ok {
		return c.WriteTo(dst)
	}
	dst = asSockConn(dst)
	// Only a plain TCP socket: a wrapper that embeds one may hold bytes of
	// its own (a peeked prefix) that reading the fd would skip.
	if tc, ok := src.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			if n, ok, err := copySocket(dst, src, rc); ok {
				return n, err
			}
		}
	}
	pool := &smallBufs
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	var written int64
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if nw != nr {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		if nr == len(buf) && pool == &smallBufs {
			pool.Put(bp)
			pool = &largeBufs
			bp = pool.Get().(*[]byte)
		}
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
