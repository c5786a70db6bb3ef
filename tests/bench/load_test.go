package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
	hol, err := HTTPOpenLoop(ctx, dial, 2, 500, 200*time.Millisecond)
	if err != nil || hol.Requests != 100 || hol.P50 > hol.P99 {
		t.Errorf("HTTPOpenLoop(500 rps, 200ms) = %+v, %v; want 100 requests and ordered percentiles", hol, err)
	}
	hcl, err := HTTPClosedLoop(ctx, dial, 2, 100*time.Millisecond)
	if err != nil || hcl.Requests == 0 {
		t.Errorf("HTTPClosedLoop() = %+v, %v; want requests", hcl, err)
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

// TestHTTPExchangeRefusesBadAnswers checks that the HTTP load counts only
// 200 answers of ReqSize bytes on a kept-alive connection as requests:
// a proxy answering an error, a short body or closing each connection
// fails the run.
func TestHTTPExchangeRefusesBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		wantErr string
	}{
		{"ok", func(w http.ResponseWriter, r *http.Request) { httpApp().ServeHTTP(w, r) }, ""},
		{"403", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "RBAC: access denied", http.StatusForbidden)
		}, "403"},
		{"short body", func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); w.Write([]byte("short")) }, "5 bytes"},
		{"closes", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			httpApp().ServeHTTP(w, r)
		}, "closes the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			dial := func(ctx context.Context, _ uint16) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
			}
			err := HTTPCheck(context.Background(), dial)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("HTTPCheck() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("HTTPCheck() = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestOverlaps(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(startUs, endUs int) span {
		return span{t0.Add(time.Duration(startUs) * time.Microsecond), t0.Add(time.Duration(endUs) * time.Microsecond)}
	}
	tests := []struct {
		name     string
		spans    []span
		wantN    int
		wantSolo []time.Duration
	}{
		{name: "none", wantN: 0},
		{name: "apart", spans: []span{at(0, 100), at(1000, 1150)}, wantSolo: []time.Duration{100 * time.Microsecond, 150 * time.Microsecond}},
		{name: "touching ends do not overlap", spans: []span{at(0, 100), at(100, 200)}, wantSolo: []time.Duration{100 * time.Microsecond, 100 * time.Microsecond}},
		{name: "two at once", spans: []span{at(1000, 1200), at(1010, 1100), at(3000, 3100)}, wantN: 2, wantSolo: []time.Duration{100 * time.Microsecond}},
		{name: "long one covers a later one", spans: []span{at(0, 5000), at(1000, 1100), at(2000, 2100)}, wantN: 3},
		{name: "unsorted", spans: []span{at(3000, 3100), at(1010, 1100), at(1000, 1200)}, wantN: 2, wantSolo: []time.Duration{100 * time.Microsecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, solo := overlaps(tt.spans)
			if n != tt.wantN || fmt.Sprint(solo) != fmt.Sprint(tt.wantSolo) {
				t.Errorf("overlaps() = %d, %v, want %d, %v", n, solo, tt.wantN, tt.wantSolo)
			}
		})
	}
}
