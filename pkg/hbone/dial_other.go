//go:build !linux

package hbone

import "syscall"

// bindAddressNoPort does nothing: IP_BIND_ADDRESS_NO_PORT is Linux's.
func bindAddressNoPort(_, _ string, _ syscall.RawConn) error { return nil }
