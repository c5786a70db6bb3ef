package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// TestRawConnReadMode: rawConn reads small messages straight into the
// caller's buffer and a stream of large ones through its own buffer, and
// returns the bytes in order either way.
func TestRawConnReadMode(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	rc := newRawConn(a)
	rc.startBuffering()
	steps := []struct {
		name       string
		size       int
		wantDirect bool // after the read
	}{
		{"small, through the buffer", 100, true},
		{"small, direct", 200, true},
		{"large, direct", 8 << 10, false},
		{"large, through the buffer", 8 << 10, false},
		{"small again", 100, true},
	}
	p := make([]byte, 16<<10)
	for i, s := range steps {
		msg := bytes.Repeat([]byte{byte('a' + i)}, s.size)
		go b.Write(msg)
		var got []byte
		for len(got) < s.size {
			n, err := rc.Read(p)
			if err != nil {
				t.Fatalf("%s: Read() = %d, %v", s.name, n, err)
			}
			got = append(got, p[:n]...)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("%s: read %d bytes, not the %d written", s.name, len(got), s.size)
		}
		if rc.direct != s.wantDirect {
			t.Errorf("%s: direct after the read = %v, want %v", s.name, rc.direct, s.wantDirect)
		}
	}
}

// TestOneRecordPerWrite: with the configs oneRecordPerWrite makes (also
// one a server's GetConfigForClient returns), a write of up to 16 KiB
// through tlsWriter leaves as one TLS record in one write, without the
// batch buffer.
func TestOneRecordPerWrite(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	srvID, cliID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	base := ca.ServerTLS(t, srvID)
	srvCfg := oneRecordPerWrite(&tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return base, nil }})
	cliCfg, err := ca.PoolTLS(t, nil)(context.Background(), cliID, nil)
	if err != nil {
		t.Fatal(err)
	}
	cliCfg = oneRecordPerWrite(cliCfg)
	a, b := tcpPair(t)
	raw := newRawConn(a)
	srv := tls.Server(raw, srvCfg)
	cli := tls.Client(b, cliCfg)
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	const size = 10 << 10
	msg := bytes.Repeat([]byte("r"), size)
	if _, err := (tlsWriter{srv, raw}).Write(msg); err != nil {
		t.Fatal(err)
	}
	// TLS 1.3: a 5-byte header, the payload, its content type and a
	// 16-byte tag, read as sent, past the TLS layer.
	const want = 5 + size + 1 + 16
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, want+64)
	n, err := io.ReadAtLeast(b, got, 5)
	for err == nil && n < want {
		var m int
		m, err = b.Read(got[n:])
		n += m
	}
	if err != nil {
		t.Fatal(err)
	}
	if recLen := int(got[3])<<8 | int(got[4]); n != want || recLen != want-5 {
		t.Errorf("read %d bytes, first record of %d; want one record of %d", n, recLen, want-5)
	}
	if cap(raw.wbuf) != 0 {
		t.Errorf("batch buffer capacity = %d, want 0 (one write, no batch)", cap(raw.wbuf))
	}
}
