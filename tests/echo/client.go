package echo

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// Request is what the client sends: the flags of Istio's echo client that
// the conformance suite passes.
type Request struct {
	// URL is scheme://host[:port]/path; the schemes are http, https and
	// grpc (a URL without one is http, as curl's).
	URL string
	// Method for HTTP; default GET.
	Method string
	// Headers in order; a Host header sets the authority.
	Headers [][2]string
	// Count of requests, one after the other, each on a new connection;
	// default 1.
	Count int
	// Timeout of each request; default 5s.
	Timeout time.Duration
	// HTTP2 sends http:// requests as h2c with prior knowledge.
	HTTP2 bool
	// FollowRedirects follows 3xx answers.
	FollowRedirects bool
	// HostsFile resolves names before the system's resolver; default
	// /etc/hosts (the harness names Services there, and a static binary's
	// resolver would try DNS first).
	HostsFile string
}

// ParseClientArgs parses the client's command line (without the program
// name): one URL and the flags --count, --timeout, -H/--header name:value,
// --method, --http2, -L/--follow-redirects.
func ParseClientArgs(args []string) (Request, error) {
	fs := pflag.NewFlagSet("client", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var r Request
	var headers []string
	fs.IntVar(&r.Count, "count", 1, "number of requests")
	fs.DurationVar(&r.Timeout, "timeout", 5*time.Second, "timeout of each request")
	fs.StringArrayVarP(&headers, "header", "H", nil, "header name:value (Host sets the authority)")
	fs.StringVar(&r.Method, "method", "", "HTTP method")
	fs.BoolVar(&r.HTTP2, "http2", false, "h2c with prior knowledge for http://")
	fs.BoolVarP(&r.FollowRedirects, "follow-redirects", "L", false, "follow 3xx redirects")
	if err := fs.Parse(args); err != nil {
		return Request{}, err
	}
	if fs.NArg() != 1 {
		return Request{}, fmt.Errorf("want one URL, got %q", fs.Args())
	}
	r.URL = fs.Arg(0)
	if !strings.Contains(r.URL, "://") {
		r.URL = "http://" + r.URL
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return Request{}, fmt.Errorf("header %q: want name:value", h)
		}
		r.Headers = append(r.Headers, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	if r.Count < 1 {
		return Request{}, fmt.Errorf("--count=%d: want at least 1", r.Count)
	}
	return r, nil
}

// Do makes req's requests and writes each answer to out in the format of
// the package comment. It stops at the first request without an answer
// and returns its error (an HTTP error status is an answer).
func Do(ctx context.Context, req Request, out io.Writer) error {
	req.Count = max(req.Count, 1)
	req.Timeout = cmp.Or(req.Timeout, 5*time.Second)
	hosts := readHosts(cmp.Or(req.HostsFile, "/etc/hosts"))
	w := bufio.NewWriter(out)
	defer w.Flush()
	for i := range req.Count {
		var b strings.Builder
		fmt.Fprintf(&b, "[%d] Url=%s\n", i, req.URL)
		for _, h := range req.Headers {
			fmt.Fprintf(&b, "[%d] Header=%s:%s\n", i, h[0], h[1])
		}
		rctx, cancel := context.WithTimeout(ctx, req.Timeout)
		var err error
		if strings.HasPrefix(req.URL, "grpc://") {
			err = doGRPC(rctx, req, i, hosts, &b)
		} else {
			err = doHTTP(rctx, req, i, hosts, &b)
		}
		cancel()
		if err != nil {
			w.WriteString(b.String())
			return fmt.Errorf("request %d: %w", i, err)
		}
		// A blank line between answers: the suite splits a batch on it.
		fmt.Fprintln(w, b.String())
	}
	return nil
}

// dialer dials names found in hosts at their first address.
func dialer(hosts map[string]string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err == nil {
			if a, ok := hosts[strings.ToLower(host)]; ok {
				addr = net.JoinHostPort(a, port)
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

func doHTTP(ctx context.Context, req Request, i int, hosts map[string]string, b *strings.Builder) error {
	// The path is sent as given: no normalisation of what a test chose.
	base, path := req.URL, ""
	if scheme := strings.Index(req.URL, "://"); scheme >= 0 {
		if slash := strings.IndexByte(req.URL[scheme+3:], '/'); slash >= 0 {
			base, path = req.URL[:scheme+3+slash], req.URL[scheme+3+slash:]
		}
	}
	hr, err := http.NewRequestWithContext(ctx, cmp.Or(req.Method, http.MethodGet), base, nil)
	if err != nil {
		return err
	}
	if path != "" {
		hr.URL.Opaque = path
		if q := strings.IndexByte(path, '?'); q >= 0 {
			hr.URL.Opaque, hr.URL.RawQuery = path[:q], path[q+1:]
		}
	}
	for _, h := range req.Headers {
		if strings.EqualFold(h[0], "host") {
			hr.Host = h[1]
			continue
		}
		hr.Header.Add(h[0], h[1])
	}
	tr := &http.Transport{
		DialContext:     dialer(hosts),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: hostOnly(cmp.Or(hr.Host, hr.URL.Host))},
		Protocols:       new(http.Protocols),
	}
	tr.Protocols.SetHTTP1(!req.HTTP2 || hr.URL.Scheme == "https")
	tr.Protocols.SetHTTP2(hr.URL.Scheme == "https")
	tr.Protocols.SetUnencryptedHTTP2(req.HTTP2)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	if !req.FollowRedirects {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	resp, err := c.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	fmt.Fprintf(b, "[%d] %s=%d\n", i, FieldStatusCode, resp.StatusCode)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range resp.Header[k] {
			fmt.Fprintf(b, "[%d] %s=%s:%s\n", i, FieldResponseHeader, k, v)
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	writeBody(b, i, string(body))
	return nil
}

func doGRPC(ctx context.Context, req Request, i int, hosts map[string]string, b *strings.Builder) error {
	u, err := url.Parse(req.URL)
	if err != nil {
		return err
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer(hosts)(ctx, "tcp", addr)
		}),
	}
	md := metadata.MD{}
	for _, h := range req.Headers {
		if strings.EqualFold(h[0], "host") {
			opts = append(opts, grpc.WithAuthority(h[1]))
			continue
		}
		md.Append(strings.ToLower(h[0]), h[1])
	}
	if u.Query().Get("tls") == "true" {
		opts[0] = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))
	}
	// passthrough: the dialer above resolves, with the hosts file.
	conn, err := grpc.NewClient("passthrough:///"+u.Host, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	var respMD metadata.MD
	var resp echoMessage
	ctx = metadata.NewOutgoingContext(ctx, md)
	if err := conn.Invoke(ctx, grpcMethod, &echoMessage{Value: "HelloWorld"}, &resp, grpc.Header(&respMD)); err != nil {
		return err
	}
	fmt.Fprintf(b, "[%d] %s=%d\n", i, FieldStatusCode, http.StatusOK)
	keys := make([]string, 0, len(respMD))
	for k := range respMD {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range respMD[k] {
			fmt.Fprintf(b, "[%d] %s=%s:%s\n", i, FieldResponseHeader, k, v)
		}
	}
	writeBody(b, i, resp.Value)
	return nil
}

func writeBody(b *strings.Builder, i int, body string) {
	for line := range strings.SplitSeq(body, "\n") {
		if line != "" {
			fmt.Fprintf(b, "[%d body] %s\n", i, line)
		}
	}
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// readHosts maps every name of a hosts file to the first address given
// for it; a missing file maps nothing.
func readHosts(path string) map[string]string {
	m := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line, _, _ := strings.Cut(s.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 || net.ParseIP(fields[0]) == nil {
			continue
		}
		for _, name := range fields[1:] {
			name = strings.ToLower(name)
			if _, ok := m[name]; !ok {
				m[name] = fields[0]
			}
		}
	}
	return m
}
