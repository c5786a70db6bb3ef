//go:build !linux

package hbone

import "syscall"

// BindAddressNoPort does nothing: IP_BIND_ADDRESS_NO_PORT is Linux's.
func BindAddressNoPort(_, _ string, _ syscall.RawConn) error { return nil }
