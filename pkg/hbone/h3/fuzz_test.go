package h3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// h3AcceptsExtendedConnect: quic-go's server always offers extended
// CONNECT (RFC 9220); serveHTTP answers a CONNECT with :protocol 400, as
// HBONE over TCP does, so it never reaches the Handler.
const h3AcceptsExtendedConnect = false

// h3MessageError is HTTP/3's H3_MESSAGE_ERROR: quic-go resets a
// malformed request's stream with it.
const h3MessageError = 0x10e

// fuzzServer is an h3 Server on a loopback UDP socket whose Handler
// rejects every CONNECT with 401 after handing its request over, and a
// client QUIC connection to it with the mesh's certificates.
type fuzzServer struct {
	addr netip.AddrPort
	reqs chan *hbone.Request
	dial func() (*quic.Conn, error)
}

func newFuzzServer(f *testing.F) *fuzzServer {
	ca := identitytest.New(f, "cluster.local")
	ms := &mesh{ca: ca, m: identity.NewManager(identity.ManagerConfig{Requester: signer{ca}})}
	fs := &fuzzServer{reqs: make(chan *hbone.Request, 1)}
	s := &Server{TLSConfig: ms.serverTLS(serverID), Handler: HandlerFunc(func(_ context.Context, req *hbone.Request, t *Tunnel) {
		fs.reqs <- req
		t.Reject(http.StatusUnauthorized, "denied")
	})}
	pc, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), nil)
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc) }()
	f.Cleanup(func() { s.Close(); <-done })
	fs.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	fs.dial = func() (*quic.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg, err := ms.m.ClientTLSConfig(ctx, clientID, []spiffeid.ID{serverID})
		if err != nil {
			return nil, err
		}
		conn, err := quic.DialAddr(ctx, fs.addr.String(), ClientTLS(cfg), &quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: 10 * time.Second})
		if err != nil {
			return nil, err
		}
		// The client's control stream: its type and an empty SETTINGS.
		ctrl, err := conn.OpenUniStream()
		if err == nil {
			_, err = ctrl.Write([]byte{0x00, 0x04, 0x00})
		}
		if err != nil {
			conn.CloseWithError(0, "")
			return nil, err
		}
		return conn, nil
	}
	return fs
}

// outcome is how the server answered one request stream.
type outcome struct {
	status int    // the response's :status, 0 if none
	reason string // its hbone.ReasonHeader
	reset  uint64 // the stream's reset code, if reset
}

// roundTrip sends fields as one HEADERS frame on a new request stream,
// ends the stream, and reads the answer.
func roundTrip(conn *quic.Conn, fields []qpack.HeaderField) (outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return outcome{}, err
	}
	defer str.CancelRead(0)
	str.SetDeadline(time.Now().Add(10 * time.Second))
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for _, hf := range fields {
		if err := enc.WriteField(hf); err != nil {
			return outcome{}, err
		}
	}
	frame := quicvarint.Append(nil, 0x01) // HEADERS
	frame = quicvarint.Append(frame, uint64(block.Len()))
	frame = append(frame, block.Bytes()...)
	if _, err := str.Write(frame); err != nil {
		return outcome{}, err
	}
	str.Close()

	r := quicvarint.NewReader(str)
	for {
		typ, err := quicvarint.Read(r)
		if err == nil {
			var n uint64
			if n, err = quicvarint.Read(r); err == nil {
				payload := make([]byte, min(n, 1<<16))
				if _, err = io.ReadFull(r, payload); err == nil && typ == 0x01 {
					var o outcome
					dec := qpack.NewDecoder().Decode(payload)
					for {
						hf, err := dec()
						if err != nil {
							break
						}
						switch {
						case hf.Name == ":status":
							o.status, _ = strconv.Atoi(hf.Value)
						case strings.EqualFold(hf.Name, hbone.ReasonHeader):
							o.reason = hf.Value
						}
					}
					return o, nil
				}
			}
		}
		if err != nil {
			if se, ok := errors.AsType[*quic.StreamError](err); ok {
				return outcome{reset: uint64(se.ErrorCode)}, nil
			}
			return outcome{}, err
		}
	}
}

// FuzzServerHeaders: a CONNECT's header fields as a client sends them
// over HTTP/3 — :method, :scheme, :authority, :path, :protocol, then host,
// forwarded, baggage and traceparent, each sent when not empty — on a
// real QUIC connection with mTLS on loopback, through quic-go's QPACK
// decoding and pseudo-header rules and the Server's checks (serveHTTP).
//
// Properties: every request is answered (a status or a stream reset) and
// the connection survives it; the Handler runs if and only if the
// answer is its 401, and then the method is CONNECT, Request.Authority is
// :authority parsed and unmapped, the peer is the client's identity and
// forwarded, baggage and traceparent arrive unchanged; a plain CONNECT
// (no :scheme, :path or :protocol) to an ip:port with valid values always
// reaches it; a 400 is the Server's refusal of a request quic-go took
// (not CONNECT, or an authority that is not ip:port); anything else
// quic-go refuses resets the stream with H3_MESSAGE_ERROR.
func FuzzServerHeaders(f *testing.F) {
	fs := newFuzzServer(f)
	var conn *quic.Conn
	f.Cleanup(func() {
		if conn != nil {
			conn.CloseWithError(0, "")
		}
	})
	f.Fuzz(func(t *testing.T, method, scheme, authority, path, protocol, host, forwarded, baggage, traceparent string) {
		if len(method)+len(scheme)+len(authority)+len(path)+len(protocol)+len(host)+len(forwarded)+len(baggage)+len(traceparent) > 8<<10 {
			return
		}
		if conn == nil || conn.Context().Err() != nil {
			var err error
			if conn, err = fs.dial(); err != nil {
				t.Fatalf("dial: %v", err)
			}
		}
		var fields []qpack.HeaderField
		values := map[string]string{}
		for _, kv := range [][2]string{
			{":method", method}, {":scheme", scheme}, {":authority", authority}, {":path", path}, {":protocol", protocol},
			{"host", host}, {"forwarded", forwarded}, {"baggage", baggage}, {"traceparent", traceparent},
		} {
			if kv[1] != "" {
				fields = append(fields, qpack.HeaderField{Name: kv[0], Value: kv[1]})
				values[kv[0]] = kv[1]
			}
		}
		o, err := roundTrip(conn, fields)
		if err != nil {
			t.Fatalf("request %q: %v", fields, err)
		}
		if conn.Context().Err() != nil {
			t.Fatalf("request %q closed the connection: %v", fields, context.Cause(conn.Context()))
		}
		var req *hbone.Request
		select {
		case req = <-fs.reqs:
		default:
		}

		validValues := true
		for _, hf := range fields {
			validValues = validValues && httpguts.ValidHeaderFieldValue(hf.Value)
		}
		ap, aerr := netip.ParseAddrPort(authority)
		plain := method == http.MethodConnect && scheme == "" && path == "" && protocol == "" &&
			aerr == nil && (host == "" || host == authority) && validValues

		switch {
		case req != nil:
			if o.status != http.StatusUnauthorized || o.reason != "denied" {
				t.Fatalf("request %q reached the Handler, whose 401 was answered as %+v", fields, o)
			}
			if method != http.MethodConnect || aerr != nil {
				t.Fatalf("request %q (not a CONNECT to ip:port) reached the Handler as %+v", fields, req)
			}
			if protocol != "" && !h3AcceptsExtendedConnect {
				t.Fatalf("extended CONNECT %q reached the Handler", fields)
			}
			if want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()); req.Authority != want {
				t.Errorf("Request.Authority = %v, want %v", req.Authority, want)
			}
			if req.PeerID != clientID {
				t.Errorf("Request.PeerID = %v, want %v", req.PeerID, clientID)
			}
			for _, k := range []string{"forwarded", "baggage", "traceparent"} {
				got := req.Header.Values(k)
				if v, sent := values[k]; (sent && (len(got) != 1 || got[0] != v)) || (!sent && len(got) != 0) {
					t.Errorf("Request.Header[%q] = %q, sent %q", k, got, v)
				}
			}
		case plain:
			t.Fatalf("plain CONNECT %q did not reach the Handler: %+v", fields, o)
		case o.status == http.StatusUnauthorized:
			t.Fatalf("request %q answered 401 without the Handler", fields)
		case o.status == http.StatusBadRequest:
			if method == http.MethodConnect && aerr == nil && protocol == "" {
				t.Fatalf("CONNECT %q to an ip:port answered 400: %+v", fields, o)
			}
		case o.reset != h3MessageError:
			t.Fatalf("request %q answered %+v, want 400, 401 or a reset with H3_MESSAGE_ERROR", fields, o)
		}
	})
}
