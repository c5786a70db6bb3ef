//go:build unix

package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Socket reads and writes without the runtime's system-call entry.
//
// The net package makes every read(2) and write(2) through the runtime's
// entersyscall, which wakes the runtime's monitor thread (sysmon) when the
// process was idle, so that it could take the processor back should the
// call block. On a non-blocking socket the call never blocks, but the
// wake-up happens anyway, and sysmon then naps in 20 µs steps until the
// process is idle again. A proxy at a few thousand requests per second is
// idle between requests, so every request paid for it: on the waypoint at
// 1000 rps, 38 % of all context switches were sysmon's (perf record -e
// sched:sched_switch; docs/optimisations.md). sockConn makes the same calls
// as raw system calls (sys_linux.go) inside RawConn's callbacks, which keep
// the netpoller's waiting, the deadlines and Close as net.TCPConn has them.

// sockConn is a TCP connection whose Read and Write are raw system calls.
// Everything else is the embedded TCPConn's.
type sockConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu sync.Mutex // one Read at a time: r is its state
	r   sockOp
	wmu sync.Mutex // one Write or tryWrite at a time: w is its state
	w   sockOp
	// tryFn is w's callback for tryWrite: one write, never waits.
	tryFn func(fd uintptr) bool
}

// sockOp is one direction's call state, read by its callback (built once:
// a closure per call would allocate).
type sockOp struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// newSockConn returns tc with raw reads and writes, or nil if its RawConn is
// not available.
func newSockConn(tc *net.TCPConn) *sockConn {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	c := &sockConn{TCPConn: tc, rc: rc}
	c.r.fn = func(fd uintptr) bool {
		for {
			n, errno := rawRead(fd, c.r.p)
			switch errno {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait until readable
			}
			c.r.n, c.r.errno = n, errno
			return true
		}
	}
	c.w.fn = func(fd uintptr) bool {
		for c.w.n < len(c.w.p) {
			n, errno := rawWrite(fd, c.w.p[c.w.n:])
			switch errno {
			case 0:
				c.w.n += n
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // wait until writable
			default:
				c.w.errno = errno
				return true
			}
		}
		return true
	}
	c.tryFn = func(fd uintptr) bool {
		for {
			n, errno := rawWrite(fd, c.w.p)
			if errno == syscall.EINTR {
				continue
			}
			if errno == syscall.EAGAIN {
				errno = 0 // full: nothing written, no error
			}
			c.w.n, c.w.errno = max(n, 0), errno
			return true
		}
	}
	return c
}

// asSockConn returns c with raw reads and writes if it is a plain TCP
// connection, else c.
func asSockConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		if sc := newSockConn(tc); sc != nil {
			return sc
		}
	}
	return c
}

func (c *sockConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.r.p, c.r.n, c.r.errno = p, 0, 0
	err := c.rc.Read(c.r.fn)
	n, errno := c.r.n, c.r.errno
	c.r.p = nil
	switch {
	case err != nil:
		return 0, c.opErr("read", err) // deadline, or closed while waiting
	case errno != 0:
		return 0, c.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *sockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return c.write(p, c.w.fn)
}

// tryWrite writes what the socket takes now, with one system call: n <
// len(p) and a nil error when it is full. It fails if the connection is
// closed or past its write deadline.
func (c *sockConn) tryWrite(p []byte) (int, error) { return c.write(p, c.tryFn) }

// write runs fn, Write's or tryWrite's callback, for p.
func (c *sockConn) write(p []byte, fn func(fd uintptr) bool) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.w.p, c.w.n, c.w.errno = p, 0, 0
	err := c.rc.Write(fn)
	n, errno := c.w.n, c.w.errno
	c.w.p = nil
	switch {
	case err != nil:
		return n, c.opErr("write", err)
	case errno != 0:
		return n, c.opErr("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opErr describes a failed call as net.TCPConn's would: RawConn's own
// errors say "raw-read"/"raw-write".
func (c *sockConn) opErr(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
