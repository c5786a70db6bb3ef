package hbone

import (
	"net"
	"net/netip"
)

// CloseFrom closes the pooled connections whose local address is src, and
// so every stream on them: the tunnels of a workload that left the node.
func (p *Pool) CloseFrom(src netip.Addr) {
	p.mu.Lock()
	var gone []*poolConn
	for key, conns := range p.conns {
		if key.srcAddr == src {
			gone = append(gone, conns...)
			delete(p.conns, key)
		}
	}
	p.mu.Unlock()
	for _, pc := range gone {
		pc.cc.Close()
	}
}

// CloseTo closes the server's connections whose local address is dst (the
// address the clients dialed), and so every tunnel on them: the tunnels to
// a workload that left the node.
func (s *Server) CloseTo(dst netip.Addr) {
	s.mu.Lock()
	var raw []net.Conn
	var gone []*serverConn
	for c, sc := range s.conns {
		if addrOf(c.LocalAddr()) != dst {
			continue
		}
		if sc == nil {
			raw = append(raw, c) // still handshaking
		} else {
			gone = append(gone, sc)
		}
	}
	s.mu.Unlock()
	for _, c := range raw {
		c.Close()
	}
	for _, sc := range gone {
		sc.close(errServerClosing)
	}
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}
