package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HTTPPort is the HTTP application's port on the server pod's address: a
// POST of ReqSize bytes to HTTPPath answers 200 with ReqSize bytes, over
// persistent HTTP/1.1 connections. The L7 figures (waypoint, HAProxy) use
// it.
const HTTPPort uint16 = 7080

// HTTPPath is the path the HTTP load requests; the L7 peer routes on its
// prefix.
const HTTPPath = "/echo/1k"

// httpRequest is the request of the HTTP load: a 1 KiB POST.
var httpRequest = []byte(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s",
	HTTPPath, ReqSize, strings.Repeat("q", ReqSize)))

var httpAnswer = []byte(strings.Repeat("a", ReqSize))

// httpApp answers a ReqSize body with a ReqSize body; anything else is a
// 400.
func httpApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil || n != ReqSize {
			http.Error(w, fmt.Sprintf("want a body of %d bytes, got %d (%v)", ReqSize, n, err), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(ReqSize))
		w.Write(httpAnswer)
	})
}

// newHTTPServer returns the HTTP application's server.
func newHTTPServer() *http.Server {
	return &http.Server{Handler: httpApp(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
}

// httpExchange sends the 1 KiB POST on c and reads a 200 with a 1 KiB
// body; the connection stays open for the next request.
func httpExchange(c net.Conn) exchange {
	br := bufio.NewReaderSize(c, 8<<10)
	return func() error {
		if _, err := c.Write(httpRequest); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			return fmt.Errorf("reading the answer's body: %w", err)
		case resp.StatusCode != http.StatusOK || n != ReqSize:
			return fmt.Errorf("answer %q with %d bytes, want 200 with %d", resp.Status, n, ReqSize)
		case resp.Close:
			return errors.New("the answer closes the connection")
		}
		return nil
	}
}

// HTTPOpenLoop is OpenLoop with HTTP/1.1 requests (a 1 KiB POST, a 1 KiB
// answer) to the HTTP application over conns persistent connections.
func HTTPOpenLoop(ctx context.Context, dial Dialer, conns int, rate float64, duration time.Duration) (LoadResult, error) {
	return openLoop(ctx, dial, HTTPPort, httpExchange, conns, rate, duration)
}

// HTTPClosedLoop is ClosedLoop with HTTP/1.1 requests to the HTTP
// application.
func HTTPClosedLoop(ctx context.Context, dial Dialer, conns int, duration time.Duration) (LoadResult, error) {
	return closedLoop(ctx, dial, HTTPPort, httpExchange, conns, duration)
}

// HTTPCheck sends one request over a new connection and checks its
// answer.
func HTTPCheck(ctx context.Context, dial Dialer) error {
	c, err := dial(ctx, HTTPPort)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return httpExchange(c)()
}
