package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestRequestBodies sends bodies of every kind through the waypoint: none,
// small ones of known length (sent on the fast path in one write), one of
// exactly maxFastBody, larger and chunked ones (the Transport's path).
// Each must reach the application whole and come back, and the access log
// must count the request's bytes.
func TestRequestBodies(t *testing.T) {
	m := newMesh(t)
	logs, cancel := m.access.Subscribe(16)
	defer cancel()
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(t, svc, false)

	tests := []struct {
		name    string
		method  string
		size    int
		chunked bool
	}{
		{name: "no body", method: http.MethodGet},
		{name: "1 KiB", method: http.MethodPost, size: 1024},
		{name: "largest fast", method: http.MethodPut, size: maxFastBody},
		{name: "larger", method: http.MethodPost, size: maxFastBody + 1},
		{name: "1 MiB", method: http.MethodPost, size: 1 << 20},
		{name: "chunked", method: http.MethodPost, size: 5000, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16+1)[:tt.size]
			var r io.Reader = bytes.NewReader(body)
			if tt.chunked {
				r = io.MultiReader(r) // unknown length: chunked
			}
			if tt.size == 0 {
				r = nil
			}
			req, err := http.NewRequest(tt.method, url(svc, echoBodyPath), r)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %d bytes: %v", tt.method, tt.size, err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			wantLen := strconv.Itoa(tt.size)
			if tt.chunked {
				wantLen = "-1"
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) || resp.Header.Get("X-Request-Length") != wantLen {
				t.Errorf("%s %d bytes = %d, %d bytes back (equal %v), app saw length %s; want 200, the same bytes, length %s",
					tt.method, tt.size, resp.StatusCode, len(got), bytes.Equal(got, body), resp.Header.Get("X-Request-Length"), wantLen)
			}
			rec := recv(t, logs, "access log record")
			if rec.BytesRecv != int64(tt.size) || rec.BytesSent != int64(tt.size) || rec.ResponseCode != http.StatusOK {
				t.Errorf("access log bytes_recv %d bytes_sent %d code %d, want %d, %d, 200", rec.BytesRecv, rec.BytesSent, rec.ResponseCode, tt.size, tt.size)
			}
		})
	}
}

// TestKeptConnectionClosedByEndpoint: the application closes a connection
// after a complete answer, without Connection: close (an idle timeout, as
// Node's); the next request, a POST that cannot be sent again, must get a
// new connection instead of failing on the dead one.
func TestKeptConnectionClosedByEndpoint(t *testing.T) {
	m := newMesh(t)
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(t, svc, false)
	post := func(path string) (int, string) {
		t.Helper()
		resp, err := c.Post(url(svc, path), "text/plain", bytes.NewReader([]byte("hello")))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(hangupPath); code != http.StatusOK || body != "ok" {
		t.Fatalf("POST %s = %d %q, want 200 \"ok\"", hangupPath, code, body)
	}
	// Wait (bounded) until the endpoint's close has reached the waypoint:
	// its kept connection is then dead.
	fast := m.proxy.up.fast
	deadline := time.Now().Add(5 * time.Second)
	for {
		fast.mu.Lock()
		var dead bool
		for _, list := range fast.idle {
			for _, cc := range list {
				dead = dead || !alive(cc)
			}
		}
		fast.mu.Unlock()
		if dead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waypoint's kept connection did not see the endpoint's close within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, body := post(echoBodyPath); code != http.StatusOK || body != "hello" {
		t.Errorf("POST %s after the endpoint closed = %d %q, want 200 \"hello\"", echoBodyPath, code, body)
	}
}
