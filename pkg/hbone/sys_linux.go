//go:build linux

package hbone

import (
	"syscall"
	"unsafe"
)

// sysRawRead and sysRawWrite are read(2) and write(2) without the
// runtime's entersyscall (sock_unix.go says why); only for non-blocking
// descriptors, which they never wait on. rawRead and rawWrite are these
// (sys_raw_linux.go), except in race-detector builds (sys_other.go).

func sysRawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(ptr), uintptr(len(p)))
	return int(n), errno
}

func sysRawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(ptr), uintptr(len(p)))
	return int(n), errno
}
