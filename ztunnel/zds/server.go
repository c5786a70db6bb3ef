package zds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler applies the requests of the CNI plugin.
type Handler interface {
	// AddPod is called when a pod starts (or is re-announced); it returns
	// once the pod's capture state is applied. The server closes netns
	// after AddPod returns: a handler that keeps it dups it.
	AddPod(ctx context.Context, p Pod, netns *os.File) error
	// DelPod is called when a pod is deleted.
	DelPod(ctx context.Context, p Pod) error
}

// Server listens for the CNI plugin. Socket and Handler are required.
type Server struct {
	// Socket is the path to listen on; a stale file there is removed.
	Socket string
	// Handler applies requests.
	Handler Handler
	// Timeout bounds one request, the handler included; default 30s.
	Timeout time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Start listens on Socket and serves requests until ctx is done, then
// waits for the requests in flight and removes the socket.
func (s *Server) Start(ctx context.Context) error {
	l, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, l)
}

// Listen creates the socket (and its directory), removing a stale one.
func (s *Server) Listen() (*net.UnixListener, error) {
	if s.Socket == "" || s.Handler == nil {
		return nil, errors.New("zds: Server needs Socket and Handler")
	}
	if err := os.MkdirAll(filepath.Dir(s.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("zds: %w", err)
	}
	if err := os.Remove(s.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("zds: removing stale socket: %w", err)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.Socket, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("zds: %w", err)
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// Serve serves requests on l until ctx is done, then closes l and waits
// for the requests in flight.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "zds")
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer wg.Wait()
	log.Info("listening for the CNI plugin", "socket", s.Socket)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			l.Close()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("zds: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			s.handle(rctx, c, log)
		}()
	}
}

func (s *Server) handle(ctx context.Context, c *net.UnixConn, log *slog.Logger) {
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		log.Warn("reading request", "error", err)
		return
	}
	files, err := receivedFiles(oob[:oobn])
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var reply message
	reply.Type = TypeAck
	var m message
	switch {
	case err != nil:
		reply.Error = err.Error()
	case json.Unmarshal(buf[:n], &m) != nil || m.Pod == nil:
		reply.Error = "malformed request"
	case m.Type == TypeAdd:
		if len(files) != 1 {
			reply.Error = fmt.Sprintf("add needs exactly one netns descriptor, got %d", len(files))
			break
		}
		if err := s.Handler.AddPod(ctx, *m.Pod, files[0]); err != nil {
			reply.Error = err.Error()
		}
	case m.Type == TypeDel:
		if err := s.Handler.DelPod(ctx, *m.Pod); err != nil {
			reply.Error = err.Error()
		}
	default:
		reply.Error = fmt.Sprintf("unknown request type %q", m.Type)
	}
	if m.Pod != nil {
		attrs := []any{"type", m.Type, "pod", m.Pod.Namespace + "/" + m.Pod.Name, "uid", m.Pod.UID}
		if reply.Error != "" {
			log.Warn("request failed", append(attrs, "error", reply.Error)...)
		} else {
			log.Info("request applied", attrs...)
		}
	} else if reply.Error != "" {
		log.Warn("request failed", "error", reply.Error)
	}
	b, _ := json.Marshal(reply)
	if _, err := c.Write(b); err != nil {
		log.Warn("writing ack", "error", err)
	}
}

// receivedFiles returns the descriptors passed with SCM_RIGHTS.
func receivedFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "netns"))
		}
	}
	return files, nil
}
