//go:build linux && !race

package hbone

import "syscall"

func rawRead(fd uintptr, p []byte) (int, syscall.Errno) { return sysRawRead(fd, p) }

func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) { return sysRawWrite(fd, p) }
