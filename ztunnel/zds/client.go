package zds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoServer is returned (wrapped) when nothing listens on the socket:
// ztunnel is not running on this node.
var ErrNoServer = errors.New("zds: ztunnel is not listening")

// Client sends pods to ztunnel. The zero value uses DefaultSocket.
type Client struct {
	// Socket is ztunnel's socket; default DefaultSocket.
	Socket string
	// Timeout bounds a whole request; default 10s.
	Timeout time.Duration
}

// Add hands the pod, with its network namespace (opened from p.Netns), to
// ztunnel and returns once ztunnel has applied its capture state.
func (c *Client) Add(ctx context.Context, p Pod) error {
	ns, err := os.Open(p.Netns)
	if err != nil {
		return fmt.Errorf("zds: opening netns of %s/%s: %w", p.Namespace, p.Name, err)
	}
	defer ns.Close()
	return c.do(ctx, message{Type: TypeAdd, Pod: &p}, ns)
}

// Del tells ztunnel that the pod is gone. It returns an error wrapping
// ErrNoServer when ztunnel is not running.
func (c *Client) Del(ctx context.Context, p Pod) error {
	return c.do(ctx, message{Type: TypeDel, Pod: &p}, nil)
}

func (c *Client) do(ctx context.Context, m message, fd *os.File) error {
	sock := c.Socket
	if sock == "" {
		sock = DefaultSocket
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", sock)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("zds: %s %s/%s: %w: %w", m.Type, m.Pod.Namespace, m.Pod.Name, ErrNoServer, err)
		}
		return fmt.Errorf("zds: dialing ztunnel: %w", err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("zds: encoding %s: %w", m.Type, err)
	}
	var oob []byte
	if fd != nil {
		oob = unix.UnixRights(int(fd.Fd()))
	}
	if _, _, err := conn.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("zds: sending %s: %w", m.Type, ctxErr(ctx, err))
	}
	buf := make([]byte, maxMessage)
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("zds: waiting for ack of %s %s/%s: %w", m.Type, m.Pod.Namespace, m.Pod.Name, ctxErr(ctx, err))
	}
	var ack message
	if err := json.Unmarshal(buf[:n], &ack); err != nil || ack.Type != TypeAck {
		return fmt.Errorf("zds: bad ack %q: %w", buf[:n], err)
	}
	if ack.Error != "" {
		return fmt.Errorf("zds: ztunnel refused %s %s/%s: %s", m.Type, m.Pod.Namespace, m.Pod.Name, ack.Error)
	}
	return nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
