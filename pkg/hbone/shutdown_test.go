package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestShutdownDuringHandshake: a connection still in its TLS handshake
// when Shutdown begins finishes it, then gets the GOAWAY of a graceful
// shutdown like an established connection (its client retries elsewhere
// instead of seeing the handshake cut); Shutdown returns once it closed.
// Close, the hard stop, still cuts the handshake.
func TestShutdownDuringHandshake(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stop      func(s *Server) error
		wantAway  bool // the client completes its handshake and reads GOAWAY
		wantError error
	}{
		{"Shutdown", func(s *Server) error { return s.Shutdown(ctxT(t)) }, true, nil},
		{"Close", (*Server).Close, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, relayHandler())
			raw, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			handshaking := func() bool {
				e.srv.mu.Lock()
				defer e.srv.mu.Unlock()
				return e.srv.handshaking == 1
			}
			waitFor(t, "the server to accept the connection", handshaking)

			stopped := make(chan error, 1)
			go func() { stopped <- tc.stop(e.srv) }()
			waitFor(t, "the server to stop listening", func() bool {
				e.srv.mu.Lock()
				defer e.srv.mu.Unlock()
				return e.srv.closing && len(e.srv.listeners) == 0
			})

			cfg, err := e.ca.PoolTLS(t, nil)(context.Background(), e.clientID, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg = cfg.Clone()
			cfg.NextProtos = []string{http2.NextProtoTLS}
			tc2 := tls.Client(raw, cfg)
			tc2.SetDeadline(time.Now().Add(10 * time.Second))
			err = tc2.Handshake()
			if got := err == nil; got != tc.wantAway {
				t.Fatalf("client handshake after %s began = %v, want success %v", tc.name, err, tc.wantAway)
			}
			if tc.wantAway {
				away, err := readGoAway(tc2)
				if err != nil {
					t.Fatalf("after the handshake: %v, want a GOAWAY", err)
				}
				if away.ErrCode != http2.ErrCodeNo || away.LastStreamID != 0 {
					t.Errorf("GOAWAY = code %v, last stream %d; want NO_ERROR, 0", away.ErrCode, away.LastStreamID)
				}
				tc2.Close()
			}
			if err := <-stopped; !errors.Is(err, tc.wantError) {
				t.Errorf("%s() = %v, want %v", tc.name, err, tc.wantError)
			}
		})
	}
}

// readGoAway sends the client preface and SETTINGS on c and reads frames
// until a GOAWAY (at most 10 frames).
func readGoAway(c net.Conn) (*http2.GoAwayFrame, error) {
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		return nil, err
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		return nil, err
	}
	for range 10 {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		if f, ok := f.(*http2.GoAwayFrame); ok {
			return f, nil
		}
	}
	return nil, errors.New("no GOAWAY in 10 frames")
}
