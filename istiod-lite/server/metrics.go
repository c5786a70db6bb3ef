package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// newMetrics creates istiod-lite's registry: Go and process collectors,
// and LimitHitsName, which it returns.
func (s *Server) newMetrics() (*prometheus.CounterVec, error) {
	s.reg = prometheus.NewRegistry()
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: LimitHitsName,
		Help: "The total number of requests refused by a limit, by limit (ca_requests, xds_requests: per-caller rate limits)",
	}, []string{"limit"})
	s.reg.MustRegister(hits, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return hits, nil
}

// listenMetrics binds the metrics listener of Config.MetricsAddr, if set.
func (s *Server) listenMetrics() error {
	if s.cfg.MetricsAddr == "" {
		return nil
	}
	l, err := net.Listen("tcp", s.cfg.MetricsAddr)
	if err != nil {
		return err
	}
	s.metricsL = l
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	s.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// serveMetrics serves /metrics until ctx is done (nothing without
// Config.MetricsAddr).
func (s *Server) serveMetrics(ctx context.Context) error {
	if s.metricsSrv == nil {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { s.metricsSrv.Close() })
	defer stop()
	if err := s.metricsSrv.Serve(s.metricsL); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Gatherer returns istiod-lite's metrics.
func (s *Server) Gatherer() prometheus.Gatherer { return s.reg }

// MetricsAddr is the metrics listener's address, or nil.
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsL == nil {
		return nil
	}
	return s.metricsL.Addr()
}
