//go:build unix

package hbone

import (
	"io"
	"net"
	"os"
	"syscall"
)

// tcpSink writes to a TCP socket with one non-blocking write(2) in
// RawConn.Write's callback, which never asks to wait.
type tcpSink struct {
	conn  *net.TCPConn
	rc    syscall.RawConn
	write func(fd uintptr) bool // built once: a closure per write would allocate

	p     []byte
	n     int
	errno error
}

func newSinkWriter(w io.Writer) sinkWriter {
	// Only a plain TCP socket: a wrapper may hold bytes of its own.
	tc, ok := w.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &tcpSink{conn: tc, rc: rc}
	s.write = func(fd uintptr) bool {
		for {
			s.n, s.errno = syscall.Write(int(fd), s.p)
			if s.errno != syscall.EINTR {
				return true
			}
		}
	}
	return s
}

func (s *tcpSink) tryWrite(p []byte) (int, error) {
	s.p = p
	err := s.rc.Write(s.write) // fails if closed, or past the write deadline
	s.p = nil
	switch {
	case err != nil:
		return 0, err
	case s.errno == syscall.EAGAIN:
		return 0, nil
	case s.errno != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError("write", s.errno)}
	}
	return max(s.n, 0), nil
}
