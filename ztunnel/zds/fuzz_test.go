package zds

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fuzzHandler records the requests the server applies.
type fuzzHandler struct {
	mu   sync.Mutex
	adds int
	dels []Pod
}

func (h *fuzzHandler) AddPod(ctx context.Context, p Pod, netns *os.File) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.adds++
	return nil
}

func (h *fuzzHandler) DelPod(ctx context.Context, p Pod) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dels = append(h.dels, p)
	return nil
}

// take returns and forgets what the handler was given.
func (h *fuzzHandler) take() (adds int, dels []Pod) {
	h.mu.Lock()
	defer h.mu.Unlock()
	adds, dels = h.adds, h.dels
	h.adds, h.dels = 0, nil
	return adds, dels
}

// FuzzZDSMessage sends arbitrary bytes, with no descriptor attached, as
// the CNI plugin's request to one real Server over its unixpacket socket.
// Property: every request gets an ack and the server keeps serving the
// next; the ack has no error exactly when the bytes are a well-formed
// del (the handler then gets that pod, once); an add, which carries no
// netns here, never reaches the handler; anything malformed gets an error
// ack and reaches no handler.
func FuzzZDSMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"del","pod":{"uid":"u1","name":"a","namespace":"demo","ips":["10.0.0.1"],"netns":"/proc/1/ns/net"}}`,
		`{"type":"add","pod":{"uid":"u1","name":"a","namespace":"demo","netns":"/var/run/netns/x"}}`,
		`{"type":"del","pod":{}}`,
		`{"type":"del"}`,
		`{"type":"del","pod":null}`,
		`{"type":"DEL","pod":{}}`,
		`{"TYPE":"del","Pod":{"UID":"x"}}`,
		`{"type":"ack","pod":{},"error":"x"}`,
		`{"type":"del","pod":{"ips":["not-an-ip"]}}`,
		`{"type":"del","pod":{"ips":["fe80::1%eth0"]}}`,
		`{"type":"del","pod":{"name":"a"}} trailing`,
		`[]`,
		`null`,
		`{`,
		"\x00",
	} {
		f.Add([]byte(s))
	}

	h := &fuzzHandler{}
	sock := filepath.Join(f.TempDir(), "zds.sock")
	s := &Server{Socket: sock, Handler: h, Timeout: 10 * time.Second}
	l, err := s.Listen()
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	f.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.Errorf("Serve() = %v", err)
		}
	})

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 || len(in) > maxMessage {
			return // an empty record reads as EOF; a longer one is cut to maxMessage
		}
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatalf("the server stopped serving: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(in); err != nil {
			t.Fatalf("sending the request: %v", err)
		}
		buf := make([]byte, maxMessage)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("request %q: no ack: %v", in, err)
		}
		var ack message
		if err := json.Unmarshal(buf[:n], &ack); err != nil || ack.Type != TypeAck || ack.Pod != nil {
			t.Fatalf("request %q: ack %q is not an ack (%v)", in, buf[:n], err)
		}
		adds, dels := h.take()
		if adds != 0 {
			t.Fatalf("request %q: AddPod called %d times without a netns", in, adds)
		}

		var m message
		wellFormedDel := json.Unmarshal(in, &m) == nil && m.Pod != nil && m.Type == TypeDel
		if !wellFormedDel {
			if ack.Error == "" {
				t.Errorf("request %q: ack without error, want one", in)
			}
			if len(dels) != 0 {
				t.Errorf("request %q: DelPod(%+v) called for a malformed request", in, dels)
			}
			return
		}
		if ack.Error != "" {
			t.Errorf("request %q: ack error %q, want none", in, ack.Error)
		}
		if diff := cmp.Diff([]Pod{*m.Pod}, dels, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("request %q: DelPod calls (-want +got):\n%s", in, diff)
		}
	})
}
