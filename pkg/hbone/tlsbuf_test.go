package hbone

import (
	"bytes"
	"net"
	"testing"
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
