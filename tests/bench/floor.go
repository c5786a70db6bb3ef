package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// FloorConfig describes the floor variant: two plain TCP relays
// (tests/cmd/bench/floorrelay: accept, dial, copy both ways through a
// user-space buffer, half-close; no TLS, no HTTP/2) placed where the two
// proxies of the other variants are. What the floor adds over direct is
// what two user-space hops cost on the machine.
type FloorConfig struct {
	// Bin is the floorrelay binary.
	Bin string
	// Dir receives the logs.
	Dir string
	// Client and Server are the addresses the client-side and server-side
	// relays accept on (the client's and the server's pod in the netns
	// topology).
	Client, Server netip.Addr
	// Backend is the applications' address.
	Backend netip.Addr
	// StartClient and StartServer start each relay (inside a pod's network
	// namespace, say); nil: in this process's namespace.
	StartClient, StartServer func(*exec.Cmd) error
	// DialClient and DialServer connect to each relay's listeners (from
	// inside its namespace); nil: a plain dial.
	DialClient, DialServer func(ctx context.Context, network, addr string) (net.Conn, error)
}

// The floor's relays accept application port + these offsets (the
// stunnels take +1000 and +2000).
const (
	floorClientOffset = 3000
	floorServerOffset = 4000
)

// FloorAdminPort is the port of each relay's pprof server, on its own
// address.
const FloorAdminPort = 15300

// Floor is a running pair of relays.
type Floor struct {
	cfg    FloorConfig
	procs  Processes
	Client *Process
	Server *Process
}

// StartFloor starts both relays and returns once each accepts.
func StartFloor(ctx context.Context, cfg FloorConfig) (*Floor, error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	f := &Floor{cfg: cfg}
	for _, side := range []struct {
		name  string
		proc  **Process
		start func(*exec.Cmd) error
		addr  netip.Addr
		args  func(port uint16) string
	}{
		{"server", &f.Server, cfg.StartServer, cfg.Server, func(port uint16) string {
			return fmt.Sprintf("%s=%s", netip.AddrPortFrom(cfg.Server, port+floorServerOffset), netip.AddrPortFrom(cfg.Backend, port))
		}},
		{"client", &f.Client, cfg.StartClient, cfg.Client, func(port uint16) string {
			return fmt.Sprintf("%s=%s", netip.AddrPortFrom(cfg.Client, port+floorClientOffset), netip.AddrPortFrom(cfg.Server, port+floorServerOffset))
		}},
	} {
		args := []string{"-admin", netip.AddrPortFrom(side.addr, FloorAdminPort).String()}
		for _, port := range peerPorts {
			args = append(args, "-map", side.args(port))
		}
		var err error
		*side.proc, err = f.procs.StartWith(side.start, "floor "+side.name, cfg.Bin, filepath.Join(cfg.Dir, "floor-"+side.name+".log"), args...)
		if err != nil {
			f.Stop()
			return nil, err
		}
	}
	for _, w := range []struct {
		a    netip.AddrPort
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
	}{
		{netip.AddrPortFrom(cfg.Server, EchoPort+floorServerOffset), orDial(cfg.DialServer)},
		{netip.AddrPortFrom(cfg.Client, EchoPort+floorClientOffset), orDial(cfg.DialClient)},
	} {
		if err := WaitFor(ctx, 10*time.Second, "floor relay on "+w.a.String(), func() bool {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := w.dial(dctx, "tcp", w.a.String())
			if err == nil {
				c.Close()
			}
			return err == nil
		}); err != nil {
			f.Stop()
			return nil, fmt.Errorf("%w (logs in %s)", err, cfg.Dir)
		}
	}
	return f, nil
}

// Stop stops both relays.
func (f *Floor) Stop() { f.procs.Stop() }

// Dial connects to the client-side relay's listener for the application
// port.
func (f *Floor) Dial(ctx context.Context, port uint16) (net.Conn, error) {
	return orDial(f.cfg.DialClient)(ctx, "tcp", netip.AddrPortFrom(f.cfg.Client, port+floorClientOffset).String())
}

// AdminClient and AdminServer fetch path from each relay's pprof server.
func (f *Floor) AdminClient(ctx context.Context, path string) ([]byte, error) {
	return getVia(ctx, orDial(f.cfg.DialClient), netip.AddrPortFrom(f.cfg.Client, FloorAdminPort), path)
}

// AdminServer: see AdminClient.
func (f *Floor) AdminServer(ctx context.Context, path string) ([]byte, error) {
	return getVia(ctx, orDial(f.cfg.DialServer), netip.AddrPortFrom(f.cfg.Server, FloorAdminPort), path)
}

// getVia GETs http://a+path over connections made by dial.
func getVia(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), a netip.AddrPort, path string) ([]byte, error) {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.String()+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}
