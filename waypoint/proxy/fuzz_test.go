package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzSniff: any first bytes of a tunnelled stream, arriving in chunks of
// any sizes (cuts: one byte per chunk, its size 1..256) before the client
// half-closes, through sniff on an in-memory connection.
//
// Properties: sniff decides whatever the chunking: HTTP or TCP, the
// decision classify makes on all of the bytes (on the first sniffSize of
// them with a full buffer, and TCP when the stream ends undecided); and
// the returned connection replays every byte, in order, then EOF.
func FuzzSniff(f *testing.F) {
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		if len(data) > 4*sniffSize {
			return
		}
		want := protoTCP
		if len(data) >= sniffSize {
			want, _ = classify(data[:sniffSize], true)
		} else if p, done := classify(data, false); done {
			want = p
		}

		client, server := net.Pipe()
		defer server.Close()
		wrote := make(chan error, 1)
		go func() {
			defer client.Close()
			rest := data
			for i := 0; len(rest) > 0; i++ {
				n := len(rest)
				if len(cuts) > 0 {
					n = min(n, int(cuts[i%len(cuts)])+1)
				}
				if _, err := client.Write(rest[:n]); err != nil {
					wrote <- err
					return
				}
				rest = rest[n:]
			}
			wrote <- nil
		}()
		// Generous: the client always half-closes, so only a bug waits.
		c, got := sniff(server, 10*time.Second)
		if got != want {
			t.Fatalf("sniff(%q in chunks %v) = %v, want %v", data, cuts, got, want)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		replayed, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading after sniff: %v", err)
		}
		if !bytes.Equal(replayed, data) {
			t.Fatalf("after sniff the stream carries %q, want %q", replayed, data)
		}
		if err := <-wrote; err != nil {
			t.Fatalf("client write: %v", err)
		}
	})
}
