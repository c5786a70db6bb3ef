// Package echo is the conformance suite's echo application: a server that
// answers HTTP/1.1, h2c, HTTP over TLS, gRPC and TCP with a description
// of the request it received, and a client that makes requests and prints
// what came back. Both speak the text format of Istio's echo app
// (registry.k8s.io/gateway-api/echo-advanced), which the Gateway API
// conformance suite execs in its mesh pods (`client <url> ...`) and
// parses with sigs.k8s.io/gateway-api/conformance/utils/echo:
//
//   - the server's body is one Key=Value line per field: ServiceVersion,
//     ServicePort, Host, URL, Cluster, Method, Proto, IP, Alpn, one
//     RequestHeader=Name:value per header value (sorted), Hostname;
//   - the client prints, for request i, "[i] Url=<url>",
//     "[i] StatusCode=<code>", "[i] ResponseHeader=Name:value" for every
//     response header, then "[i body] <line>" for every line of the body,
//     and a blank line between requests; it exits non-zero if a request
//     fails (no answer).
//
// Command tests/cmd/echo wires it: the image's entrypoint is the server,
// and the same binary named client is the client.
package echo

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Field names of the format.
const (
	FieldServiceVersion = "ServiceVersion"
	FieldServicePort    = "ServicePort"
	FieldStatusCode     = "StatusCode"
	FieldURL            = "URL"
	FieldHost           = "Host"
	FieldHostname       = "Hostname"
	FieldMethod         = "Method"
	FieldProto          = "Proto"
	FieldAlpn           = "Alpn"
	FieldRequestHeader  = "RequestHeader"
	FieldResponseHeader = "ResponseHeader"
	FieldCluster        = "Cluster"
	FieldIP             = "IP"
)

// request is what the server reports of one request, whatever its
// protocol.
type request struct {
	port, host, url, method, proto, remote, alpn string
	header                                       http.Header
}

// describe writes req's fields as the server's answer.
func (s *Server) describe(b *strings.Builder, req request) {
	field := func(k, v string) { fmt.Fprintf(b, "%s=%s\n", k, v) }
	field(FieldServiceVersion, s.cfg.Version)
	field(FieldServicePort, req.port)
	field(FieldHost, req.host)
	field(FieldURL, req.url)
	field(FieldCluster, s.cfg.Cluster)
	field(FieldMethod, req.method)
	field(FieldProto, req.proto)
	ip, _, err := net.SplitHostPort(req.remote)
	field(FieldIP, cmp.Or(ip, map[bool]string{true: req.remote}[err != nil]))
	field(FieldAlpn, req.alpn)
	keys := make([]string, 0, len(req.header))
	for k := range req.header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range req.header[k] {
			field(FieldRequestHeader, k+":"+v)
		}
	}
	field(FieldHostname, s.cfg.Hostname)
}

// hostname is the pod's name: $HOSTNAME as a kubelet sets it, else the
// kernel's.
func hostname() string {
	if h := os.Getenv("HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}
