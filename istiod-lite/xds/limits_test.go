package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// recorder is a slog.Handler that counts records and the bytes of their
// JSON encoding.
type recorder struct {
	mu      sync.Mutex
	buf     syncBuffer
	json    slog.Handler
	records []slog.Record
	sizes   []int
}

func newRecorder() *recorder {
	r := &recorder{}
	r.json = slog.NewJSONHandler(&r.buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	return r
}

func (r *recorder) logger() *slog.Logger { return slog.New(r) }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	before := len(r.buf.String())
	if err := r.json.Handle(ctx, rec); err != nil {
		return err
	}
	r.records = append(r.records, rec.Clone())
	r.sizes = append(r.sizes, len(r.buf.String())-before)
	return nil
}

// WithAttrs and WithGroup keep counting in r (the attributes are dropped:
// the tests count records and bytes of what clients send).
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records have msg, and the total bytes written.
func (r *recorder) count(msg string) (n, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rec := range r.records {
		if rec.Message == msg {
			n++
		}
		total += r.sizes[i]
	}
	return n, total
}

func (r *recorder) suppressed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	sum := 0
	for _, rec := range r.records {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				sum += int(a.Value.Int64())
			}
			return true
		})
	}
	return sum
}

// TestNackFloodLogsBounded: a client that NACKs 5,000 times on one stream
// gets a bounded number of log records, and the rest are counted.
func TestNackFloodLogsBounded(t *testing.T) {
	rec := newRecorder()
	srv := xds.NewServer(xds.ServerConfig{Logger: rec.logger()})
	srv.Set(addrType, messages(workloads(1)))
	_, addr := serve(t, srv, "127.0.0.1:0")
	s := rawStream(t, addr)
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~10.0.0.9~flood.ns~ns.svc.cluster.local"}, TypeUrl: addrType}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	const nacks = 5000
	for i := range nacks {
		err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: addrType, ResponseNonce: fmt.Sprint("n", i),
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected " + fmt.Sprint(i)}})
		if err != nil {
			t.Fatalf("Send NACK %d: %v", i, err)
		}
	}
	eventually(t, "server counts every nack", func() bool { return srv.Stats().Nacks == nacks })
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "stream closes", func() bool { return srv.Stats().Streams == 0 })

	n, total := rec.count("xds nack")
	if n < 1 || n > 20 {
		t.Errorf("%d NACKs wrote %d \"xds nack\" records, want between 1 and 20", nacks, n)
	}
	if all := len(rec.records); all > 30 {
		t.Errorf("%d NACKs wrote %d records (%d bytes), want at most 30", nacks, all, total)
	}
	if got := rec.suppressed() + n; got != nacks {
		t.Errorf("NACK records written + suppressed = %d, want %d", got, nacks)
	}
	t.Logf("%d NACKs: %d records, %d bytes", nacks, len(rec.records), total)
}

// TestHugeClientStringsLogsBounded: a 3 MB error_detail, a 256 KB node id
// and a 64 KB type URL make log records of a few hundred bytes each.
func TestHugeClientStringsLogsBounded(t *testing.T) {
	rec := newRecorder()
	srv := xds.NewServer(xds.ServerConfig{Logger: rec.logger()})
	_, addr := serve(t, srv, "127.0.0.1:0")
	s := rawStream(t, addr)
	bigType := "type.googleapis.com/" + strings.Repeat("t", 64<<10)
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: strings.Repeat("n", 256<<10)}, TypeUrl: bigType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: bigType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: strings.Repeat("é", 3<<20/2)}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "server counts the nack", func() bool { return srv.Stats().Nacks == 1 })
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "stream closes", func() bool { return srv.Stats().Streams == 0 })
	n, total := rec.count("xds nack")
	if n != 1 {
		t.Errorf("\"xds nack\" records = %d, want 1", n)
	}
	if total > 4<<10 {
		t.Errorf("log = %d bytes, want at most 4 KiB:\n%.2000s", total, rec.buf.String())
	}
	if !strings.Contains(rec.buf.String(), "bytes truncated]") {
		t.Errorf("log has no truncation marker:\n%.2000s", rec.buf.String())
	}
	t.Logf("3 MB error detail: %d records, %d bytes", len(rec.records), total)
}

// TestAuthenticateStream: Authenticate runs before anything is sent; its
// error ends the stream with Unauthenticated, and the caller it returns is
// in Clients.
func TestAuthenticateStream(t *testing.T) {
	rec := newRecorder()
	srv := xds.NewServer(xds.ServerConfig{Logger: rec.logger(), Authenticate: func(ctx context.Context) (xds.Caller, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("authorization"); len(v) == 1 && v[0] == "Bearer node-a" {
			return xds.Caller{Node: "node-a"}, nil
		}
		return xds.Caller{}, errors.New("no valid token")
	}})
	srv.Set(addrType, messages(workloads(2)))
	_, addr := serve(t, srv, "127.0.0.1:0")

	s := rawStream(t, addr)
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "anonymous"}, TypeUrl: addrType}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Recv without token = %v, %v; want code Unauthenticated", names(resp), err)
	}
	// Many refusals write a bounded number of records.
	for range 50 {
		s := rawStream(t, addr)
		if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Recv without token = %v, want code Unauthenticated", err)
		}
	}
	if n, _ := rec.count("xds stream refused"); n > 11 {
		t.Errorf("51 refused streams wrote %d records, want at most 11", n)
	}

	st := newStore()
	c := startClientWith(t, addr, st, func() (string, error) { return "node-a", nil }, addrType)
	waitSynced(t, c)
	if got := len(st.addresses()); got != 2 {
		t.Errorf("authenticated client received %d addresses, want 2", got)
	}
	clients := srv.Clients()
	if len(clients) != 1 || clients[0].Caller != (xds.Caller{Node: "node-a"}) {
		t.Errorf("Clients() = %+v, want one with Caller{Node: node-a}", clients)
	}
}

// TestTooManyTypes: a stream may subscribe to 16 type URLs; the 17th ends
// it with InvalidArgument.
func TestTooManyTypes(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	_, addr := serve(t, srv, "127.0.0.1:0")
	s := rawStream(t, addr)
	for i := range 16 {
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: fmt.Sprint("type.googleapis.com/t", i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("answer to type %d: %v", i, err)
		}
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/t16"}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("answer to the 17th type = %v, want code InvalidArgument", err)
	}
}
