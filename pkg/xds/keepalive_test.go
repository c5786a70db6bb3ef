package xds

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// silencer forwards TCP connections to target. silence makes the
// connections open at that moment forward nothing more, in either
// direction, and close nothing: the client's connection stays established
// with a peer that never answers again (a node gone without FIN or RST, a
// path that drops everything). Later connections are forwarded.
type silencer struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	conns []net.Conn
	flags []*bool // per connection pair: silenced
	wg    sync.WaitGroup
}

func startSilencer(t *testing.T, target string) *silencer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silencer{l: l, target: target}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *silencer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", s.target)
		if err != nil {
			c.Close()
			continue
		}
		silent := new(bool)
		s.mu.Lock()
		s.conns = append(s.conns, c, up)
		s.flags = append(s.flags, silent)
		s.mu.Unlock()
		s.wg.Add(2)
		go s.pipe(up, c, silent)
		go s.pipe(c, up, silent)
	}
}

// pipe copies from src to dst until silenced (then it keeps reading and
// drops what it reads) or until either side is closed.
func (s *silencer) pipe(dst, src net.Conn, silenced *bool) {
	defer s.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if err == io.EOF {
				dst.(*net.TCPConn).CloseWrite()
			}
			return
		}
		s.mu.Lock()
		silent := *silenced
		s.mu.Unlock()
		if silent {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (s *silencer) silence() {
	s.mu.Lock()
	for _, f := range s.flags {
		*f = true
	}
	s.mu.Unlock()
}

// TestClientRedialsSilentServer: a connection to istiod-lite whose other
// end goes silent (no FIN, no RST) is noticed by the keepalive and
// redialed; without keepalive the client would wait on it for good.
func TestClientRedialsSilentServer(t *testing.T) {
	if testing.Short() {
		t.Skip("takes gRPC's shortest keepalive (10 s)")
	}
	keepaliveTime = 10 * time.Second // gRPC's floor
	t.Cleanup(func() { keepaliveTime = KeepaliveTime })

	ads, target := startScripted(t)
	sil := startSilencer(t, target)
	c, err := NewClient(ClientConfig{
		Target: sil.l.Addr().String(), Node: testNode, TypeURLs: []string{workloadapi.AddressTypeURL}, Handler: &recorder{},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() { started <- c.Start(ctx) }()
	defer func() {
		cancel()
		<-started
	}()
	ss := ads.accept(t)
	recvRequest(t, ss)
	sil.silence()
	start := time.Now()
	// The next stream can only come through a new connection: the silenced
	// one carries nothing any more. Ping after 10 s, 10 s to answer.
	select {
	case <-ads.streams:
		t.Logf("redialed %v after the server went silent", time.Since(start).Round(time.Second))
	case <-time.After(KeepaliveTimeout + keepaliveTime + 15*time.Second):
		t.Fatal("the client did not notice that the server went silent")
	}
}
