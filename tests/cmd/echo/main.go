// Command echo is the conformance suite's echo application (package
// github.com/ambient-go/mesh/tests/echo), standing in for the suite's
// registry.k8s.io/gateway-api/echo-advanced image:
//
//	echo --port=8080 --port=8443 --tls=8443 --grpc=7070 --tcp=9090 [--crt=/cert.crt --key=/cert.key] [--version=v1]
//	client <url> [--count=N] [--timeout=5s] [-H name:value]... [--method=GET] [--http2] [-L]
//
// Run as client (the name of a link or copy, or the first argument), it
// makes requests and prints the answers; otherwise it serves until
// SIGTERM.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/ambient-go/mesh/tests/echo"
)

func main() {
	args := os.Args[1:]
	if filepath.Base(os.Args[0]) == "client" {
		os.Exit(client(args))
	}
	if len(args) > 0 && args[0] == "client" {
		os.Exit(client(args[1:]))
	}
	os.Exit(serve(args))
}

func client(args []string) int {
	req, err := echo.ParseClientArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := echo.Do(ctx, req, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	return 0
}

func serve(args []string) int {
	var cfg echo.Config
	fs := pflag.NewFlagSet("echo", pflag.ContinueOnError)
	fs.IntSliceVar(&cfg.HTTPPorts, "port", nil, "HTTP port (repeatable)")
	fs.IntSliceVar(&cfg.GRPCPorts, "grpc", nil, "gRPC port (repeatable)")
	fs.IntSliceVar(&cfg.TCPPorts, "tcp", nil, "TCP echo port (repeatable)")
	fs.IntSliceVar(&cfg.TLSPorts, "tls", nil, "HTTP port served over TLS (repeatable)")
	fs.StringVar(&cfg.CertFile, "crt", "", "TLS certificate file (self-signed if missing)")
	fs.StringVar(&cfg.KeyFile, "key", "", "TLS key file (self-signed if missing)")
	fs.StringVar(&cfg.Version, "version", os.Getenv("SERVICE_VERSION"), "reported ServiceVersion")
	fs.StringVar(&cfg.Cluster, "cluster", "", "reported Cluster")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	cfg.Log = log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s := echo.NewServer(cfg)
	if err := s.Start(ctx); err != nil {
		log.Error("starting failed", "err", err)
		return 1
	}
	<-ctx.Done()
	s.Wait()
	return 0
}
