//go:build linux

package hbone

import (
	"syscall"
	"testing"
)

// The raw calls themselves, also in race-detector builds (which use
// syscall.Read and Write in sockConn): on a non-blocking socket pair they
// move bytes, and report EAGAIN instead of waiting.
func TestSysRawReadWrite(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	a, b := uintptr(fds[0]), uintptr(fds[1])
	buf := make([]byte, 16)
	if n, errno := sysRawRead(a, buf); errno != syscall.EAGAIN {
		t.Fatalf("read of an empty socket = %d, %v; want EAGAIN", n, errno)
	}
	if n, errno := sysRawWrite(b, []byte("ping")); n != 4 || errno != 0 {
		t.Fatalf("write = %d, %v; want 4, 0", n, errno)
	}
	if n, errno := sysRawRead(a, buf); n != 4 || errno != 0 || string(buf[:4]) != "ping" {
		t.Fatalf("read = %d, %v, %q; want 4, 0, ping", n, errno, buf[:max(n, 0)])
	}
	if n, errno := sysRawWrite(b, nil); n != 0 || errno != 0 {
		t.Fatalf("empty write = %d, %v; want 0, 0", n, errno)
	}
	syscall.Close(fds[1])
	if n, errno := sysRawRead(a, buf); n != 0 || errno != 0 {
		t.Fatalf("read after the peer closed = %d, %v; want 0 (EOF), 0", n, errno)
	}
	if _, errno := sysRawWrite(uintptr(1<<20), buf); errno != syscall.EBADF {
		t.Fatalf("write to a bad descriptor: %v; want EBADF", errno)
	}
}
