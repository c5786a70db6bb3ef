// Package admin serves the waypoint's operator endpoints on Istio's ports:
// Prometheus metrics (15020: /metrics and /stats/prometheus), readiness
// (15021: /healthz/ready) and, on localhost, /config_dump (15000).
//
// It is a smaller sibling of ztunnel's admin package (the waypoint module
// does not import the ztunnel module); Listen binds every listener before
// Serve, so a port in use fails at start.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Default addresses, as Istio's proxies.
const (
	DefaultAdminAddr     = "127.0.0.1:15000"
	DefaultMetricsAddr   = ":15020"
	DefaultReadinessAddr = ":15021"
)

// Config configures a Server. Gatherer is required.
type Config struct {
	// AdminAddr (default 127.0.0.1:15000) serves /config_dump; keep it on
	// localhost. MetricsAddr (default :15020) serves /metrics and
	// /stats/prometheus; ReadinessAddr (default :15021) /healthz/ready.
	AdminAddr, MetricsAddr, ReadinessAddr string
	// Gatherer is scraped for metrics. Required.
	Gatherer prometheus.Gatherer
	// Ready returns nil when ready (200 "ready"), else why not (503). Nil:
	// always ready.
	Ready func() error
	// ConfigDump is served as JSON at /config_dump; nil serves {}.
	ConfigDump func() any
	Logger     *slog.Logger
}

// Server serves the three endpoints.
type Server struct {
	cfg  Config
	log  *slog.Logger
	srvs []*http.Server

	mu  sync.Mutex
	lns []net.Listener
}

// New returns a server; Listen binds it, Serve serves it.
func New(cfg Config) (*Server, error) {
	if cfg.Gatherer == nil {
		return nil, errors.New("admin: Gatherer is required")
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = DefaultAdminAddr
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = DefaultMetricsAddr
	}
	if cfg.ReadinessAddr == "" {
		cfg.ReadinessAddr = DefaultReadinessAddr
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "admin")}
	metrics := http.NewServeMux()
	h := promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
	metrics.Handle("/metrics", h)
	metrics.Handle("/stats/prometheus", h)
	ready := http.NewServeMux()
	ready.HandleFunc("/healthz/ready", s.ready)
	admin := http.NewServeMux()
	admin.HandleFunc("/config_dump", s.configDump)
	for _, h := range []http.Handler{admin, metrics, ready} {
		s.srvs = append(s.srvs, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second})
	}
	return s, nil
}

// Listen binds the admin, metrics and readiness listeners.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lns != nil {
		return nil
	}
	var lns []net.Listener
	for _, addr := range []string{s.cfg.AdminAddr, s.cfg.MetricsAddr, s.cfg.ReadinessAddr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, l)
	}
	s.lns = lns
	return nil
}

// Serve serves until ctx is done (Listen first, or Serve does).
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for i, srv := range s.srvs {
		wg.Go(func() {
			if err := srv.Serve(s.lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Warn("admin listener stopped", "addr", s.lns[i].Addr().String(), "error", err)
			}
		})
	}
	<-ctx.Done()
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range s.srvs {
		if srv.Shutdown(shut) != nil {
			srv.Close()
		}
	}
	wg.Wait()
	return nil
}

func (s *Server) addr(i int) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lns == nil {
		return nil
	}
	return s.lns[i].Addr()
}

// AdminAddr, MetricsAddr and ReadinessAddr are the bound addresses, nil
// before Listen.
func (s *Server) AdminAddr() net.Addr     { return s.addr(0) }
func (s *Server) MetricsAddr() net.Addr   { return s.addr(1) }
func (s *Server) ReadinessAddr() net.Addr { return s.addr(2) }

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	w.Write([]byte("ready\n"))
}

func (s *Server) configDump(w http.ResponseWriter, _ *http.Request) {
	var v any = struct{}{}
	if s.cfg.ConfigDump != nil {
		v = s.cfg.ConfigDump()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		s.log.Debug("config dump", "error", err)
	}
}
