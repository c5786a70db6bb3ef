// Command floorrelay is the bench's floor variant: a plain TCP relay with
// no TLS and no HTTP/2. For each -map LISTEN=DIAL it accepts connections
// on LISTEN, dials DIAL for each, and copies both ways with half-close.
// Two of them, placed where the two ztunnels are, measure what two
// user-space hops cost on the machine; `make bench` (tests/cmd/bench)
// builds and starts them.
//
// Bytes are copied through a user-space buffer (io.CopyBuffer with the
// connections' ReadFrom/WriteTo hidden): io.Copy between two TCP
// connections would use splice(2) and move no byte through user space,
// which no proxy that encrypts can do.
//
// -admin serves net/http/pprof (the bench takes execution traces from it,
// as from ztunnel's admin server).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type maps []string

func (m *maps) String() string     { return strings.Join(*m, ",") }
func (m *maps) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	var m maps
	flag.Var(&m, "map", "LISTEN=DIAL, host:port each (repeatable)")
	admin := flag.String("admin", "", "address of the pprof server (empty: none)")
	bufSize := flag.Int("buffer", 32<<10, "copy buffer per direction, bytes (io.Copy's default)")
	flag.Parse()
	if len(m) == 0 {
		log.Fatal("floorrelay: no -map")
	}
	for _, pair := range m {
		listen, dial, ok := strings.Cut(pair, "=")
		if !ok {
			log.Fatalf("floorrelay: -map %q: want LISTEN=DIAL", pair)
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			log.Fatalf("floorrelay: %v", err)
		}
		go serve(l, dial, *bufSize)
	}
	if *admin != "" {
		l, err := net.Listen("tcp", *admin)
		if err != nil {
			log.Fatalf("floorrelay: admin: %v", err)
		}
		go func() { log.Print(http.Serve(l, nil)) }()
	}
	fmt.Println("floorrelay: ready")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}

func serve(l net.Listener, dial string, bufSize int) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			log.Printf("floorrelay: accept: %v", err)
			return
		}
		go relay(c.(*net.TCPConn), dial, bufSize)
	}
}

func relay(c *net.TCPConn, dial string, bufSize int) {
	defer c.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	u, err := d.Dial("tcp", dial)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	done := make(chan struct{})
	abort := func() { c.Close(); up.Close() } // a failed direction ends both
	go func() {
		defer close(done)
		if copyHalf(up, c, bufSize) != nil {
			abort()
		}
	}()
	if copyHalf(c, up, bufSize) != nil {
		abort()
	}
	<-done
}

// copyHalf copies src to dst through a buffer, then half-closes dst.
func copyHalf(dst, src *net.TCPConn, bufSize int) error {
	buf := make([]byte, bufSize)
	if _, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf); err != nil {
		return err
	}
	return dst.CloseWrite()
}
