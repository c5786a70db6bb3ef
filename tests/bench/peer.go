package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// PeerConfig describes the peer variant: a stunnel4 client and server
// doing TLS 1.3 with mutual authentication and ECDSA P-256 certificates,
// the classic L4 mTLS tunnel, in front of the same applications.
type PeerConfig struct {
	// Stunnel is the stunnel binary; default "stunnel4".
	Stunnel string
	// Dir receives certificates, configuration and logs.
	Dir string
	// Client and Server are the addresses the stunnel client and server
	// accept on.
	Client, Server netip.Addr
	// Backend is the applications' address (the server pod).
	Backend netip.Addr
	// StartClient and StartServer start each stunnel (for instance inside
	// a pod's network namespace); nil: in this process's namespace.
	StartClient, StartServer func(*exec.Cmd) error
	// DialClient and DialServer connect to each stunnel's listeners (from
	// inside the namespace it runs in); nil: a plain dial.
	DialClient, DialServer func(ctx context.Context, network, addr string) (net.Conn, error)
	// L7, when valid, is the address of an L7 proxy (HAProxy, see StartL7)
	// that terminates TLS: the stunnel client then also accepts on
	// Client:HTTPPort+L7PortOffset and connects there (DialL7), and the
	// proxy re-encrypts to the stunnel server (L7Backend).
	L7 netip.AddrPort
}

func orDial(f func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if f != nil {
		return f
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	return d.DialContext
}

// Peer is a running stunnel pair.
type Peer struct {
	cfg    PeerConfig
	procs  Processes
	Client *Process
	Server *Process
}

// The stunnel server accepts application port + peerPortOffset.
const peerPortOffset = 1000

// L7PortOffset: the stunnel client accepts HTTPPort+L7PortOffset for the
// path through the L7 proxy.
const L7PortOffset = 2000

// peerPorts are the application ports the stunnel pair carries.
var peerPorts = []uint16{EchoPort, SinkPort, GreetPort, HTTPPort}

// L7Backend is where an L7 proxy in front of the stunnel server sends
// the HTTP application's traffic (TLS, as the stunnel client does).
func (c PeerConfig) L7Backend() netip.AddrPort {
	return netip.AddrPortFrom(c.Server, HTTPPort+peerPortOffset)
}

// StartPeer generates the certificates and starts both stunnels.
func StartPeer(ctx context.Context, cfg PeerConfig) (*Peer, error) {
	if cfg.Stunnel == "" {
		cfg.Stunnel = "stunnel4"
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := WriteCerts(cfg.Dir); err != nil {
		return nil, err
	}
	p := &Peer{cfg: cfg}
	for _, side := range []struct {
		name   string
		client bool
		proc   **Process
		start  func(*exec.Cmd) error
	}{{"server", false, &p.Server, cfg.StartServer}, {"client", true, &p.Client, cfg.StartClient}} {
		conf := filepath.Join(cfg.Dir, "stunnel-"+side.name+".conf")
		if err := os.WriteFile(conf, []byte(stunnelConf(cfg, side.client)), 0o644); err != nil {
			return nil, err
		}
		var err error
		*side.proc, err = p.procs.StartWith(side.start, "stunnel "+side.name, cfg.Stunnel, filepath.Join(cfg.Dir, "stunnel-"+side.name+".log"), conf)
		if err != nil {
			p.Stop()
			return nil, err
		}
	}
	for _, w := range []struct {
		a    netip.AddrPort
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
	}{
		{netip.AddrPortFrom(cfg.Server, EchoPort+peerPortOffset), orDial(cfg.DialServer)},
		{netip.AddrPortFrom(cfg.Client, EchoPort), orDial(cfg.DialClient)},
	} {
		a := w.a
		if err := WaitFor(ctx, 10*time.Second, "stunnel on "+a.String(), func() bool {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := w.dial(dctx, "tcp", a.String())
			if err == nil {
				c.Close()
			}
			return err == nil
		}); err != nil {
			p.Stop()
			return nil, fmt.Errorf("%w (logs in %s)", err, cfg.Dir)
		}
	}
	return p, nil
}

// Stop stops both stunnels.
func (p *Peer) Stop() { p.procs.Stop() }

// Dial connects to the stunnel client's listener for the application port.
func (p *Peer) Dial(ctx context.Context, port uint16) (net.Conn, error) {
	return orDial(p.cfg.DialClient)(ctx, "tcp", netip.AddrPortFrom(p.cfg.Client, port).String())
}

// DialL7 connects to the stunnel client's listener that leads through the
// L7 proxy (PeerConfig.L7); only the HTTP application is reached that way.
func (p *Peer) DialL7(ctx context.Context, port uint16) (net.Conn, error) {
	if port != HTTPPort {
		return nil, fmt.Errorf("the L7 path carries port %d only, not %d", HTTPPort, port)
	}
	return orDial(p.cfg.DialClient)(ctx, "tcp", netip.AddrPortFrom(p.cfg.Client, port+L7PortOffset).String())
}

// stunnelConf is the configuration of one side. Both sides pin TLS 1.3 and
// TLS_AES_128_GCM_SHA256 (the suite Go's TLS prefers on machines with
// AES-NI, so that both variants encrypt alike) and verify the peer's chain.
func stunnelConf(cfg PeerConfig, client bool) string {
	var b strings.Builder
	name := "server"
	if client {
		name = "client"
	}
	fmt.Fprintf(&b, `foreground = yes
pid =
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
sslVersionMin = TLSv1.3
sslVersionMax = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
curves = prime256v1
cert = %[1]s/%[2]s.pem
key = %[1]s/%[2]s-key.pem
CAfile = %[1]s/ca.pem
verifyChain = yes
`, cfg.Dir, name)
	for _, port := range peerPorts {
		fmt.Fprintf(&b, "\n[app-%d]\n", port)
		if client {
			fmt.Fprintf(&b, "client = yes\naccept = %s\nconnect = %s\n",
				netip.AddrPortFrom(cfg.Client, port), netip.AddrPortFrom(cfg.Server, port+peerPortOffset))
		} else {
			fmt.Fprintf(&b, "accept = %s\nconnect = %s\n",
				netip.AddrPortFrom(cfg.Server, port+peerPortOffset), netip.AddrPortFrom(cfg.Backend, port))
		}
	}
	if client && cfg.L7.IsValid() {
		fmt.Fprintf(&b, "\n[l7-%d]\nclient = yes\naccept = %s\nconnect = %s\n",
			HTTPPort, netip.AddrPortFrom(cfg.Client, HTTPPort+L7PortOffset), cfg.L7)
	}
	return b.String()
}

// WriteCerts writes, into dir, a root (ca.pem) and two ECDSA P-256 leaves
// signed by it, server.pem/server-key.pem and client.pem/client-key.pem,
// each usable for both client and server authentication.
func WriteCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bench root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, name := range []string{"server", "client"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: "bench " + name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, name+".pem"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", keyDER); err != nil {
			return err
		}
	}
	return nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
