package logstream

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// batchSize is how many records a reader copies out of the ring at once.
const batchSize = 256

// Config configures a Service. Ring is required.
type Config struct {
	// Ring holds the records served.
	Ring *Ring
	// Kind and Name say which proxy this is (Name: the node of a ztunnel,
	// namespace/name of a waypoint); they are set on every record.
	Kind logsv1.ProxyKind
	Name string
	// Apps, if set, names the workload (Deployment) of a pod address, so
	// that records can be filtered by workload; nil: by pod name only.
	Apps func(netip.Addr) string
	// Coalesce is how long a follower waits after being woken before it
	// reads, so that it reads (and sends) records in batches instead of
	// one wake-up per record; default 50ms (the relay merges streams over
	// a 1 s window anyway), negative: none.
	Coalesce time.Duration
	// Metrics; nil: NewMetrics(nil).
	Metrics *Metrics
	Logger  *slog.Logger
}

// Service answers WatchRequests from a ring.
type Service struct {
	cfg Config
	log *slog.Logger
}

// NewService returns the service of cfg.Ring.
func NewService(cfg Config) *Service {
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = 50 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, log: log.With("component", "logstream")}
}

// Watch sends what req asks for to send, in batches, and returns when
// done (no follow), when ctx ends (nil), or when send fails. Send may
// block: the ring goes on without this reader, which is told how many
// records it lost when it catches up.
func (s *Service) Watch(ctx context.Context, req *logsv1.WatchRequest, send func(...*logsv1.WatchResponse) error) error {
	m, err := Compile(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	s.cfg.Metrics.watchers.Inc()
	defer s.cfg.Metrics.watchers.Dec()
	ring := s.cfg.Ring

	// The backlog ends and the follow begins at end, taken before the
	// follower registers: a record added between the two is read by the
	// follow loop's first read (which comes before any wait), where taking
	// end after registering skipped it without a trace.
	end := ring.Next()
	var (
		wake <-chan struct{}
		stop = func() {}
	)
	if req.GetFollow() {
		wake, stop = ring.wait()
	}
	defer stop()

	buf := make([]entry, batchSize)
	if err := s.backlog(req, m, buf, end, send); err != nil {
		return err
	}
	if !req.GetFollow() {
		return nil
	}
	pos := end
	var (
		batch []*logsv1.WatchResponse
		pause *time.Timer
	)
	if s.cfg.Coalesce > 0 {
		pause = time.NewTimer(time.Hour)
		pause.Stop()
		defer pause.Stop()
	}
	for {
		n, next, lost := ring.read(pos, buf)
		pos = next
		batch = batch[:0]
		if lost > 0 {
			s.cfg.Metrics.lost.Add(float64(lost))
			batch = append(batch, &logsv1.WatchResponse{Event: &logsv1.WatchResponse_Lost{Lost: &logsv1.Lost{
				Source: logsv1.Lost_PROXY, Proxy: s.cfg.Name, Count: lost,
			}}})
		}
		for i := range n {
			r := toProto(&buf[i], s.cfg.Kind, s.cfg.Name, s.cfg.Apps)
			if m.Match(r) {
				batch = append(batch, &logsv1.WatchResponse{Event: &logsv1.WatchResponse_Record{Record: r}})
			}
		}
		if len(batch) > 0 {
			if err := send(batch...); err != nil {
				return err
			}
		}
		if n == len(buf) {
			continue // more to read
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
		if pause != nil {
			pause.Reset(s.cfg.Coalesce)
			select {
			case <-ctx.Done():
				return nil
			case <-pause.C:
			}
		}
	}
}

// backlog sends the matching records kept before end: the last
// req.Last of them, or all when req.Last is 0 and req.Follow is false.
func (s *Service) backlog(req *logsv1.WatchRequest, m *Matcher, buf []entry, end uint64, send func(...*logsv1.WatchResponse) error) error {
	want := req.GetLast()
	if want == 0 {
		if req.GetFollow() {
			return nil
		}
		want = ^uint64(0)
	}
	// Walk the kept records once, keeping the newest want matches.
	var matches []*logsv1.Record
	pos := s.cfg.Ring.oldest()
	for pos < end {
		n, next, _ := s.cfg.Ring.read(pos, buf[:min(uint64(len(buf)), end-pos)])
		if n == 0 {
			break
		}
		pos = next
		for i := range n {
			r := toProto(&buf[i], s.cfg.Kind, s.cfg.Name, s.cfg.Apps)
			if m.Match(r) {
				matches = append(matches, r)
				if uint64(len(matches)) > want {
					matches = matches[1:]
				}
			}
		}
	}
	for len(matches) > 0 {
		k := min(len(matches), batchSize)
		batch := make([]*logsv1.WatchResponse, k)
		for i, r := range matches[:k] {
			batch[i] = &logsv1.WatchResponse{Event: &logsv1.WatchResponse_Record{Record: r}}
		}
		if err := send(batch...); err != nil {
			return err
		}
		matches = matches[k:]
	}
	return nil
}

// Server serves a Service as the gRPC LogStream service. Who may call it
// is the listener's business: serve it only behind authentication (the
// proxies carry it over their connection to istiod-lite instead; see
// Agent).
type Server struct {
	logsv1.UnimplementedLogStreamServer
	Service *Service
}

var _ logsv1.LogStreamServer = (*Server)(nil)

// Register registers s on g.
func (s *Server) Register(g *grpc.Server) { logsv1.RegisterLogStreamServer(g, s) }

// Watch implements LogStream.
func (s *Server) Watch(req *logsv1.WatchRequest, stream grpc.ServerStreamingServer[logsv1.WatchResponse]) error {
	return s.Service.Watch(stream.Context(), req, func(rs ...*logsv1.WatchResponse) error {
		for _, r := range rs {
			if err := stream.Send(r); err != nil {
				return err
			}
		}
		return nil
	})
}
