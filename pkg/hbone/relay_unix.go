//go:build unix

package hbone

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// copySocket copies from the socket src (rc) to dst until EOF. It reads in
// rc.Read's callback, taking a pooled buffer only once the socket is
// readable and giving it back when it is not, so that an idle connection
// holds no buffer while it waits. ok is always true here.
func copySocket(dst, src net.Conn, rc syscall.RawConn) (written int64, ok bool, err error) {
	// The callback is built once: a closure per read would be an
	// allocation per read.
	var (
		large bool
		bp    *[]byte
		pool  *sync.Pool
		nr    int
		rerr  error
	)
	read := func(fd uintptr) bool {
		pool = &smallBufs
		if large {
			pool = &largeBufs
		}
		bp = pool.Get().(*[]byte)
		var errno syscall.Errno
		for {
			nr, errno = rawRead(fd, *bp)
			if errno != syscall.EINTR {
				break
			}
		}
		rerr = nil
		if errno != 0 {
			rerr = errno
		}
		if errno == syscall.EAGAIN {
			pool.Put(bp)
			bp = nil
			return false // wait for data without the buffer
		}
		return true
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "read", Net: src.LocalAddr().Network(), Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: err}
	}
	for {
		bp = nil
		if err := rc.Read(read); err != nil {
			// Deadline, or src closed while waiting.
			if bp != nil {
				pool.Put(bp)
			}
			return written, true, opErr(err)
		}
		if rerr != nil {
			pool.Put(bp)
			return written, true, opErr(os.NewSyscallError("read", rerr))
		}
		if nr <= 0 {
			pool.Put(bp)
			return written, true, nil // EOF
		}
		nw, werr := dst.Write((*bp)[:nr])
		written += int64(nw)
		if werr == nil && nw != nr {
			werr = io.ErrShortWrite
		}
		large = nr == len(*bp)
		pool.Put(bp)
		if werr != nil {
			return written, true, werr
		}
	}
}
