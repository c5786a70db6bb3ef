package proxy

import "errors"

// ErrIllegalPort is a connection to one of ztunnel's own ports
// (Config.ReservedPorts), refused at both ends.
var ErrIllegalPort = errors.New("port is reserved for ztunnel")

// DefaultReservedPorts returns Istio's ztunnel ports, the default of
// Config.ReservedPorts: admin 15000, outbound capture 15001, inbound
// plaintext 15006, HBONE 15008, metrics 15020, readiness 15021 and SOCKS5
// 15080.
func DefaultReservedPorts() []uint16 {
	return []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}
}
