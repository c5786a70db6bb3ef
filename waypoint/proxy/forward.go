package proxy

import (
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"strings"
)

// The fast forward of the common HTTP/1.1 request to a tunnelled
// endpoint, without httputil.ReverseProxy. The reverse proxy clones every
// request (a copy of the Request, of its URL and of its whole Header),
// wraps the context twice (its own value, an httptrace.ClientTrace for
// interim responses) and allocates closures per request: about a quarter
// of the waypoint's CPU per request in its profile. forward does what the
// reverse proxy does with our Rewrite, for the requests it can do without
// those: HTTP/1.1 from the client, a Connection header naming nothing but
// keep-alive, no TE, no Upgrade, and a query the reverse proxy would
// pass untouched (cleanQueryParams re-encodes a query with ';' or a
// malformed escape). Everything else still goes through the reverse proxy.
//
// What is kept exactly as the reverse proxy does it: hop-by-hop headers
// removed both ways (RFC 9110 7.6.1, the list of httputil), Forwarded
// dropped, X-Forwarded-Host and -Proto passed on, X-Forwarded-For
// appended with the original client, no User-Agent added, interim (1xx)
// responses relayed, trailers announced and copied, a response of unknown
// length or an event stream flushed after every read, and a failure while
// copying the answer aborts the client's connection (http.ErrAbortHandler).

// canForward reports whether r (a request of the HTTP server) may take
// forward to rq's endpoint rather than the reverse proxy: an HTTP/1.1
// endpoint over HBONE and a body of known length up to maxFastBody, as
// fastEligible, and the conditions above.
func canForward(r *http.Request, rq *request) bool {
	if rq.h2 || !rq.hbone || r.ContentLength < 0 || r.ContentLength > maxFastBody {
		return false
	}
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.URL.Opaque != "" || r.URL.RawQuery != "" && !plainQuery(r.URL.RawQuery) {
		return false
	}
	for _, h := range []string{"Te", "Upgrade", "Proxy-Connection", "Trailer"} {
		if _, ok := r.Header[h]; ok {
			return false
		}
	}
	return onlyKeepAlive(r.Header["Connection"])
}

// plainQuery reports whether the reverse proxy's cleanQueryParams leaves q
// as it is: no ';', no '%' (so no malformed escape) and few parameters.
func plainQuery(q string) bool {
	return !strings.ContainsAny(q, ";%") && strings.Count(q, "&") < 1000
}

// forwardHeaderDrop are the request headers not forwarded: hop-by-hop
// ones that canForward does not exclude, and the X-Forwarded family and
// Forwarded, which Rewrite replaces.
var forwardHeaderDrop = map[string]bool{
	"Connection": true, "Keep-Alive": true, // Connection names only keep-alive (canForward)
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Transfer-Encoding": true,
	"Forwarded": true, "X-Forwarded-For": true,
}

// forward sends r to rq's endpoint with the fast HTTP/1.1 client and
// copies the answer to w.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rq *request) {
	h := make(http.Header, len(r.Header)+2)
	for k, v := range r.Header {
		if !forwardHeaderDrop[k] {
			h[k] = v // shared, not copied: the client only reads them
		}
	}
	xff := strings.Join(r.Header["X-Forwarded-For"], ", ")
	if xff != "" {
		xff += ", "
	}
	h["X-Forwarded-For"] = []string{xff + rq.clientIP}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // none sent, as the reverse proxy
	}
	// The URL stays the client's: the request line is its origin form
	// either way, the endpoint is h1Client's address and the Host header
	// is r.Host (the reverse proxy sets URL.Host only to route the
	// Transport).
	out := r.WithContext(r.Context())
	out.Header, out.Close = h, false
	if r.ContentLength == 0 {
		out.Body = nil
	}

	var (
		res *http.Response
		err error
	)
	if rq.retry != nil { // a route's tries (retry.go)
		res, err = rq.retry.roundTrip(out, rq, func(o *http.Request) (*http.Response, error) { return p.up.fast.roundTrip(o, rq.upstream, w) })
	} else {
		res, err = p.up.fast.roundTrip(out, rq.upstream, w)
	}
	if err != nil {
		code, flags, body := upstreamError(r.Context(), err)
		rq.flags = flags
		p.log.Debug("upstream request failed", "upstream", rq.upstream.String(), "flags", flags, "error", err)
		localReply(w, isGRPC(r), code, body)
		return
	}

	removeHopByHop(res.Header)
	wh := w.Header()
	for k, vv := range res.Header {
		wh[k] = append(wh[k], vv...)
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		wh.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := copyAnswer(w, res); err != nil {
		res.Body.Close()
		panic(http.ErrAbortHandler) // as the reverse proxy: the client's connection is aborted
	}
	res.Body.Close()
	if len(res.Trailer) > 0 {
		http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			wh[k] = append(wh[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		for _, v := range vv {
			wh.Add(http.TrailerPrefix+k, v)
		}
	}
}

// copyAnswer copies res's body to w; an answer of unknown length, or an
// event stream, is flushed after every read (the reverse proxy's
// flushInterval -1).
func copyAnswer(w http.ResponseWriter, res *http.Response) error {
	flush := res.ContentLength == -1
	if ct := res.Header.Get("Content-Type"); !flush && len(ct) >= len("text/event-stream") && strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream") {
		if ct, _, _ := mime.ParseMediaType(ct); ct == "text/event-stream" {
			flush = true
		}
	}
	buf := copyBuffers{}.Get()
	defer copyBuffers{}.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush {
				http.NewResponseController(w).Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// hopByHop are the headers httputil's reverse proxy removes both ways.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHop removes the hop-by-hop headers of h, those its
// Connection header names included.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopByHop {
		delete(h, f)
	}
}

// relayInterim writes an interim (1xx) answer of the endpoint to w, as the
// reverse proxy's Got1xxResponse trace does.
func relayInterim(w http.ResponseWriter, code int, header textproto.MIMEHeader) {
	h := w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	w.WriteHeader(code)
	clear(h)
}
