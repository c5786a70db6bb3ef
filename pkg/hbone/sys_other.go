//go:build unix && (!linux || race)

package hbone

import "syscall"

// rawRead and rawWrite are syscall.Read and Write where raw system calls
// are not used: on other systems, and in race-detector builds, where
// syscall.Read and Write's annotations order a write on one socket before
// the read of its bytes on another. Raw calls would hide that order from
// the detector, which would then report races that are none.

func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return n, errnoOf(err)
}

func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errno, ok := err.(syscall.Errno); ok {
		return errno
	}
	return syscall.EIO
}
