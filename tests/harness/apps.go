package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// Echo is a TCP application bound to a pod address. For each connection it
// first writes one line, "<name> <client address>\n", then echoes every
// byte back, and half-closes when the client does.
type Echo struct {
	Name string
	Addr netip.AddrPort
	l    net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartEcho runs an Echo on addr until the test ends.
func StartEcho(t testing.TB, name string, addr netip.AddrPort) *Echo {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("echo app %s: %v", name, err)
	}
	e := &Echo{Name: name, Addr: addr, l: l, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(e.Close)
	return e
}

func (e *Echo) serve() {
	defer e.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := e.l.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() {
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
				c.Close()
			}()
			fmt.Fprintf(c, "%s %s\n", e.Name, c.RemoteAddr())
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// Close stops the app and closes its connections.
func (e *Echo) Close() {
	e.l.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// Hello reads the first line an Echo sends: its name and the client
// address it saw.
func Hello(c net.Conn) (name string, client netip.AddrPort, r *bufio.Reader, err error) {
	r = bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", netip.AddrPort{}, r, fmt.Errorf("reading hello: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", netip.AddrPort{}, r, errors.New("bad hello line " + line)
	}
	client, err = netip.ParseAddrPort(f[1])
	return f[0], client, r, err
}
