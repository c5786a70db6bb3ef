package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// DeniedBody is the body of a request denied by policy, as Envoy's RBAC
// filter (and so Istio's waypoint) answers it, with status 403.
const DeniedBody = "RBAC: access denied"

// Bodies of the waypoint's own error responses, as Envoy words them.
const (
	noHealthyUpstreamBody = "no healthy upstream"
	upstreamFailureBody   = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	upstreamResetBody     = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	upstreamTimeoutBody   = "upstream request timeout"
)

// useForward lets requests take forward (forward.go); tests turn it off to
// compare with the reverse proxy.
var useForward = true

// useH1Server lets HTTP streams start on serveH1 (h1server.go); tests turn
// it off to compare with net/http's server.
var useH1Server = true

type streamKey struct{}
type requestKey struct{}

// newHTTPServer returns the server of every HTTP stream: HTTP/1.1, and
// HTTP/2 with prior knowledge (h2c, so gRPC), which net/http detects from
// the preface itself (Protocols.UnencryptedHTTP2, Go 1.24). x/net/http2/h2c
// is not needed: its Upgrade path (h2c over an HTTP/1.1 Upgrade) is one
// that Istio's waypoint does not offer either, and the standard server
// keeps a single Handler, Shutdown and ConnContext for both protocols.
func (p *Proxy) newHTTPServer() *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       p.cfg.IdleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if hc, ok := c.(*httpConn); ok {
				return context.WithValue(ctx, streamKey{}, hc.st)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
}

// serveHTTPStream hands an accepted stream to the HTTP server and waits
// until the server is done with it (the HBONE handler must not return
// before: returning closes the stream).
func (p *Proxy) serveHTTPStream(ctx context.Context, st *stream, c net.Conn) {
	if useH1Server {
		rest, done := p.serveH1(ctx, st, c) // h1server.go: the common HTTP/1.1 request
		if done {
			return
		}
		c = rest
	}
	hc := newHTTPConn(c, st)
	if !p.httpLn.push(hc) {
		c.Close()
		return
	}
	select {
	case <-hc.closed:
	case <-ctx.Done():
		hc.Close()
	}
}

// request is the state of one HTTP request shared with the reverse proxy
// (Rewrite, ErrorHandler and the upstream transport).
type request struct {
	upstream netip.AddrPort // the endpoint: pod IP and target port
	h2       bool           // HTTP/2 upstream
	hbone    bool           // the endpoint is reached over HBONE
	client   netip.Addr     // appended to x-forwarded-for
	clientIP string         // client as text
	flags    string         // response flags set by the error handler
	retry    *retryState    // a routed request's tries (retry.go); nil: one try
	lease    lease          // the endpoint's hold on its balancer host (balance.go)
}

// serveHTTP serves one request: policy, endpoint, forward, then metrics
// and the access log record.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(streamKey{}).(*stream)
	if st == nil {
		http.Error(w, "not an HBONE stream", http.StatusInternalServerError)
		return
	}
	start := time.Now()
	rw := &responseWriter{ResponseWriter: w}
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	traceID := ensureTraceparent(r.Header)
	grpc := isGRPC(r)

	labels := telemetry.RequestLabels{Labels: st.labels}
	labels.RequestProtocol = telemetry.ProtocolHTTP
	if grpc {
		labels.RequestProtocol = telemetry.ProtocolGRPC
	}
	rec := st.record()
	rec.Start = start
	rec.Method, rec.Path, rec.Authority, rec.Protocol, rec.TraceID = r.Method, r.RequestURI, r.Host, r.Proto, traceID

	// Authorize and forward the path Envoy would: normalized (dot
	// segments, unreserved escapes), in origin form; an absolute-form
	// request line ("GET http://host/admin") is judged on its path too.
	if !normalizeRequestPath(r) {
		labels.ResponseCode = http.StatusBadRequest
		localReply(rw, grpc, http.StatusBadRequest, "Bad Request")
		rec.ResponseCode, rec.Duration, rec.Err = http.StatusBadRequest, time.Since(start), errInvalidPath
		p.cfg.Requests.Observe(&labels, rec.Duration, 0, rw.n)
		p.cfg.AccessLog.Log(r.Context(), rec)
		return
	}
	rec.Path = r.RequestURI

	b := st.binding
	areq := authz.Request{
		Peer:     st.client.Addr(),
		Remote:   st.client.Addr(),
		Identity: st.peerID,
		Method:   r.Method,
		Host:     r.Host,
		Path:     r.RequestURI,
		Header:   r.Header,
		DestIP:   b.authority.Addr(),
		Port:     b.authority.Port(),
		Gateway:  p.gateway,
	}
	if first, ok := firstForwardedFor(r.Header); ok {
		areq.Remote = first
	}
	if b.service != nil {
		areq.Service = b.service.Key
	}
	dec := p.cfg.Policies().Evaluate(&areq)
	rec.Policy = dec.Policy

	switch {
	case !dec.Allow:
		labels.ResponseFlags = telemetry.FlagDeny
		localReply(rw, grpc, http.StatusForbidden, DeniedBody)
	case p.serveRoute(rw, r, st, &labels, rec, grpc): // routed.go: the Service's HTTPRoutes
	default:
		w, port, l, err := p.endpoint(b)
		if err != nil {
			labels.ResponseFlags = telemetry.FlagNoHealthyUpstream
			rec.Err = err
			localReply(rw, grpc, http.StatusServiceUnavailable, noHealthyUpstreamBody)
			break
		}
		rq := &request{
			upstream: netip.AddrPortFrom(w.Addrs[0], port),
			h2:       r.ProtoMajor == 2 || b.appProtocol == protoHTTP2,
			client:   st.client.Addr(),
			clientIP: st.clientIP,
			lease:    l,
		}
		defer p.lb.release(rq) // deferred: forward aborts a broken answer with a panic
		var hboneAddr netip.AddrPort
		if p.up.tunnelled(w) {
			hboneAddr = netip.AddrPortFrom(w.Addrs[0], p.cfg.HBONEPort)
			rq.hbone = true
		}
		setEndpoint(rec, &labels.Labels, w, rq.upstream, hboneAddr)
		if useForward && canForward(r, rq) {
			p.forward(rw, r, rq) // forward.go: the common request, without the reverse proxy
		} else {
			r = r.WithContext(context.WithValue(r.Context(), requestKey{}, rq))
			p.up.proxy.ServeHTTP(rw, r)
		}
		if rq.flags != "" {
			labels.ResponseFlags = rq.flags
		}
	}

	status := rw.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	labels.ResponseCode = status
	if grpc {
		labels.GRPCStatus = grpcStatus(rw.Header())
	}
	dur := time.Since(start)
	reqBytes := body.n.Load()
	p.cfg.Requests.Observe(&labels, dur, reqBytes, rw.n)
	rec.ResponseCode = status
	rec.BytesRecv, rec.BytesSent = reqBytes, rw.n
	rec.Duration = dur
	if labels.ResponseFlags != "" && labels.ResponseFlags != telemetry.FlagNone {
		rec.ResponseFlags = labels.ResponseFlags
	}
	p.cfg.AccessLog.Log(r.Context(), rec)
}

// endpoint picks where a request goes: a healthy endpoint of the service,
// by the balancer (balance.go; the caller releases the lease), or the
// addressed workload itself.
func (p *Proxy) endpoint(b *binding) (*state.Workload, uint16, lease, error) {
	if b.service != nil {
		return p.lb.pick(b.service, b.authority.Port())
	}
	w := b.workload
	if w.Status != workloadapi.WorkloadStatus_HEALTHY || len(w.Addrs) == 0 {
		return nil, 0, lease{}, state.ErrNoEndpoints
	}
	return w, b.authority.Port(), lease{}, nil
}

// newReverseProxy returns the proxy that forwards allowed requests to the
// endpoint chosen in their request state.
func (p *Proxy) newReverseProxy(rt http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rq := pr.In.Context().Value(requestKey{}).(*request)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = rq.upstream.String()
			pr.Out.Host = pr.In.Host
			// Rewrite drops X-Forwarded-*: keep what the client sent, and
			// append the original client to X-Forwarded-For.
			for _, h := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v := pr.In.Header.Values(h); len(v) > 0 {
					pr.Out.Header[h] = v
				}
			}
			xff := strings.Join(pr.In.Header.Values("X-Forwarded-For"), ", ")
			if xff != "" {
				xff += ", "
			}
			pr.Out.Header.Set("X-Forwarded-For", xff+rq.clientIP)
		},
		Transport:  rt,
		BufferPool: copyBuffers{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rq := r.Context().Value(requestKey{}).(*request)
			code, flags, body := upstreamError(r.Context(), err)
			rq.flags = flags
			p.log.Debug("upstream request failed", "upstream", rq.upstream.String(), "flags", flags, "error", err)
			localReply(w, isGRPC(r), code, body)
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
}

// copyBuffers is the reverse proxy's BufferPool: 32 KiB buffers (its
// default size) reused instead of allocated for each request.
type copyBuffers struct{}

const copyBufferSize = 32 << 10

var copyBufferPool = sync.Pool{New: func() any { return new([copyBufferSize]byte) }}

func (copyBuffers) Get() []byte { return copyBufferPool.Get().(*[copyBufferSize]byte)[:] }

func (copyBuffers) Put(b []byte) {
	if cap(b) == copyBufferSize {
		copyBufferPool.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
	}
}

// upstreamError maps a failed upstream round trip to Envoy's status,
// response flags and body.
func upstreamError(ctx context.Context, err error) (code int, flags, body string) {
	var de *dialError
	var ne net.Error
	var pt *perTryTimeoutError
	switch {
	case ctx.Err() != nil && errors.Is(context.Cause(ctx), errRouteTimeout):
		return http.StatusGatewayTimeout, telemetry.FlagUpstreamTimeout, upstreamTimeoutBody
	case ctx.Err() != nil:
		// The client went away; Envoy logs 0 with DC. 499 is what we
		// count, as nginx; nothing reaches the client anyway.
		return 499, telemetry.FlagDownstreamTerminate, ""
	case errors.As(err, &pt): // a route's last try timed out (retry.go), connecting or not
		return http.StatusGatewayTimeout, telemetry.FlagUpstreamTimeout, upstreamTimeoutBody
	case errors.As(err, &de):
		return http.StatusServiceUnavailable, telemetry.FlagUpstreamFailure, upstreamFailureBody
	case errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout, telemetry.FlagUpstreamTimeout, upstreamTimeoutBody
	}
	return http.StatusServiceUnavailable, telemetry.FlagUpstreamReset, upstreamResetBody
}

// localReply answers a request from the waypoint itself. A gRPC request
// gets, as Envoy sends it, a trailers-only gRPC response (HTTP 200,
// grpc-status mapped from code, grpc-message body).
func localReply(w http.ResponseWriter, grpc bool, code int, body string) {
	if grpc {
		h := w.Header()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcCode(code)))
		h.Set("Grpc-Message", body)
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// grpcCode maps an HTTP status to a gRPC status code as Envoy does
// (grpc_common httpToGrpcStatus).
func grpcCode(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// grpcStatus returns the grpc-status a response carried, in its headers
// (trailers-only) or trailers.
func grpcStatus(h http.Header) string {
	if v := h.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

// firstForwardedFor returns the first address of X-Forwarded-For: the
// original client as the first proxy saw it.
func firstForwardedFor(h http.Header) (netip.Addr, bool) {
	v := h.Get("X-Forwarded-For")
	if v == "" {
		return netip.Addr{}, false
	}
	first, _, _ := strings.Cut(v, ",")
	a, err := netip.ParseAddr(strings.TrimSpace(first))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// responseWriter records the status and counts the body bytes written.
type responseWriter struct {
	http.ResponseWriter
	status int
	n      int64
	route  *routeResponse // a route's changes to the answer's headers (routed.go)
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		if w.route != nil {
			w.route.apply(w.Header())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 && w.route != nil {
		w.WriteHeader(http.StatusOK)
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController (the reverse proxy's flushes) reach
// the server's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush implements http.Flusher.
func (w *responseWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// countingBody counts the request body bytes read (by the transport,
// which may still be writing the body when the response is done).
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// errInvalidPath is the access log error of a request whose path cannot be
// normalized (Envoy answers 400).
var errInvalidPath = errors.New("invalid request path")

// normalizeRequestPath rewrites r's path as authz.NormalizePath normalizes
// it (Istio's default, Envoy's normalize_path) and reports false when the
// path is invalid. The asterisk form ("OPTIONS *") is left alone.
func normalizeRequestPath(r *http.Request) bool {
	raw := r.RequestURI
	if raw == "*" {
		return true
	}
	if !strings.HasPrefix(raw, "/") {
		raw = r.URL.RequestURI() // absolute form: its path and query
	}
	norm, ok := authz.NormalizePath(raw)
	if !ok {
		return false
	}
	if norm == r.RequestURI {
		return true
	}
	u, err := neturl.ParseRequestURI(norm)
	if err != nil {
		return false
	}
	r.URL.Path, r.URL.RawPath, r.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
	r.RequestURI = norm
	return true
}
