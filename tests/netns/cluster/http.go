package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Get sends one HTTP/1.0 request from inside the pod over a plain socket,
// as an unmodified application does, and returns the body of a 200 answer.
func (p *Pod) Get(ctx context.Context, target netip.AddrPort, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, "tcp", target.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, target); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("answer %q", b)
	}
	return string(body), nil
}
