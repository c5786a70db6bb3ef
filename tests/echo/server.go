package echo

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Config configures a Server. The zero value serves nothing.
type Config struct {
	// HTTPPorts serve HTTP/1.1 and h2c, or HTTP/1.1 and HTTP/2 over TLS
	// for those also in TLSPorts.
	HTTPPorts []int
	// GRPCPorts serve the gRPC echo service (h2c).
	GRPCPorts []int
	// TCPPorts answer every connection with a description of it, then
	// echo what they read.
	TCPPorts []int
	// TLSPorts are the HTTPPorts served over TLS.
	TLSPorts []int
	// CertFile and KeyFile hold the TLS certificate and key; when they are
	// unset or cannot be read, a self-signed pair is made at start.
	CertFile, KeyFile string
	// Version is reported as ServiceVersion; default empty.
	Version string
	// Cluster is reported as Cluster; default empty.
	Cluster string
	// Hostname is reported as Hostname; default $HOSTNAME, else the
	// kernel's host name.
	Hostname string
	// Addr is the address every port listens on; default all (""). Tests
	// use 127.0.0.1.
	Addr string
	// Log; default discards.
	Log *slog.Logger
}

// Server is the echo server.
type Server struct {
	cfg Config
	log *slog.Logger

	wg  sync.WaitGroup
	mu  sync.Mutex
	lns map[string]int // listened port by "kind/index" (port 0 resolved)
}

// Wait waits until every port stopped serving (after Start's context
// ended).
func (s *Server) Wait() { s.wg.Wait() }

// NewServer returns a Server for cfg.
func NewServer(cfg Config) *Server {
	cfg.Hostname = cmp.Or(cfg.Hostname, hostname())
	log := cmp.Or(cfg.Log, slog.New(slog.DiscardHandler)).With("component", "echo")
	return &Server{cfg: cfg, log: log, lns: map[string]int{}}
}

// Port returns the port a configured port listens on, after Start (the
// chosen one for port 0, by kind "http", "grpc", "tcp" and index).
func (s *Server) Port(kind string, i int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lns[kind+"/"+strconv.Itoa(i)]
}

// Start listens on every port and serves until ctx ends; it returns once
// listening, or the first listen error.
func (s *Server) Start(ctx context.Context) error {
	var cert *tls.Certificate
	if len(s.cfg.TLSPorts) > 0 {
		c, err := loadOrMakeCert(s.cfg.CertFile, s.cfg.KeyFile, s.cfg.Hostname)
		if err != nil {
			return err
		}
		cert = &c
	}
	type listener struct {
		kind string
		i    int
		ln   net.Listener
	}
	var lns []listener
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	for kind, ports := range map[string][]int{"http": s.cfg.HTTPPorts, "grpc": s.cfg.GRPCPorts, "tcp": s.cfg.TCPPorts} {
		for i, p := range ports {
			ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Addr, strconv.Itoa(p)))
			if err != nil {
				closeAll()
				return fmt.Errorf("listening on %s port %d: %w", kind, p, err)
			}
			lns = append(lns, listener{kind, i, ln})
			s.mu.Lock()
			s.lns[kind+"/"+strconv.Itoa(i)] = ln.Addr().(*net.TCPAddr).Port
			s.mu.Unlock()
		}
	}
	for _, l := range lns {
		port := s.cfg.HTTPPorts
		if l.kind == "grpc" {
			port = s.cfg.GRPCPorts
		} else if l.kind == "tcp" {
			port = s.cfg.TCPPorts
		}
		configured := port[l.i]
		served := strconv.Itoa(l.ln.Addr().(*net.TCPAddr).Port)
		switch l.kind {
		case "http":
			var tlsCert *tls.Certificate
			if slices.Contains(s.cfg.TLSPorts, configured) {
				tlsCert = cert
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveHTTP(ctx, l.ln, served, tlsCert)
			}()
		case "grpc":
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveGRPC(ctx, l.ln, served)
			}()
		case "tcp":
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveTCP(ctx, l.ln, served)
			}()
		}
		s.log.Info("listening", "kind", l.kind, "port", served, "tls", slices.Contains(s.cfg.TLSPorts, configured))
	}
	return nil
}

func (s *Server) serveHTTP(ctx context.Context, ln net.Listener, port string, cert *tls.Certificate) {
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handleHTTP(w, r, port) }),
		ReadHeaderTimeout: 10 * time.Second,
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	if cert != nil {
		srv.Protocols.SetHTTP2(true)
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("serving HTTP failed", "port", port, "err", err)
	}
}

// handleHTTP answers with the request's description. ?codes=N answers
// with status N, ?headers=Name:value[,Name:value] sets response headers,
// as Istio's echo does.
func (s *Server) handleHTTP(w http.ResponseWriter, r *http.Request, port string) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	var b strings.Builder
	alpn := ""
	if r.TLS != nil {
		alpn = r.TLS.NegotiatedProtocol
	}
	s.describe(&b, request{port: port, host: r.Host, url: r.RequestURI, method: r.Method, proto: r.Proto, remote: r.RemoteAddr, alpn: alpn, header: r.Header})
	q := r.URL.Query()
	for _, h := range strings.Split(q.Get("headers"), ",") {
		if k, v, ok := strings.Cut(h, ":"); ok {
			w.Header()[k] = []string{v}
		}
	}
	code := http.StatusOK
	if c, err := strconv.Atoi(q.Get("codes")); err == nil && c >= 200 && c < 600 {
		code = c
	}
	w.Header().Set("Content-Type", "application/text")
	w.WriteHeader(code)
	io.WriteString(w, b.String())
}

// The gRPC echo service: proto.EchoTestService/Echo of Istio's echo
// (echo.proto), whose EchoRequest and EchoResponse both carry one string
// in field 1, as wrapperspb.StringValue does on the wire.
const (
	grpcService = "proto.EchoTestService"
	grpcMethod  = "/" + grpcService + "/Echo"
)

func (s *Server) serveGRPC(ctx context.Context, ln net.Listener, port string) {
	srv := grpc.NewServer()
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: grpcService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Echo", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in echoMessage
			if err := dec(&in); err != nil {
				return nil, err
			}
			return s.grpcEcho(ctx, port), nil
		}}},
	}, struct{}{})
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		s.log.Warn("serving gRPC failed", "port", port, "err", err)
	}
}

func (s *Server) grpcEcho(ctx context.Context, port string) *echoMessage {
	md, _ := metadata.FromIncomingContext(ctx)
	h := http.Header{}
	host := ""
	for k, vs := range md {
		if k == ":authority" {
			host = vs[0]
			continue
		}
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	remote := ""
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr.String()
	}
	var b strings.Builder
	b.WriteString(FieldStatusCode + "=200\n")
	s.describe(&b, request{port: port, host: host, url: grpcMethod, method: "POST", proto: "GRPC", remote: remote, header: h})
	return &echoMessage{Value: b.String()}
}

// serveTCP answers each connection with its description, then echoes.
func (s *Server) serveTCP(ctx context.Context, ln net.Listener, port string) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			var b strings.Builder
			s.describe(&b, request{port: port, proto: "TCP", remote: c.RemoteAddr().String()})
			if _, err := io.WriteString(c, b.String()); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

type echoMessage = wrapperspb.StringValue
