package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// L7Config describes the L7 peer: HAProxy in mode http, placed where a
// waypoint is, between the stunnel client and the stunnel server. It
// terminates TLS 1.3 with mutual authentication (the stunnel client's
// certificate), routes by path prefix (use_backend on path_beg), and
// re-encrypts to the stunnel server with its own client certificate — the
// work a waypoint does between two ztunnels: terminate mTLS, parse HTTP,
// pick an upstream, originate mTLS.
type L7Config struct {
	// HAProxy is the binary; default "haproxy".
	HAProxy string
	// Dir receives the configuration and the log; it must hold the
	// certificates WriteCerts wrote (the peer's directory).
	Dir string
	// Listen is the frontend's address.
	Listen netip.AddrPort
	// Backend is where requests of HTTPPath's prefix go (TLS): the stunnel
	// server's listener for the HTTP application (PeerConfig.L7Backend).
	Backend netip.AddrPort
	// Start starts the process (for instance inside a pod's network
	// namespace); nil: in this process's namespace.
	Start func(*exec.Cmd) error
	// Dial connects to its listener (from inside the namespace it runs
	// in); nil: a plain dial.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// L7Peer is a running HAProxy.
type L7Peer struct {
	procs Processes
	Proc  *Process
}

// StartL7 writes HAProxy's configuration and starts it, returning once
// its frontend accepts connections.
func StartL7(ctx context.Context, cfg L7Config) (*L7Peer, error) {
	if cfg.HAProxy == "" {
		cfg.HAProxy = "haproxy"
	}
	// HAProxy wants the certificate and its key in one file.
	for _, name := range []string{"server", "client"} {
		cert, err := os.ReadFile(filepath.Join(cfg.Dir, name+".pem"))
		if err != nil {
			return nil, fmt.Errorf("certificates (WriteCerts): %w", err)
		}
		key, err := os.ReadFile(filepath.Join(cfg.Dir, name+"-key.pem"))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(cfg.Dir, "haproxy-"+name+".pem"), append(cert, key...), 0o600); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(cfg.Dir, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(haproxyConf(cfg)), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, cfg.HAProxy, "-c", "-q", "-f", conf).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxy -c %s: %w: %s", conf, err, out)
	}
	p := &L7Peer{}
	var err error
	p.Proc, err = p.procs.StartWith(cfg.Start, "haproxy", cfg.HAProxy, filepath.Join(cfg.Dir, "haproxy.log"), "-db", "-f", conf)
	if err != nil {
		return nil, err
	}
	dial := orDial(cfg.Dial)
	if err := WaitFor(ctx, 10*time.Second, "haproxy on "+cfg.Listen.String(), func() bool {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := dial(dctx, "tcp", cfg.Listen.String())
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%w (log in %s)", err, cfg.Dir)
	}
	return p, nil
}

// Stop stops HAProxy.
func (p *L7Peer) Stop() { p.procs.Stop() }

// haproxyConf is HAProxy's configuration: TLS 1.3 only with the suite and
// curve the stunnels and Go use, client certificates required on both
// hops and verified against the bench root, keep-alive on both sides, one
// access log line per request on stdout (as the waypoint logs each
// request), and requests routed by path prefix: HTTPPath's first segment
// to the backend, anything else answered 404 by HAProxy itself.
func haproxyConf(cfg L7Config) string {
	prefix := "/" + strings.Split(strings.TrimPrefix(HTTPPath, "/"), "/")[0]
	return fmt.Sprintf(`global
    maxconn 4096
    log stdout format raw local0 info
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
    ssl-default-server-options ssl-min-ver TLSv1.3
    ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256
    tune.ssl.default-dh-param 2048

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend mesh
    bind %[1]s ssl crt %[2]s/haproxy-server.pem ca-file %[2]s/ca.pem verify required curves prime256v1 alpn http/1.1
    use_backend app if { path_beg %[3]s }
    default_backend unrouted

backend app
    server app %[4]s ssl verify required ca-file %[2]s/ca.pem crt %[2]s/haproxy-client.pem

backend unrouted
    http-request return status 404 content-type text/plain string "no route"
`, cfg.Listen, cfg.Dir, prefix, cfg.Backend)
}

// HAProxyVersion is the first line of `haproxy -v` ("HAProxy version
// 2.6.12-1+deb12u4 ..."), or "HAProxy" when it cannot be read.
func HAProxyVersion(bin string) string {
	if bin == "" {
		bin = "haproxy"
	}
	out, err := exec.Command(bin, "-v").Output()
	if err != nil {
		return "HAProxy"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if f := strings.Fields(line); len(f) >= 3 {
		return "HAProxy " + f[2]
	}
	return "HAProxy"
}
