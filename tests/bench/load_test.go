package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLoadAgainstApps runs every generator briefly, directly against the
// applications on a random loopback address. It checks that they measure
// something, not how fast.
func TestLoadAgainstApps(t *testing.T) {
	host := fmt.Sprintf("127.%d.%d.%d", 30+rand.IntN(190), 150+rand.IntN(50), 1+rand.IntN(250))
	apps, err := StartApps(host)
	if err != nil {
		t.Fatalf("StartApps(%s): %v", host, err)
	}
	defer apps.Close()
	dial := func(ctx context.Context, port uint16) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	}
	ctx := context.Background()

	tp, err := Throughput(ctx, dial, 8<<20, 2*time.Second)
	if err != nil || tp.Bytes == 0 || tp.BytesPerSecond() <= 0 {
		t.Errorf("Throughput() = %+v, %v; want bytes confirmed by the sink", tp, err)
	}
	ol, err := OpenLoop(ctx, dial, 2, 500, 200*time.Millisecond)
	if err != nil || ol.Requests != 100 || ol.P99 <= 0 || ol.P50 > ol.P99 {
		t.Errorf("OpenLoop(500 rps, 200ms) = %+v, %v; want 100 requests and ordered percentiles", ol, err)
	}
	cl, err := ClosedLoop(ctx, dial, 2, 100*time.Millisecond)
	if err != nil || cl.Requests == 0 || cl.RPS() <= 0 {
		t.Errorf("ClosedLoop() = %+v, %v; want requests", cl, err)
	}
	nc := NewConns(ctx, dial, 2, 100*time.Millisecond)
	if nc.Conns == 0 || nc.Errors != 0 {
		t.Errorf("NewConns() = %+v, want connections and no errors", nc)
	}
	cs, err := IdleConns(ctx, dial, 10)
	if err != nil || len(cs) != 10 {
		t.Fatalf("IdleConns(10) = %d conns, %v", len(cs), err)
	}
	closeAll(cs)
}

// TestWriteCerts checks that the peer's certificates chain to the root and
// serve both ends of a TLS 1.3 connection.
func TestWriteCerts(t *testing.T) {
	dir := t.TempDir()
	if err := WriteCerts(dir); err != nil {
		t.Fatalf("WriteCerts: %v", err)
	}
	root, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		t.Fatal("ca.pem holds no certificate")
	}
	load := func(name string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		if err != nil {
			t.Fatalf("loading %s: %v", name, err)
		}
		return c
	}
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{load("server")}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	cli := tls.Client(b, &tls.Config{Certificates: []tls.Certificate{load("client")}, RootCAs: pool,
		ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Errorf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Errorf("server handshake: %v", err)
	}
	a.Close() // not the TLS conns: close_notify on a synchronous pipe blocks
	b.Close()
}
