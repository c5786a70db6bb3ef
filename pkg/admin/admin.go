// Package admin serves a proxy's (ztunnel's or a waypoint's) operator
// endpoints on Istio's ports: the admin server (localhost:15000:
// /config_dump, /logging, /debug/pprof/), the Prometheus metrics server
// (15020: /metrics, /stats/prometheus) and the readiness server (15021:
// /healthz/ready).
//
// A Server is a Start(ctx) runnable. Start binds the three listeners before
// serving, and so returns a listen error at once; callers that need the
// bound addresses (tests listening on port 0) either call Listen first and
// then Serve, or wait on Listening after calling Start in a goroutine.
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ambient-go/mesh/pkg/logging"
)

// Default listen addresses, as Istio's proxies.
const (
	DefaultAdminAddr     = "127.0.0.1:15000"
	DefaultMetricsAddr   = ":15020"
	DefaultReadinessAddr = ":15021"
)

// Config configures a Server. Gatherer and ConfigDump are required.
type Config struct {
	// AdminAddr is the admin server's address, default "127.0.0.1:15000"
	// (keep it on localhost: it can change the log level and profile the
	// process). Serves /config_dump, /logging and /debug/pprof/.
	AdminAddr string
	// MetricsAddr is the metrics server's address, default ":15020". Serves
	// /metrics and /stats/prometheus.
	MetricsAddr string
	// ReadinessAddr is the readiness server's address, default ":15021".
	// Serves /healthz/ready.
	ReadinessAddr string

	// Gatherer is scraped at /metrics. Required.
	Gatherer prometheus.Gatherer
	// ConfigDump returns the value served, JSON-encoded and indented, at
	// /config_dump. A json.Marshaler (json.RawMessage from protojson, say) is
	// used as is. Required.
	ConfigDump func() any
	// Ready reports readiness: nil means ready (200 "ready"), an error not
	// ready (503 with the error's message). A nil Ready is always ready.
	Ready func() error
	// Level is the log level that /logging shows and sets. Nil: a level of
	// the server's own (default info) that affects no logger. When Logger's
	// handler is a pkg/logging Levels handler, /logging shows and sets those
	// levels instead, one per component, and Level is not used.
	Level *slog.LevelVar
	// Name names the proxy on the admin index page; default "proxy".
	Name string
	// Logger receives the server's own logs. Nil discards them.
	Logger *slog.Logger
	// ShutdownTimeout bounds the graceful shutdown once the context is done;
	// connections still open then are closed. Default 5s.
	ShutdownTimeout time.Duration
}

// Server serves the admin, metrics and readiness endpoints.
type Server struct {
	cfg  Config
	log  *slog.Logger
	srvs [3]*http.Server // admin, metrics, readiness
	// levels are the per-component levels of Logger's handler; nil: one
	// level, cfg.Level.
	levels *logging.Levels

	mu        sync.Mutex
	lns       [3]net.Listener
	listening chan struct{} // closed once lns are bound
	served    bool
}

const (
	admin = iota
	metrics
	readiness
)

var names = [3]string{"admin", "metrics", "readiness"}

// New validates cfg and returns a Server; nothing listens until Listen or
// Start.
func New(cfg Config) (*Server, error) {
	if cfg.Gatherer == nil {
		return nil, errors.New("admin: Gatherer is required")
	}
	if cfg.ConfigDump == nil {
		return nil, errors.New("admin: ConfigDump is required")
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
	if cfg.Level == nil {
		cfg.Level = new(slog.LevelVar)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "admin"),
		levels:    logging.LevelsOf(cfg.Logger.Handler()),
		listening: make(chan struct{}),
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	for i, h := range [3]http.Handler{s.adminMux(), s.metricsMux(), s.readinessMux()} {
		s.srvs[i] = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          errLog,
		}
	}
	return s, nil
}

// Listen binds the three listeners. On error none stays bound. It may be
// called once, before Serve (Start calls it if it was not).
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lns[admin] != nil {
		return errors.New("admin: already listening")
	}
	var lns [3]net.Listener
	for i, addr := range [3]string{s.cfg.AdminAddr, s.cfg.MetricsAddr, s.cfg.ReadinessAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns[:i] {
				l.Close()
			}
			return fmt.Errorf("admin: listen %s on %s: %w", names[i], addr, err)
		}
		lns[i] = ln
	}
	s.lns = lns
	close(s.listening)
	return nil
}

// Listening is closed once the listeners are bound; the Addr methods are
// valid from then on.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Start listens (unless Listen was called), then serves until ctx is done.
// A listen error is returned at once.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	bound := s.lns[admin] != nil
	s.mu.Unlock()
	if !bound {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	return s.Serve(ctx)
}

// Serve serves on the listeners bound by Listen until ctx is done, then
// shuts the servers down gracefully (at most ShutdownTimeout) and returns
// nil. If a server fails, the others are shut down and its error returned.
// Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	lns := s.lns
	served := s.served
	s.served = true
	s.mu.Unlock()
	if lns[admin] == nil {
		return errors.New("admin: Serve called before Listen")
	}
	if served {
		return errors.New("admin: Serve called twice")
	}

	errc := make(chan error, len(s.srvs))
	var wg sync.WaitGroup
	for i, srv := range s.srvs {
		s.log.Info("serving", "server", names[i], "addr", lns[i].Addr().String())
		wg.Go(func() {
			if err := srv.Serve(lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin: serve %s: %w", names[i], err)
			}
		})
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}

	// The parent context is done (or a server failed): shut down on a fresh
	// context bounded by ShutdownTimeout.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	for _, srv := range s.srvs {
		if serr := srv.Shutdown(sctx); serr != nil {
			srv.Close()
		}
	}
	wg.Wait()
	s.log.Info("stopped")
	return err
}

func (s *Server) addr(i int) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lns[i] == nil {
		return nil
	}
	return s.lns[i].Addr()
}

// AdminAddr returns the admin listener's address, or nil before Listen.
func (s *Server) AdminAddr() net.Addr { return s.addr(admin) }

// MetricsAddr returns the metrics listener's address, or nil before Listen.
func (s *Server) MetricsAddr() net.Addr { return s.addr(metrics) }

// ReadinessAddr returns the readiness listener's address, or nil before
// Listen.
func (s *Server) ReadinessAddr() net.Addr { return s.addr(readiness) }

func (s *Server) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, cmp.Or(s.cfg.Name, "proxy")+" admin\n\n"+
			"/config_dump     the proxy's configuration (JSON)\n"+
			"/logging         show the log level; ?level=LEVEL or COMPONENT:LEVEL,... sets it, ?reset resets it\n"+
			"/debug/pprof/    Go runtime profiles\n")
	})
	mux.HandleFunc("GET /config_dump", s.configDump)
	mux.HandleFunc("GET /logging", s.logging)
	mux.HandleFunc("POST /logging", s.logging)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func (s *Server) metricsMux() http.Handler {
	h := promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /stats/prometheus", h)
	return mux
}

func (s *Server) readinessMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", s.ready)
	return mux
}

func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	b, err := json.MarshalIndent(s.cfg.ConfigDump(), "", "  ")
	if err != nil {
		s.log.Error("config dump failed", "error", err)
		http.Error(w, "encoding config dump: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// logging shows the log level and, given ?level= (query or POST form), sets
// it.
func (s *Server) logging(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if s.levels != nil {
		s.componentLogging(w, r)
		return
	}
	if v := r.Form.Get("level"); v != "" {
		lvl, ok := parseLevel(v)
		if !ok {
			http.Error(w, "invalid level "+quote(v)+": want one of debug, info, warn, error", http.StatusBadRequest)
			return
		}
		old := s.cfg.Level.Level()
		s.cfg.Level.Set(lvl)
		s.log.Info("log level changed", "from", levelName(old), "to", levelName(lvl))
	} else if r.Method == http.MethodPost {
		http.Error(w, "missing level: want ?level=debug|info|warn|error", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "current log level is %s\n", levelName(s.cfg.Level.Level()))
}

// componentLogging is /logging with per-component levels: ?level= takes a
// spec of LEVEL and COMPONENT:LEVEL items (pkg/logging), ?reset puts the
// levels back to the process's start. The answer is the levels in force
// and the components there are.
func (s *Server) componentLogging(w http.ResponseWriter, r *http.Request) {
	_, reset := r.Form["reset"]
	v := r.Form.Get("level")
	if r.Method == http.MethodPost && v == "" && !reset {
		http.Error(w, "missing level: want ?level=LEVEL or COMPONENT:LEVEL,... (levels debug, info, warn, error, off) or ?reset", http.StatusBadRequest)
		return
	}
	old := s.levels.String()
	if reset {
		s.levels.Reset()
	}
	if v != "" {
		if err := s.levels.Set(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	if now := s.levels.String(); now != old {
		s.log.Info("log level changed", "from", old, "to", now)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "current log level is %s\ncomponents: %s\n", s.levels.String(), strings.Join(s.levels.Components(), ", "))
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err.Error())
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

// parseLevel parses the levels /logging accepts, case-insensitively.
func parseLevel(v string) (slog.Level, bool) {
	switch strings.ToLower(v) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// levelName is l's lower-case name ("info", "warn", "debug+2").
func levelName(l slog.Level) string { return strings.ToLower(l.String()) }

// quote bounds and quotes a user-supplied value for an error message.
func quote(v string) string {
	if len(v) > 32 {
		v = v[:32] + "..."
	}
	return fmt.Sprintf("%q", v)
}
